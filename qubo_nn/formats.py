"""QUBO files: dimod's native BQM format, COO text and qbsolv ``.qubo`` text; block sidecars
and whole-head builds with a manifest.

Formats (``FORMATS``; the suffix tells :func:`read_bqm` which one a file is):

- ``dimod`` (``.bqm``): ``bqm.to_file()`` / ``BinaryQuadraticModel.from_file`` — exact (biases,
  offset, vartype, labels, dtype), binary, the fastest to write and read.
- ``coo`` (``.coo``): one ``i j bias`` line per variable (``i i``, every variable, zeros included)
  and per interaction (``i < j``, every stored interaction), biases printed with ``repr(float)``
  (shortest exact round trip). Header comments carry what the triplets cannot::

      # vartype=BINARY            (dimod's header line, so dimod's reader finds the vartype)
      # format=qubo-nn-coo 1
      # num_variables=2052
      # num_interactions=2103326
      # offset=4.605170185988091
      # dtype=float64
      ...
      # end                       (the last line: a file without it is truncated)

  The reader also takes plain COO files made elsewhere (``dimod.serialization.coo``; with or
  without a vartype header (BINARY when absent), exponents, ``i > j``, repeated pairs summed).
- ``qubo`` (``.qubo``, qbsolv): ``p qubo 0 maxNodes nNodes nCouplers``, then ``i i w`` for every
  node, then ``i j w`` (``i < j``) for every nonzero coupler (the format forbids zero couplers);
  ``c`` comment lines carry offset and dtype, and ``c end`` closes the file. BINARY only (a SPIN
  model is converted). Plain ``.qubo`` files made elsewhere are read too (their counts checked).

COO and qbsolv files need non-negative integer labels; a file read back has variables
0..max label (its BQM's variables in that order), so models labelled 0..n−1 (every QUBO built
here) come back with the same variables and identical energies.

A block written by :func:`write_block` is ``block_NNNNN.<suffix>`` beside ``block_NNNNN.json``
(the sidecar: mode, bits, damping, block id, predicted loss L0, digests of the head and features
it was built from, the sha256 and size of the block file and of the ``.npz``) and
``block_NNNNN.npz`` (:meth:`Encoding.arrays`: idx, theta0, ref, step, offset, bits, A_values, c), and
``block_NNNNN.levels.npz``: the block's integer form (:meth:`levels.IntegerForm.arrays` with H (m × m,
damping included) stored as ``H_upper``, its upper triangle row-major (m(m+1)/2 values, H symmetric),
beside target, scale, kmin, kmax, const, kind, bits; ``qubo.integer_form`` of the block), so that level-space samplers (gptq, cd, pipeline) can solve the block from its files; its
sidecar keys are ``levels``, ``levels_sha256`` and ``levels_bytes`` (absent in builds made before
it existed: :func:`read_integer_form` then says so). Plain dimod still reads every ``.bqm``.
:func:`read_block` refuses a file whose sha256 differs from its sidecar's.

:func:`build_to_dir` writes ``head.pt``, the blocks (streamed: one BQM in memory at a time) and,
last, ``manifest.json``: a directory without a manifest is an unfinished build.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import dimod
import numpy as np

from .errors import QuboNNError
from .runtime import atomic_path, atomic_write_json, sha256_file, tensor_digest, versions

if TYPE_CHECKING:
    from .encoding import Encoding
    from .featureset import FeatureSet
    from .head import Head
    from .qubo import BlockQUBO, BuildConfig

# torch and the model modules (encoding, head, qubo) are imported inside the functions that
# need them: reading and solving a plain QUBO file never loads torch.

FORMATS = ("dimod", "coo", "qubo")
SUFFIXES = {"dimod": ".bqm", "coo": ".coo", "qubo": ".qubo"}
MANIFEST_NAME = "manifest.json"
LEVELS_SUFFIX = ".levels.npz"   # a block's integer form beside its .npz encoding
HEAD_NAME = "head.pt"
MANIFEST_FORMAT = "qubo-nn-manifest"
SIDECAR_FORMAT = "qubo-nn-block"
FILE_VERSION = 1
_COO_TAG = "qubo-nn-coo"
_QUBO_TAG = "qubo-nn-qubo"
_NP_DTYPES = {"float32": np.float32, "float64": np.float64}
_TEXT_SLICE = 1 << 18
_KEYVAL = re.compile(r"([A-Za-z_]+)[:=][ \t]*(\S+)")


# --------------------------------------------------------------------------- single BQM files

def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` when given (checked), else the format its suffix names (.bqm, .coo, .qubo)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise QuboNNError(f"format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    for name, suf in SUFFIXES.items():
        if suffix == suf:
            return name
    raise QuboNNError(f"cannot tell the format of {str(path)!r} from its suffix: expected one of "
                      f"{sorted(SUFFIXES.values())} or an explicit format in {FORMATS}")


def write_bqm(bqm: dimod.BinaryQuadraticModel, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write ``bqm`` to ``path`` atomically, at full precision, with its offset.

    ``fmt`` defaults to the format the suffix names (see the module docstring).
    """
    fmt = format_of(path, fmt)
    with atomic_path(path) as tmp:
        if fmt == "dimod":
            with bqm.to_file() as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        elif fmt == "coo":
            _write_text(bqm, tmp, qbsolv=False)
        else:
            _write_text(bqm, tmp, qbsolv=True)


def read_bqm(path: str | os.PathLike, fmt: str | None = None) -> dimod.BinaryQuadraticModel:
    """Read a BQM written by :func:`write_bqm`, or a plain COO/.qubo/dimod file made elsewhere.

    A truncated or malformed file raises :class:`QuboNNError` saying what is wrong.
    """
    fmt = format_of(path, fmt)
    path = Path(path)
    if not path.is_file():
        raise QuboNNError(f"QUBO file {str(path)!r} does not exist")
    if fmt == "dimod":
        try:
            with open(path, "rb") as fh:
                bqm = dimod.BinaryQuadraticModel.from_file(fh)
        except Exception as exc:  # dimod raises assorted errors on a damaged file
            raise QuboNNError(f"{str(path)!r} is not a readable dimod BQM file (truncated or corrupted?): "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(bqm, dimod.BinaryQuadraticModel):
            raise QuboNNError(f"{str(path)!r} holds a {type(bqm).__name__}, expected a BinaryQuadraticModel")
        _check_finite(bqm, path)
    else:
        bqm = _read_text(path, qbsolv=fmt == "qubo")
    return bqm


def _check_finite(bqm: dimod.BinaryQuadraticModel, path: Path) -> None:
    """Refuse NaN/Inf biases or offset (the text readers check their numbers as they parse)."""
    if not np.isfinite(bqm.offset):
        raise QuboNNError(f"{str(path)!r}: the offset is {float(bqm.offset)!r}, expected a finite number")
    lin, (_, _, quad), _ = bqm.to_numpy_vectors()
    bad = int((~np.isfinite(lin)).sum()) + int((~np.isfinite(quad)).sum())
    if bad:
        raise QuboNNError(f"{str(path)!r}: {bad} biases are NaN/Inf, expected finite numbers")


def _integer_labels(bqm: dimod.BinaryQuadraticModel, fmt: str) -> np.ndarray:
    labels = list(bqm.variables)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in labels):
        bad = next(v for v in labels if not (isinstance(v, (int, np.integer)) and v >= 0))
        raise QuboNNError(f"the {fmt} format needs non-negative integer variable labels, got {bad!r}")
    return np.asarray(labels, dtype=np.int64)


def _write_text(bqm: dimod.BinaryQuadraticModel, tmp: Path, qbsolv: bool) -> None:
    """COO or qbsolv text, biases as repr(float) (exact), one pass, no Python loop per coupler
    beyond the C-level joins."""
    fmt = "qubo" if qbsolv else "coo"
    if qbsolv and bqm.vartype is not dimod.BINARY:
        bqm = bqm.change_vartype(dimod.BINARY, inplace=False)
    labels = _integer_labels(bqm, fmt)
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    lin, (irow, icol, qdata), offset = bqm.to_numpy_vectors(variable_order=labels.tolist())
    lin, qdata = lin.astype(np.float64), qdata.astype(np.float64)
    u, v = labels[irow], labels[icol]
    swap = u > v
    u, v = np.where(swap, v, u), np.where(swap, u, v)
    key = np.lexsort((v, u))
    u, v, qdata = u[key], v[key], qdata[key]
    if qbsolv:
        keep = qdata != 0
        u, v, qdata = u[keep], v[keep], qdata[keep]
    comment = "c" if qbsolv else "#"
    head = [] if qbsolv else [f"# vartype={bqm.vartype.name}"]
    head += [f"{comment} format={_QUBO_TAG if qbsolv else _COO_TAG} {FILE_VERSION}",
             f"{comment} num_variables={labels.size}", f"{comment} num_interactions={u.size}",
             f"{comment} offset={float(offset)!r}", f"{comment} dtype={np.dtype(bqm.dtype).name}"]
    if qbsolv:
        max_nodes = int(labels[-1]) + 1 if labels.size else 0
        head.append(f"p qubo 0 {max_nodes} {labels.size} {u.size}")
    with open(tmp, "w", encoding="ascii", newline="\n") as fh:
        fh.write("\n".join(head) + "\n")
        fh.write(_triplets(labels, labels, lin))
        for s in range(0, u.size, _TEXT_SLICE):   # slices bound the memory of the strings
            fh.write(_triplets(u[s:s + _TEXT_SLICE], v[s:s + _TEXT_SLICE], qdata[s:s + _TEXT_SLICE]))
        fh.write(f"{comment} end\n")


def _triplets(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> str:
    """Lines ``u v w``: labels via str(int), biases via the C-level repr of a float list
    (the shortest string that reads back to the same float)."""
    if u.size == 0:
        return ""
    vals = repr(w.tolist())[1:-1].split(", ")
    return "\n".join(map(" ".join, zip(map(str, u.tolist()), map(str, v.tolist()), vals))) + "\n"


def _read_text(path: Path, qbsolv: bool) -> dimod.BinaryQuadraticModel:
    fmt = "qbsolv .qubo" if qbsolv else "COO"
    try:
        text = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as exc:
        raise QuboNNError(f"{str(path)!r} is not a {fmt} text file: {exc}") from exc
    comment = "c" if qbsolv else "#"
    header: dict[str, str] = {}
    ended = False
    problem = None
    for line in _comment_lines(text):
        mark, rest = line[0], line[1:]
        if mark == "p":
            if not qbsolv:
                raise QuboNNError(f"{str(path)!r}: unexpected line {line!r} in a COO file")
            if problem is not None:
                raise QuboNNError(f"{str(path)!r}: more than one 'p' line")
            problem = rest.split()
            continue
        if mark != comment and not (qbsolv and mark == "#"):
            continue
        if rest.strip() == "end":
            ended = True
        for key, val in _KEYVAL.findall(rest):
            header.setdefault(key, val)
    ours = header.get("format") in (_COO_TAG, _QUBO_TAG)
    if ours and not ended:
        raise QuboNNError(f"{str(path)!r} is truncated: its '{comment} end' line is missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # "input contained no data": an empty model
            data = np.loadtxt(io.StringIO(text), dtype=np.float64, comments=["c", "p", "#"] if qbsolv else "#",
                              ndmin=2)
    except ValueError as exc:
        raise QuboNNError(f"{str(path)!r} is not a valid {fmt} file (expected lines 'i j bias'): {exc}") from exc
    if data.size == 0:
        # an explicitly empty model (our header, or a 'p' line, says 0 variables) is a model;
        # a file with no data and no such statement is an empty or truncated file
        if not ((ours and header.get("num_variables") == "0") or (problem is not None and problem[2:3] == ["0"])):
            raise QuboNNError(f"{str(path)!r} holds no QUBO: expected lines 'i j bias', got "
                              f"{'an empty file' if not text.strip() else 'only comments'}")
        data = np.zeros((0, 3))
    if data.shape[1] != 3:
        raise QuboNNError(f"{str(path)!r}: expected 3 columns 'i j bias' per line, got {data.shape[1]}")
    ij, w = data[:, :2], data[:, 2]
    if ij.size and ((ij < 0).any() or (ij != np.floor(ij)).any()):
        raise QuboNNError(f"{str(path)!r}: variable labels must be non-negative integers")
    if not np.isfinite(w).all():
        raise QuboNNError(f"{str(path)!r}: {int((~np.isfinite(w)).sum())} biases are NaN/Inf")
    u, v = ij[:, 0].astype(np.int64), ij[:, 1].astype(np.int64)
    diag = u == v
    n = int(max(u.max(), v.max())) + 1 if u.size else 0
    n = max(n, _int(header, "num_variables", path, 0))
    if problem is not None:
        if len(problem) != 5 or problem[0] != "qubo":
            raise QuboNNError(f"{str(path)!r}: expected 'p qubo 0 maxNodes nNodes nCouplers', "
                              f"got 'p {' '.join(problem)}'")
        try:
            _, max_nodes, n_nodes, n_couplers = problem[1], *map(int, problem[2:])
        except ValueError as exc:
            raise QuboNNError(f"{str(path)!r}: bad 'p' line 'p {' '.join(problem)}'") from exc
        if int(diag.sum()) != n_nodes or int((~diag).sum()) != n_couplers:
            raise QuboNNError(f"{str(path)!r}: the 'p' line promises {n_nodes} nodes and {n_couplers} couplers, "
                              f"the file has {int(diag.sum())} and {int((~diag).sum())} (truncated?)")
        if n > max_nodes:
            raise QuboNNError(f"{str(path)!r}: label {n - 1} exceeds maxNodes = {max_nodes}")
        n = max_nodes
    elif qbsolv:
        raise QuboNNError(f"{str(path)!r}: no 'p qubo 0 maxNodes nNodes nCouplers' line")
    if ours and "num_interactions" in header and int((~diag).sum()) != _int(header, "num_interactions", path, 0):
        raise QuboNNError(f"{str(path)!r}: header says {header['num_interactions']} interactions, "
                          f"the file has {int((~diag).sum())} (truncated?)")
    vartype = header.get("vartype", "BINARY").upper()
    if vartype not in ("BINARY", "SPIN") or (qbsolv and vartype != "BINARY"):
        raise QuboNNError(f"{str(path)!r}: vartype must be BINARY{'' if qbsolv else ' or SPIN'}, got {vartype!r}")
    dtype = _NP_DTYPES.get(header.get("dtype", "float64"))
    if dtype is None:
        raise QuboNNError(f"{str(path)!r}: dtype must be float32 or float64, got {header['dtype']!r}")
    try:
        offset = float(header.get("offset", 0.0))
    except ValueError as exc:
        raise QuboNNError(f"{str(path)!r}: bad offset {header['offset']!r}") from exc
    if not np.isfinite(offset):
        raise QuboNNError(f"{str(path)!r}: the offset is {offset!r}, expected a finite number")
    lin = np.zeros(n, dtype=np.float64)
    np.add.at(lin, u[diag], w[diag])
    return dimod.BinaryQuadraticModel.from_numpy_vectors(lin, (u[~diag], v[~diag], w[~diag]), offset, vartype,
                                                         dtype=dtype)


def _comment_lines(text: str):
    """The non-data lines (stripped) before the first and after the last data line; comments in
    between are skipped by the number parser and need no scan of the whole text."""
    lines = []
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end].strip()
        pos = end + 1
        if line and line[0] not in "#cp":
            break
        if line:
            lines.append(line)
    tail = []
    stop = len(text)
    while stop > pos:
        start = text.rfind("\n", pos, stop - 1) + 1 if stop > 0 else 0
        start = max(start, pos)
        line = text[start:stop].strip()
        stop = start
        if line and line[0] not in "#cp":
            break
        if line:
            tail.append(line)
    return lines + tail[::-1]


def _int(header: dict[str, str], key: str, path: Path, default: int) -> int:
    try:
        return int(header.get(key, default))
    except ValueError as exc:
        raise QuboNNError(f"{str(path)!r}: header {key} must be an integer, got {header[key]!r}") from exc


# --------------------------------------------------------------------------- blocks and sidecars

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
    from .qubo import integer_form

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


def read_block(path: str | os.PathLike, head_digest: str | None = None,
               features_digest: str | None = None) -> tuple[dimod.BinaryQuadraticModel, Encoding | None, dict]:
    """(BQM, Encoding, sidecar dict) of a block file (or of its ``.json`` sidecar).

    A bare file made elsewhere (no sidecar beside it) gives ``(bqm, None, {})``. A sidecar whose
    file digest, npz digest, size or variable count does not match, or (when given) whose head or
    features digest differs, raises :class:`QuboNNError`.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        side_path = path
        side = _load_sidecar(side_path)
        file = side_path.parent / side["file"]
    else:
        file, side_path = path, path.with_suffix(".json")
        if not side_path.exists():
            return read_bqm(file), None, {}
        side = _load_sidecar(side_path)
        if side["file"] != file.name:
            raise QuboNNError(f"sidecar {str(side_path)!r} describes {side['file']!r}, not {file.name!r}")
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
    npz = side_path.parent / side["npz"]
    if not npz.is_file() or sha256_file(npz) != side["npz_sha256"]:
        raise QuboNNError(f"encoding file {str(npz)!r} is missing or does not match its sidecar {side_path.name!r}")
    from .encoding import Encoding

    with np.load(npz) as z:
        arrs = {k: z[k] for k in z.files}
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
    from .levels import IntegerForm

    path = Path(path)
    side_path = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
    if side is None:
        if not side_path.is_file():
            raise QuboNNError(f"{str(path)!r} has no integer form: expected a block built by `qubo-nn build` "
                              f"(its sidecar {side_path.name!r} and {LEVELS_SUFFIX} file), got a bare QUBO file")
        side = _load_sidecar(side_path)
    if "levels" not in side or "levels_sha256" not in side:
        raise QuboNNError(f"block {side.get('file', path.name)!r} has no integer form: its sidecar names no "
                          f"{LEVELS_SUFFIX} file (built before builds stored it); rebuild it with `qubo-nn build`")
    lev = side_path.parent / side["levels"]
    if not lev.is_file() or sha256_file(lev) != side["levels_sha256"]:
        raise QuboNNError(f"integer form file {str(lev)!r} is missing or does not match its sidecar {side_path.name!r}")
    try:
        with np.load(lev) as z:
            arrs = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise QuboNNError(f"{str(lev)!r} is not a readable .npz file: {exc}") from exc
    form = IntegerForm.from_arrays(_unpack_form(arrs))
    if form.num_variables != side["num_variables"]:
        raise QuboNNError(f"integer form {str(lev)!r} encodes {form.num_variables} variables, its block "
                          f"{side['num_variables']}")
    return form


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


def _load_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise QuboNNError(f"sidecar {str(path)!r} does not exist")
    side = read_tagged_json(path, SIDECAR_FORMAT, FILE_VERSION, "sidecar", "block sidecar")
    missing = [k for k in ("file", "npz", "file_format", "bytes", "file_sha256", "npz_sha256", "mode",
                           "num_variables", "head_digest", "features_digest") if k not in side]
    if missing:
        raise QuboNNError(f"sidecar {str(path)!r} lacks {missing}")
    return side


# --------------------------------------------------------------------------- whole-head builds

def head_digest(head: Head) -> str:
    return tensor_digest(head.W, head.b)


def features_digest(feats: FeatureSet) -> str:
    return tensor_digest(feats.X, feats.y)


_BUILD_FILE = re.compile(r"block_\d{5}\.(bqm|coo|qubo|json|npz|levels\.npz)")


def build_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files of a build in ``out_dir`` (manifest, head, block files, sidecars), sorted; other
    files are not a build's and are never touched."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.is_file() and (p.name in (MANIFEST_NAME, HEAD_NAME) or _BUILD_FILE.fullmatch(p.name)))


def variables_per_weight(encoding: str, bits: int) -> int:
    """Binary variables per weight: ``bits`` (binary), 2^bits − 1 (unary, domain-wall: one per step)."""
    return int(bits) if encoding == "binary" else 2 ** int(bits) - 1


def block_sizes(num_classes: int, dim: int, cfg: BuildConfig) -> list[int]:
    """Weights per block of a build of a C × D head (the sizes ``select_blocks`` makes, without torch)."""
    C, D1, p = num_classes, dim + 1, cfg.per_block
    if cfg.blocks == "rows":
        return [min(p, C - s) * D1 for s in range(0, C, p)]
    if cfg.blocks == "columns":
        return [min(p, D1 - s) * C for s in range(0, D1, p)]
    total = C * D1 if cfg.blocks == "random" else min(C * D1, cfg.size * (cfg.num_blocks or 1))
    return [min(cfg.size, total - s) for s in range(0, total, cfg.size)]


def estimate_build(num_classes: int, dim: int, cfg: BuildConfig, fmt: str = "dimod") -> dict[str, Any]:
    """What a build will write, before it writes: ``blocks``, ``variables``, ``interactions`` and
    ``bytes`` on disk (block files, dense QUBOs; sidecars and .npz included roughly).

    Bytes per block of n variables: dimod's format stores every interaction twice with a 4-byte
    index, n²·(itemsize + 4) + 200 (exact for dense blocks); COO/qbsolv text about
    2·digits(n) + 22 characters per coupler line (repr(float) biases).
    """
    fmt = format_of("", fmt)
    itemsize = np.dtype(_NP_DTYPES.get(cfg.bqm_dtype, np.float64)).itemsize
    per = variables_per_weight(cfg.encoding, cfg.bits)
    total_bytes = variables = interactions = 0
    sizes = block_sizes(num_classes, dim, cfg)
    for m in sizes:
        n = m * per
        pairs = n * (n - 1) // 2
        variables += n
        interactions += pairs
        if fmt == "dimod":
            total_bytes += n * n * (itemsize + 4) + 200
        else:
            total_bytes += (pairs + n) * (2 * len(str(n)) + 22) + 200
        total_bytes += m * 8 * (per + 6) + 4096  # .npz (A values, idx, grids) and the JSON sidecar
        total_bytes += m * (m + 1) * 4 + m * 32 + 1024  # .levels.npz (the integer form: H's triangle, target, box)
    return {"blocks": len(sizes), "variables": variables, "interactions": interactions, "bytes": total_bytes,
            "file_format": fmt}


def build_to_dir(head: Head, feats: FeatureSet, cfg: BuildConfig, out_dir: str | os.PathLike, fmt: str = "dimod",
                 features_ref: dict | None = None, progress: bool = False, overwrite: bool = False,
                 max_disk_bytes: int | None = None) -> Path:
    """Build every block of ``head`` (:func:`~qubo_nn.qubo.iter_block_qubos`, one BQM in memory at
    a time) into ``out_dir``: ``head.pt``, block files and sidecars, then ``manifest.json``.

    ``features_ref`` (a :class:`~qubo_nn.features.FeatureConfig` as dict, or None) lets a later
    ``decode`` reload the features. Returns the manifest path.

    A folder already holding a build's files (:func:`build_files`) is refused unless
    ``overwrite``; then those files (and only those) are removed first, so no block of the old
    build is left beside the new ones, and an interrupted build leaves no manifest.
    ``max_disk_bytes``: refuse (before writing) a build whose :func:`estimate_build` is larger,
    or larger than the free space of the target file system.
    """
    import torch

    from .head import check_compatible
    from .qubo import iter_block_qubos

    fmt = format_of("", fmt)
    cfg.validate()
    check_compatible(head, feats)
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuboNNError(f"output {str(out)!r} exists and is not a directory")
    old = build_files(out)
    if old and not overwrite:
        blocks = sum(1 for p in old if p.suffix == SUFFIXES.get(fmt) or p.suffix in (".bqm", ".coo", ".qubo"))
        raise QuboNNError(f"output folder {str(out)!r} already holds a build ({len(old)} files, {blocks} block "
                          f"files); expected an empty or new folder: pass overwrite (--overwrite) to replace it")
    from .qubo import check_fits

    itemsize = np.dtype(_NP_DTYPES.get(cfg.bqm_dtype, np.float64)).itemsize
    check_fits(max(block_sizes(head.num_classes, head.dim, cfg)) * variables_per_weight(cfg.encoding, cfg.bits),
               itemsize, cfg.max_qubo_bytes)   # one block too large for memory: the more specific refusal
    check_disk(estimate_build(head.num_classes, head.dim, cfg, fmt)["bytes"], out, max_disk_bytes)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)
    for p in old:
        p.unlink(missing_ok=True)
    hd, fd = head_digest(head), features_digest(feats)
    with atomic_path(out / HEAD_NAME) as tmp:
        torch.save(head.state_dict(), tmp)
    entries: list[dict[str, Any]] = []
    L0 = None
    for blk in iter_block_qubos(head, feats, cfg, progress=progress):
        entries.append(write_block(out, blk, fmt, hd, fd))
        L0 = blk.model.L0
        del blk  # hold one BQM at a time
    seconds = time.perf_counter() - t0
    totals = {"blocks": len(entries),
              "variables": sum(e["num_variables"] for e in entries),
              "interactions": sum(e["num_interactions"] for e in entries),
              "bytes": sum(e["bytes"] for e in entries),
              "seconds": seconds}
    for key in ("hessian_s", "qubo_s", "write_s"):
        totals[key] = sum(e["timings"].get(key, 0.0) for e in entries)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": FILE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "file_format": fmt,
        "config": cfg.to_dict(),
        "versions": versions(),
        "features": features_ref,
        "head": HEAD_NAME,
        "head_digest": hd,
        "features_digest": fd,
        "num_classes": head.num_classes,
        "dim": head.dim,
        "num_samples": feats.n,
        "L0": L0,
        "blocks": entries,
        "totals": totals,
    }
    atomic_write_json(manifest_path, manifest)
    return manifest_path


def check_disk(nbytes: int, out_dir: str | os.PathLike, max_bytes: int | None) -> None:
    """Refuse writing ``nbytes`` under ``out_dir`` beyond ``max_bytes`` (None: no limit) or beyond
    the free space of its file system."""
    mib = nbytes / 2**20
    if max_bytes is not None and nbytes > max_bytes:
        raise QuboNNError(f"the build would write about {mib:,.1f} MiB, more than the limit of "
                          f"{max_bytes / 2**20:,.1f} MiB: expected a smaller build (fewer bits or blocks, "
                          f"--format dimod) or a larger --max-disk")
    probe = Path(out_dir).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if nbytes > free:
        raise QuboNNError(f"the build would write about {mib:,.1f} MiB but {str(probe)!r} has only "
                          f"{free / 2**20:,.1f} MiB free")


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
