"""BQM files: dimod native, full-precision COO and qbsolv .qubo (read and write, checked)."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.io.json_files import FILE_VERSION
from qubo_nn.runtime import atomic_path

if TYPE_CHECKING:
    pass


FORMATS = ("dimod", "coo", "qubo")


SUFFIXES = {"dimod": ".bqm", "coo": ".coo", "qubo": ".qubo"}


_COO_TAG = "qubo-nn-coo"


_QUBO_TAG = "qubo-nn-qubo"


_NP_DTYPES = {"float32": np.float32, "float64": np.float64}


_TEXT_SLICE = 1 << 18


_KEYVAL = re.compile(r"([A-Za-z_]+)[:=][ \t]*(\S+)")


MAX_VARIABLES = 1 << 26
"""The most variables a file may declare (67,108,864: 0.5 GiB of linear biases alone); a header
or label beyond it is a damaged file, refused before anything is allocated."""


MAX_ENERGY = 1e100
"""The largest |offset| + Σ|bias| accepted: every energy of the model then stays below it in
magnitude, so samplers (which sum biases, take differences, derive temperatures from them) never
overflow. Our models are in loss units (nats), far below it."""


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
        _check_dimod_header(path)
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
    check_energy_range(bqm, repr(str(path)))
    return bqm


def check_energy_range(bqm: dimod.BinaryQuadraticModel, where: str = "the model") -> None:
    """Refuse a model whose energies could overflow: |offset| + Σ|linear| + Σ|quadratic| (summed in
    float64 after duplicate biases were added up) must be finite and at most :data:`MAX_ENERGY`."""
    lin, (_, _, quad), offset = bqm.to_numpy_vectors()
    with np.errstate(over="ignore", invalid="ignore"):
        bound = abs(float(offset)) + float(np.abs(lin).sum(dtype=np.float64)) + float(np.abs(quad).sum(dtype=np.float64))
    if not bound <= MAX_ENERGY:
        what = "NaN" if np.isnan(bound) else f"{bound:.3g}"
        raise QuboNNError(f"{where}: the biases are too large: |offset| + sum of |biases| = {what} (after adding "
                          f"up duplicate biases), expected at most {MAX_ENERGY:.0e} so that no energy overflows; "
                          f"rescale the model")


def _check_dimod_header(path: Path) -> None:
    """Check a dimod .bqm file's structure before dimod reads it: magic DIMODBQM, a
    BinaryQuadraticModel header of a version this dimod reads, at most :data:`MAX_VARIABLES`, and
    neighbourhood tables whose offsets and indices stay in range (dimod's reader trusts them: a
    damaged index crashes the process instead of raising)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QuboNNError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    bad = f"{str(path)!r} is not a readable dimod BQM file (truncated or corrupted?)"
    if len(raw) < 14 or raw[:5] != b"DIMOD":
        raise QuboNNError(f"{str(path)!r} is not a dimod BQM file: expected the magic bytes b'DIMODBQM', "
                          f"got {raw[:8]!r}")
    if raw[:8] != b"DIMODBQM":
        raise QuboNNError(f"{str(path)!r} holds a dimod {raw[5:8].decode('ascii', 'replace')} model "
                          f"(magic {raw[:8]!r}), expected a BQM (magic b'DIMODBQM')")
    version = tuple(raw[8:10])
    (size,) = struct.unpack("<I", raw[10:14])
    try:
        header = json.loads(raw[14:14 + size].decode("ascii"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise QuboNNError(f"{bad}: damaged header: {exc}") from exc
    if not isinstance(header, dict) or header.get("type", "BinaryQuadraticModel") != "BinaryQuadraticModel":
        got = header.get("type") if isinstance(header, dict) else type(header).__name__
        raise QuboNNError(f"{str(path)!r}: its header says {got!r}, expected a BinaryQuadraticModel")
    if not (1, 0) <= version < (3, 0):
        raise QuboNNError(f"{str(path)!r}: dimod file version {version}, expected 1.x or 2.x")
    shape = header.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
        raise QuboNNError(f"{str(path)!r}: its header's shape must be [num_variables, num_interactions], got {shape!r}")
    n, ni = shape
    if n > MAX_VARIABLES or ni > n * (n - 1) // 2:
        raise QuboNNError(f"{str(path)!r}: its header declares {n} variables and {ni} interactions, expected at "
                          f"most {MAX_VARIABLES} variables and n(n-1)/2 interactions (a damaged file?)")
    try:
        dtype, itype, ntype = (np.dtype(header[k]) for k in ("dtype", "itype", "ntype"))
    except (KeyError, TypeError) as exc:
        raise QuboNNError(f"{bad}: its header lacks a valid dtype/itype/ntype") from exc
    if dtype.kind != "f" or itype.kind not in "iu" or ntype.kind not in "iu" or header.get("vartype") not in (
            "BINARY", "SPIN"):
        raise QuboNNError(f"{bad}: unexpected types in its header {header!r}"[:300])
    pos = 14 + size + dtype.itemsize                      # the offset follows the header
    if not n:
        if len(raw) < pos:
            raise QuboNNError(f"{bad}: the offset is missing")
        return
    lin_t = np.dtype([("nidx", ntype), ("bias", dtype)], align=False)
    quad_t = np.dtype([("outvar", itype), ("bias", dtype)], align=False)
    end = pos + n * lin_t.itemsize + 2 * ni * quad_t.itemsize
    if len(raw) < end:
        raise QuboNNError(f"{bad}: {len(raw)} bytes, its header promises at least {end}")
    nidx = np.frombuffer(raw, lin_t, count=n, offset=pos)["nidx"].astype(np.int64)
    starts = np.append(nidx, 2 * ni)
    if nidx[0] != 0 or (np.diff(starts) < 0).any():
        raise QuboNNError(f"{bad}: its neighbourhood offsets are out of order")
    out = np.frombuffer(raw, quad_t, count=2 * ni, offset=pos + n * lin_t.itemsize)["outvar"].astype(np.int64)
    owner = np.repeat(np.arange(n), np.diff(starts))
    if out.size and ((out < 0).any() or (out >= n).any() or (out == owner).any()):
        raise QuboNNError(f"{bad}: a neighbour index is out of range")


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
             f"{comment} num_variables={int(labels[-1]) + 1 if labels.size else 0}", f"{comment} num_interactions={u.size}",
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
    if ij.size and ij.max() >= MAX_VARIABLES:
        raise QuboNNError(f"{str(path)!r}: label {ij.max():.0f} exceeds the largest supported label "
                          f"{MAX_VARIABLES - 1} (a damaged file?)")
    u, v = ij[:, 0].astype(np.int64), ij[:, 1].astype(np.int64)
    diag = u == v
    n = int(max(u.max(), v.max())) + 1 if u.size else 0
    declared = _int(header, "num_variables", path, -1)
    if declared > MAX_VARIABLES:
        raise QuboNNError(f"{str(path)!r}: header num_variables={declared} exceeds the {MAX_VARIABLES} variables "
                          f"this reader supports (a damaged file?)")
    if declared >= 0 and n > declared:
        raise QuboNNError(f"{str(path)!r}: label {n - 1} does not fit the header's num_variables={declared}: "
                          f"expected labels 0..{declared - 1}" + (" (1-based labels?)" if n == declared + 1 else ""))
    if not qbsolv and declared < 0 and u.size and min(u.min(), v.min()) > 0:
        raise QuboNNError(f"{str(path)!r}: labels start at {min(u.min(), v.min())}, expected 0-based labels "
                          f"0..n-1 (a 1-based file? subtract 1 from every label)")
    n = max(n, declared)
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
        if not 0 <= max_nodes <= MAX_VARIABLES:
            raise QuboNNError(f"{str(path)!r}: maxNodes = {max_nodes}, expected 0..{MAX_VARIABLES} (a damaged file?)")
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
