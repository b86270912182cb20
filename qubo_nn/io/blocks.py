"""A block's files: encoding sidecar, integer form (.levels.npz), digests."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.io.bqm_files import SUFFIXES, format_of, read_bqm, write_bqm
from qubo_nn.io.json_files import FILE_VERSION, check_fields, inside, read_tagged_json
from qubo_nn.runtime import atomic_path, atomic_write_json, sha256_file, tensor_digest

if TYPE_CHECKING:
    from qubo_nn.core.encoding import Encoding
    from qubo_nn.core.head import Head
    from qubo_nn.data.featureset import FeatureSet
    from qubo_nn.workflows.build import BlockQUBO


LEVELS_SUFFIX = ".levels.npz"   # a block's integer form beside its .npz encoding


HEAD_NAME = "head.pt"


SIDECAR_FORMAT = "qubo-nn-block"




def block_stem(block_id: int) -> str:
    return f"block_{int(block_id):05d}"


def write_block(out_dir: str | os.PathLike, blk: BlockQUBO, fmt: str, head_digest: str,
                features_digest: str) -> dict[str, Any]:
    """Write ``blk``'s BQM (``block_NNNNN.<suffix>``) and its sidecar (``.json`` + ``.npz``);
    return the block's manifest entry (names relative to ``out_dir``)."""
    fmt = format_of("", fmt) if fmt is not None else "dimod"
    out = Path(out_dir)
    stem = block_stem(blk.block_id)
    file, npz, side = out / (stem + SUFFIXES[fmt]), out / (stem + ".npz"), out / (stem + ".json")
    lev = out / (stem + LEVELS_SUFFIX)
    from qubo_nn.core.bqm import integer_form

    t0 = time.perf_counter()
    write_bqm(blk.bqm, file, fmt)
    with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **blk.enc.arrays())
    with atomic_path(lev) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **_pack_form(integer_form(blk.model, blk.enc, blk.damping).arrays()))
    t1 = time.perf_counter()
    entry = {
        "block_id": int(blk.block_id),
        "file": file.name,
        "sidecar": side.name,
        "npz": npz.name,
        "levels": lev.name,
        "file_format": fmt,
        "num_weights": blk.enc.m,
        "num_variables": int(blk.bqm.num_variables),
        "num_interactions": int(blk.bqm.num_interactions),
        "bytes": file.stat().st_size,
        "damping": float(blk.damping),
        "L0": float(blk.model.L0),
        "timings": {**blk.timings, "write_s": t1 - t0},
    }
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": FILE_VERSION,
        **entry,
        "file_sha256": sha256_file(file),
        "npz_sha256": sha256_file(npz),
        "npz_bytes": npz.stat().st_size,
        "levels_sha256": sha256_file(lev),
        "levels_bytes": lev.stat().st_size,
        "mode": blk.enc.mode,
        "bits": int(blk.enc.bits),
        "encoding": blk.enc.kind,
        "offset": float(blk.bqm.offset),
        "vartype": blk.bqm.vartype.name,
        "dtype": np.dtype(blk.bqm.dtype).name,
        "head_digest": head_digest,
        "features_digest": features_digest,
        "encoding_info": blk.enc.info,
        "model_info": blk.model.info,
    }
    atomic_write_json(side, sidecar)
    return entry


def read_block(path: str | os.PathLike, head_digest: str | None = None, features_digest: str | None = None,
               require_sidecar: bool = False) -> tuple[dimod.BinaryQuadraticModel, Encoding | None, dict]:
    """(BQM, Encoding, sidecar dict) of a block file (or of its ``.json`` sidecar).

    A bare file made elsewhere (no sidecar beside it, or a JSON file of someone else's) gives
    ``(bqm, None, {})``; with ``require_sidecar`` (a block a manifest lists) a missing sidecar is refused. A sidecar whose
    file digest, npz digest, size or variable count does not match, or (when given) whose head or
    features digest differs, raises :class:`QuboNNError`.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        side_path = path
        side = _load_sidecar(side_path)
        file = inside(side_path.parent, side["file"], "file", side_path)
    else:
        file, side_path = path, path.with_suffix(".json")
        if require_sidecar and not side_path.is_file():
            raise QuboNNError(f"block file {str(file)!r} has no sidecar {side_path.name!r}; expected one beside "
                              f"every block of a build")
        if not require_sidecar and not is_sidecar(side_path):   # none, or someone else's .json beside the file
            return read_bqm(file), None, {}
        side = _load_sidecar(side_path)
        if side["file"] != file.name:
            raise QuboNNError(f"sidecar {str(side_path)!r} describes {side['file']!r}, not {file.name!r}")
        if file.is_symlink():
            raise QuboNNError(f"block file {str(file)!r} is a symbolic link; expected a regular file inside the "
                              f"build folder (links are not followed)")
    if not file.is_file():
        raise QuboNNError(f"block file {str(file)!r} named by sidecar {str(side_path)!r} does not exist")
    size = file.stat().st_size
    if size != side["bytes"]:
        raise QuboNNError(f"block file {str(file)!r} has {size} bytes but its sidecar says {side['bytes']} "
                          f"(truncated, or the file and sidecar are from different builds)")
    if sha256_file(file) != side["file_sha256"]:
        raise QuboNNError(f"block file {str(file)!r} does not match its sidecar {side_path.name!r} (sha256 differs): "
                          f"the file was altered or the two are from different builds")
    for what, want, got in (("head", head_digest, side["head_digest"]),
                            ("features", features_digest, side["features_digest"])):
        if want is not None and want != got:
            raise QuboNNError(f"block {str(file)!r} was built from {what} {got}, expected {what} {want}")
    npz = inside(side_path.parent, side["npz"], "npz", side_path)
    if not npz.is_file() or sha256_file(npz) != side["npz_sha256"]:
        raise QuboNNError(f"encoding file {str(npz)!r} is missing or does not match its sidecar {side_path.name!r}")
    from qubo_nn.core.encoding import Encoding

    try:
        with np.load(npz, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise QuboNNError(f"{str(npz)!r} is not a readable .npz file: {exc}") from exc
    enc = Encoding.from_arrays(arrs, mode=side["mode"])
    enc.info = dict(side.get("encoding_info", {}))
    bqm = read_bqm(file, side["file_format"])
    if bqm.num_variables != enc.num_variables or bqm.num_variables != side["num_variables"]:
        raise QuboNNError(f"block file {str(file)!r} has {bqm.num_variables} variables, its encoding "
                          f"{enc.num_variables} and its sidecar {side['num_variables']}")
    return bqm, enc, side


def _pack_form(arrs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The form's arrays with the symmetric H as its upper triangle (half the bytes on disk)."""
    out = dict(arrs)
    H = out.pop("H")
    out["H_upper"] = H[np.triu_indices(H.shape[0])]
    return out


def _unpack_form(arrs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "H_upper" not in arrs:
        return arrs
    out = dict(arrs)
    up = out.pop("H_upper")
    m = int(round((np.sqrt(8 * up.size + 1) - 1) / 2))
    if m * (m + 1) // 2 != up.size:
        raise QuboNNError(f"H_upper has {up.size} values, expected m(m+1)/2 for some m")
    H = np.zeros((m, m), dtype=up.dtype)
    H[np.triu_indices(m)] = up
    out["H"] = H + np.triu(H, 1).T
    return out


def read_integer_form(path: str | os.PathLike, side: dict[str, Any] | None = None):
    """The integer form (:class:`levels.IntegerForm`) of a block written by :func:`write_block`.

    ``path``: the block file or its ``.json`` sidecar; ``side``: the sidecar already read (by
    :func:`read_block`), else it is loaded. Raises :class:`QuboNNError` when the block has no
    integer form (a file made elsewhere, or a build made before ``.levels.npz`` files existed),
    or when the file does not match its sidecar (sha256), or does not describe the block's
    variables. NumPy only (no torch).
    """
    from qubo_nn.core.problem import IntegerForm

    path = Path(path)
    side_path = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
    if side is None:
        if not is_sidecar(side_path):
            raise QuboNNError(f"{str(path)!r} has no integer form: expected a block built by `qubo-nn build` "
                              f"(its sidecar {side_path.name!r} and {LEVELS_SUFFIX} file), got a bare QUBO file")
        side = _load_sidecar(side_path)
    if "levels" not in side or "levels_sha256" not in side:
        raise QuboNNError(f"block {side.get('file', path.name)!r} has no integer form: its sidecar names no "
                          f"{LEVELS_SUFFIX} file (built before builds stored it); rebuild it with `qubo-nn build`")
    lev = inside(side_path.parent, side["levels"], "levels", side_path)
    if not lev.is_file() or sha256_file(lev) != side["levels_sha256"]:
        raise QuboNNError(f"integer form file {str(lev)!r} is missing or does not match its sidecar {side_path.name!r}")
    try:
        with np.load(lev, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise QuboNNError(f"{str(lev)!r} is not a readable .npz file: {exc}") from exc
    form = IntegerForm.from_arrays(_unpack_form(arrs))
    if form.num_variables != side["num_variables"]:
        raise QuboNNError(f"integer form {str(lev)!r} encodes {form.num_variables} variables, its block "
                          f"{side['num_variables']}")
    return form




def is_sidecar(path: Path) -> bool:
    """Whether ``path`` (the .json beside a bare QUBO file) is to be read as its sidecar: a JSON object
    with our format tag, or a file that is not valid JSON (a damaged sidecar, then refused by
    :func:`_load_sidecar`); a valid JSON document of someone else's (``problem.json``) is not. Blocks
    a manifest lists always need their sidecar (``read_block(require_sidecar=True)``)."""
    if not path.is_file():
        return False
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return True
    return isinstance(obj, dict) and obj.get("format") == SIDECAR_FORMAT


def _load_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise QuboNNError(f"sidecar {str(path)!r} does not exist")
    side = read_tagged_json(path, SIDECAR_FORMAT, FILE_VERSION, "sidecar", "block sidecar")
    check_fields(side, _SIDECAR_FIELDS, "the sidecar", path, optional=("levels", "levels_sha256", "L0"))
    for key in ("bytes", "num_variables"):
        if side[key] < 0:
            raise QuboNNError(f"{str(path)!r}: sidecar field {key!r} must be a non-negative integer, got {side[key]}")
    return side


_SIDECAR_FIELDS: dict[str, tuple[type, ...]] = {
    "file": (str,), "npz": (str,), "file_format": (str,), "bytes": (int,), "file_sha256": (str,),
    "npz_sha256": (str,), "mode": (str,), "num_variables": (int,), "head_digest": (str,),
    "features_digest": (str,), "levels": (str,), "levels_sha256": (str,), "L0": (int, float)}


def head_digest(head: Head) -> str:
    return tensor_digest(head.W, head.b)


def features_digest(feats: FeatureSet) -> str:
    return tensor_digest(feats.X, feats.y)
