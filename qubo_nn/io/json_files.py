"""Project JSON files: the format tag and version every file carries, and the one checked reader."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from qubo_nn.errors import QuboNNError

FILE_VERSION = 1


def read_tagged_json(path: Path, fmt: str, version: int, what: str, kind: str) -> dict[str, Any]:
    """A JSON object of ours (manifest, sidecar, solution): checks its ``format`` tag and ``version``.

    ``what`` names the file in messages ("manifest"), ``kind`` what it should be ("block sidecar").
    """
    try:
        obj = json.loads(path.read_text(), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise QuboNNError(f"{what} {str(path)!r} is not valid JSON (truncated?): {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise QuboNNError(f"{str(path)!r} is not a qubo-nn {kind} (expected format {fmt!r})")
    if obj.get("version") != version:
        raise QuboNNError(f"{what} {str(path)!r} has version {obj.get('version')!r}, expected {version}")
    return obj


def _no_constant(name: str) -> Any:
    """JSON has no NaN/Infinity; our files never hold them (a file that does was altered)."""
    raise ValueError(f"{name} is not a JSON number")


def inside(root: Path, name: Any, what: str, where: Path | str) -> Path:
    """``root / name`` for a file name read from one of our JSON files (manifest, sidecar), checked:
    ``name`` is a relative path (str) that stays inside ``root`` and is no symbolic link. A build's
    files lie inside its folder; a name like ``../other/block.bqm`` or a link out is refused."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise QuboNNError(f"{str(where)!r}: {what} must be a file name (str), got {name!r}")
    root = Path(root).resolve()
    path = root / name
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise QuboNNError(f"{str(where)!r}: {what} {name!r} lies outside the folder {str(root)!r}; "
                          f"expected a file inside it")
    if path.is_symlink():
        raise QuboNNError(f"{str(where)!r}: {what} {name!r} is a symbolic link; expected a regular file "
                          f"inside the folder (links are not followed)")
    if not path.resolve().is_relative_to(root):   # a linked folder on the way
        raise QuboNNError(f"{str(where)!r}: {what} {name!r} lies outside the folder {str(root)!r} (through a "
                          f"link); expected a file inside it")
    return path


def check_fields(obj: Any, fields: dict[str, tuple[type, ...]], what: str, where: Path | str,
                 optional: tuple[str, ...] = ()) -> None:
    """Each key of ``fields`` is in ``obj`` (unless ``optional``) with a value of one of the given
    types (bool is no int; floats finite). Raises "expected X, got Y" naming the file and field."""
    if not isinstance(obj, dict):
        raise QuboNNError(f"{str(where)!r}: {what} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in fields if k not in obj and k not in optional]
    if missing:
        raise QuboNNError(f"{str(where)!r}: {what} lacks {missing}")
    for key, types in fields.items():
        if key not in obj:
            continue
        val = obj[key]
        ok = isinstance(val, types) and not (isinstance(val, bool) and bool not in types)
        if ok and isinstance(val, float) and not math.isfinite(val):
            ok = False
        if not ok:
            names = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer",
                                "float": "a number", "dict": "an object", "list": "a list"}.get(t.__name__, t.__name__)
                                for t in types if not (t is int and float in types))
            raise QuboNNError(f"{str(where)!r}: {what} field {key!r} must be {names}, got {val!r}"[:400])
