"""A build's manifest.json: the one reader (checked: fields, types, unique block ids, files inside
the build folder)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qubo_nn.errors import QuboNNError
from qubo_nn.io.blocks import HEAD_NAME
from qubo_nn.io.json_files import FILE_VERSION, check_fields, inside, read_tagged_json

MANIFEST_NAME = "manifest.json"


MANIFEST_FORMAT = "qubo-nn-manifest"


# the fields every reader (solve, decode) relies on, with their JSON types
_FIELDS: dict[str, tuple[type, ...]] = {"blocks": (list,), "L0": (int, float), "head_digest": (str,),
                                        "features_digest": (str,), "head": (str,)}
_BLOCK_FIELDS: dict[str, tuple[type, ...]] = {"block_id": (int,), "file": (str,), "sidecar": (str,),
                                              "npz": (str,), "levels": (str, type(None)), "L0": (int, float)}


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a build directory (``path`` is the directory or its ``manifest.json``).

    Names inside are relative to the directory; this adds ``"dir"`` (absolute) and, per block,
    ``"path"`` (absolute path of the block file). A missing field, a value of the wrong type, a
    block id that is not a non-negative integer or comes twice, a file name outside the folder
    (``../``, an absolute path, a symbolic link) and missing files raise :class:`QuboNNError`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise QuboNNError(f"no manifest at {str(path)!r} (is the build finished? a build writes its manifest last)")
    man = read_tagged_json(path, MANIFEST_FORMAT, FILE_VERSION, "manifest", "manifest")
    check_fields(man, _FIELDS, "the manifest", path, optional=("head",))
    if not man["blocks"]:
        raise QuboNNError(f"manifest {str(path)!r} lists no blocks")
    root = path.parent.resolve()
    seen: set[int] = set()
    names = [inside(root, man.get("head", HEAD_NAME), "head", path)]
    for i, b in enumerate(man["blocks"]):
        check_fields(b, _BLOCK_FIELDS, f"block entry {i}", path, optional=("levels", "L0"))
        if b["block_id"] < 0:
            raise QuboNNError(f"{str(path)!r}: block entry {i} has block_id {b['block_id']}, expected a "
                              f"non-negative integer")
        if b["block_id"] in seen:
            raise QuboNNError(f"{str(path)!r}: block id {b['block_id']} is listed twice; expected each block once")
        seen.add(b["block_id"])
        names += [inside(root, b[k], k, path) for k in ("file", "sidecar", "npz", "levels") if b.get(k) is not None]
    missing = [os.path.relpath(p, root) for p in names if not p.is_file()]
    if missing:
        raise QuboNNError(f"manifest {str(path)!r} lists files that are missing: {missing[:5]}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    man.setdefault("head", HEAD_NAME)
    man["dir"] = str(root)
    for b in man["blocks"]:
        b["path"] = str(root / b["file"])
    return man
