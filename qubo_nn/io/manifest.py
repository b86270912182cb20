"""A build's manifest.json: the one reader."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubo_nn.errors import QuboNNError
from qubo_nn.io.json_files import FILE_VERSION, read_tagged_json
from qubo_nn.io.blocks import HEAD_NAME

if TYPE_CHECKING:
    pass


MANIFEST_NAME = "manifest.json"


MANIFEST_FORMAT = "qubo-nn-manifest"


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a build directory (``path`` is the directory or its ``manifest.json``).

    Names inside are relative to the directory; this adds ``"dir"`` (absolute) and, per block,
    ``"path"`` (absolute path of the block file). Missing files raise :class:`QuboNNError`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise QuboNNError(f"no manifest at {str(path)!r} (is the build finished? a build writes its manifest last)")
    man = read_tagged_json(path, MANIFEST_FORMAT, FILE_VERSION, "manifest", "manifest")
    root = path.parent.resolve()
    missing = [name for name in [man.get("head", HEAD_NAME)]
               + [n for b in man.get("blocks", []) for n in (b["file"], b["sidecar"], b["npz"], b.get("levels"))
                  if n is not None]
               if not (root / name).is_file()]
    if missing:
        raise QuboNNError(f"manifest {str(path)!r} lists files that are missing: {missing[:5]}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    man["dir"] = str(root)
    for b in man["blocks"]:
        b["path"] = str(root / b["file"])
    return man
