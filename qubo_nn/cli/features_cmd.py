"""Placeholder: replaced by the issue that implements these commands."""
import click


@click.command()
def features_command() -> None:
    """Not implemented yet."""
    raise click.ClickException('not implemented yet')


@click.command()
def train_command() -> None:
    """Not implemented yet."""
    raise click.ClickException('not implemented yet')

