"""Instance files: dimod native (.bqm), qbsolv (.qubo), full-precision COO (.coo) through
:mod:`qubo_nn.io.bqm_files`, and OMMX (.ommx: an OMMX artifact archive holding one
``ommx.v1.Instance``, read by ``ommx.artifact.Artifact.load_archive(path).instance``; OMMX's
adapters hand it to OpenJij, SCIP, HiGHS, PySCIPOpt and Fujitsu's Digital Annealer).

OMMX was chosen over QPLIB's text format because its readers are solver adapters maintained by the
OMMX project (``ommx-openjij-adapter``, ``ommx-pyscipopt-adapter``, ``ommx-highs-adapter``, ...) and
it can import QPLIB files itself (``Instance.load_qplib``), so a QPLIB user is one call away.
"""
from __future__ import annotations

import os
from pathlib import Path

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.io.bqm_files import read_bqm, write_bqm
from qubo_nn.runtime import atomic_path

FORMATS = ("dimod", "qubo", "coo", "ommx")
SUFFIX = {"dimod": ".bqm", "qubo": ".qubo", "coo": ".coo", "ommx": ".ommx"}


def bqm_to_ommx(bqm: dimod.BinaryQuadraticModel, title: str = ""):
    """The BQM (BINARY, labels 0..n−1) as an ``ommx.v1.Instance`` (minimize; binary variables with
    ids = labels; objective: the quadratic, linear and constant terms as float64, unchanged)."""
    from ommx.v1 import DecisionVariable, Instance, Linear, Quadratic

    n = bqm.num_variables
    if bqm.vartype is not dimod.BINARY:
        bqm = bqm.change_vartype(dimod.BINARY, inplace=False)
    lin, (r, c, q), off = bqm.to_numpy_vectors(variable_order=range(n))
    obj = Quadratic(columns=c.tolist(), rows=r.tolist(), values=q.tolist(),
                    linear=Linear(terms={i: float(v) for i, v in enumerate(lin) if v != 0}, constant=float(off)))
    desc = Instance.Description(name=title) if title else None
    return Instance.from_components(objective=obj, constraints=[], sense=Instance.MINIMIZE,
                                    decision_variables=[DecisionVariable.binary(i) for i in range(n)],
                                    description=desc)


def ommx_to_bqm(instance) -> dimod.BinaryQuadraticModel:
    """An unconstrained binary ``ommx.v1.Instance`` as a dimod BQM (labels = variable ids), through
    OMMX's own ``to_qubo`` (no penalty terms are added when there is no constraint)."""
    if instance.num_constraints:
        raise QuboNNError(f"expected an unconstrained OMMX instance, got {instance.num_constraints} constraints")
    qubo, const = instance.to_qubo()
    bqm = dimod.BinaryQuadraticModel("BINARY")
    bqm.add_variables_from((v.id, 0.0) for v in instance.decision_variables)
    for (i, j), v in qubo.items():
        if i == j:
            bqm.add_linear(i, v)
        else:
            bqm.add_quadratic(i, j, v)
    bqm.offset = const
    return bqm


def write_ommx(bqm: dimod.BinaryQuadraticModel, path: str | os.PathLike, title: str = "") -> None:
    from ommx.artifact import ArtifactBuilder

    with atomic_path(path) as tmp:
        Path(tmp).unlink(missing_ok=True)
        builder = ArtifactBuilder.new_archive_unnamed(str(tmp))
        builder.add_instance(bqm_to_ommx(bqm, title))
        builder.build()


def read_ommx(path: str | os.PathLike) -> dimod.BinaryQuadraticModel:
    from ommx.artifact import Artifact

    if not Path(path).is_file():
        raise QuboNNError(f"OMMX file {str(path)!r} does not exist")
    try:
        inst = Artifact.load_archive(str(path)).instance
    except Exception as exc:
        raise QuboNNError(f"{str(path)!r} is not a readable OMMX artifact: {type(exc).__name__}: {exc}") from exc
    return ommx_to_bqm(inst)


def write_instance(bqm: dimod.BinaryQuadraticModel, stem: Path, formats=FORMATS, title: str = "") -> dict[str, Path]:
    """``stem`` + each format's suffix; returns {format: path}."""
    out = {}
    for fmt in formats:
        path = stem.with_name(stem.name + SUFFIX[fmt])
        if fmt == "ommx":
            write_ommx(bqm, path, title)
        else:
            write_bqm(bqm, path, fmt)
        out[fmt] = path
    return out


def read_instance(path: str | os.PathLike) -> dimod.BinaryQuadraticModel:
    """Any suite file by its suffix (.bqm, .qubo, .coo, .ommx)."""
    return read_ommx(path) if str(path).endswith(".ommx") else read_bqm(path)


def check_formats(formats) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise QuboNNError(f"expected formats from {FORMATS}, got {list(formats)}")
    if "dimod" not in formats:
        raise QuboNNError(f"expected 'dimod' among the formats (the harness reads it), got {list(formats)}")
    return tuple(formats)


def problem_arrays(p, kind: str, levels: int) -> dict[str, np.ndarray]:
    return {"H": p.H, "target": p.target, "scale": p.scale, "kmin": p.kmin, "kmax": p.kmax,
            "const": np.asarray(p.const), "kind": np.asarray(kind), "levels": np.asarray(levels)}


def read_problem(path: str | os.PathLike):
    """(IntegerProblem, kind, levels) of a ``problems/NAME.npz`` written from :func:`problem_arrays`."""
    from qubo_nn.core.problem import IntegerProblem

    a = np.load(path)
    p = IntegerProblem(a["H"], a["target"], a["scale"], a["kmin"], a["kmax"], float(a["const"]))
    return p, str(a["kind"]), int(a["levels"])
