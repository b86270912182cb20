"""Placeholder: replaced by the issue that implements these commands."""
import click


@click.command()
def build_command() -> None:
    """Not implemented yet."""
    raise click.ClickException('not implemented yet')

