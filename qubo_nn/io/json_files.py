"""Project JSON files: the format tag and version every file carries, and the one checked reader."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qubo_nn.errors import QuboNNError

FILE_VERSION = 1


def read_tagged_json(path: Path, fmt: str, version: int, what: str, kind: str) -> dict[str, Any]:
    """A JSON object of ours (manifest, sidecar, solution): checks its ``format`` tag and ``version``.

    ``what`` names the file in messages ("manifest"), ``kind`` what it should be ("block sidecar").
    """
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QuboNNError(f"{what} {str(path)!r} is not valid JSON (truncated?): {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise QuboNNError(f"{str(path)!r} is not a qubo-nn {kind} (expected format {fmt!r})")
    if obj.get("version") != version:
        raise QuboNNError(f"{what} {str(path)!r} has version {obj.get('version')!r}, expected {version}")
    return obj
