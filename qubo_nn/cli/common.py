"""Shared CLI plumbing: error handling, JSON output and common options.

Every command fills a config dataclass from its options and makes one library call.
Exit codes: 0 ok, 2 bad input (a :class:`~qubo_nn.errors.QuboNNError`), 1 unexpected error.
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from ..errors import QuboNNError
from ..runtime import _json_default

EXIT_BAD_INPUT = 2


def handle_errors(fn: Callable) -> Callable:
    """Turn a QuboNNError into ``Error: ...`` on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QuboNNError as exc:
            ctx = click.get_current_context(silent=True)
            if ctx is not None and ctx.params.get("as_json"):
                click.echo(json.dumps({"ok": False, "error": str(exc)}))
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


def emit(obj: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print one JSON object (``--json``) or a human-readable text."""
    if as_json:
        click.echo(json.dumps({"ok": True, **obj}, default=_json_default, sort_keys=True))
    else:
        click.echo(text if text is not None else json.dumps(obj, indent=2, default=_json_default))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end (for scripts).")
device_option = click.option("--device", default="auto", show_default=True,
                             help="Torch device: auto (CUDA when present), cpu, cuda, cuda:N.")
seed_option = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
