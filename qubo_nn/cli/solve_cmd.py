"""Placeholder: replaced by the issue that implements these commands."""
import click


@click.command()
def solve_command() -> None:
    """Not implemented yet."""
    raise click.ClickException('not implemented yet')


@click.command()
def decode_command() -> None:
    """Not implemented yet."""
    raise click.ClickException('not implemented yet')


@click.command()
def samplers_command() -> None:
    """Not implemented yet."""
    raise click.ClickException('not implemented yet')

