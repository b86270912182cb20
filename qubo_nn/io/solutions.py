"""A solve's files: solution.json, stored SampleSets, best samples."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.io.json_files import check_fields, inside, read_tagged_json

if TYPE_CHECKING:
    pass


SOLUTION_NAME = "solution.json"


SOLUTION_FORMAT = "qubo-nn-solution"


SOLUTION_VERSION = 1


def read_solution(solution_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``solution.json`` of a solve (``solution_dir`` is its directory or the file); adds
    ``"dir"`` (absolute), against which the paths inside are relative."""
    path = Path(solution_dir)
    if path.is_dir():
        path = path / SOLUTION_NAME
    if not path.is_file():
        raise QuboNNError(f"no {SOLUTION_NAME} at {str(path)!r} (run `qubo-nn solve ... --out DIR` first)")
    sol = read_tagged_json(path, SOLUTION_FORMAT, SOLUTION_VERSION, "solution", "solution")
    if not isinstance(sol.get("blocks"), list) or not sol["blocks"]:
        raise QuboNNError(f"solution {str(path)!r} lists no blocks")
    root = path.parent.resolve()
    seen: set[int] = set()
    for i, row in enumerate(sol["blocks"]):
        check_fields(row, _ROW_FIELDS, f"block row {i}", path, optional=("L0", "current_energy"))
        if row["block_id"] < 0 or row["block_id"] in seen:
            raise QuboNNError(f"{str(path)!r}: block row {i} has block_id {row['block_id']}, expected a "
                              f"non-negative id listed once")
        seen.add(row["block_id"])
        inside(root, row["samples"], "samples", path)
    sol["dir"] = str(root)
    return sol


_ROW_FIELDS: dict[str, tuple[type, ...]] = {"block_id": (int,), "file": (str,), "samples": (str,),
                                            "builder_block": (bool, int), "best_energy": (int, float),
                                            "current_energy": (int, float, type(None)),
                                            "L0": (int, float, type(None))}


def read_samples(path: str | os.PathLike) -> dimod.SampleSet:
    """A SampleSet written by :func:`qubo_nn.workflows.solve.solve` (``SampleSet.to_serializable`` as JSON)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
        return dimod.SampleSet.from_serializable(obj)
    except FileNotFoundError as exc:
        raise QuboNNError(f"samples file {str(path)!r} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QuboNNError(f"samples file {str(path)!r} is not valid JSON (truncated?): {exc}") from exc
    except Exception as exc:  # dimod's deserializer raises assorted errors on foreign JSON
        raise QuboNNError(f"samples file {str(path)!r} is not a serialized dimod SampleSet: "
                          f"{type(exc).__name__}: {exc}") from exc


def best_bits(ss: dimod.SampleSet, bqm: dimod.BinaryQuadraticModel, where: str = "") -> np.ndarray:
    """The lowest-energy sample of ``ss`` as bits in variable order 0..n−1, checked against ``bqm``:
    same variables, and the stored energy equals ``bqm``'s (else the two do not belong together)."""
    n = bqm.num_variables
    if len(ss) == 0:
        raise QuboNNError(f"{where}: the solution holds no samples")
    if set(ss.variables) != set(bqm.variables) or set(bqm.variables) != set(range(n)):
        raise QuboNNError(f"{where}: the solution's {len(ss.variables)} variables do not match the QUBO's {n}")
    if ss.vartype is not dimod.BINARY:
        ss = ss.change_vartype(dimod.BINARY, inplace=False)
    i = int(np.argmin(ss.record.energy))
    row = ss.record.sample[i]
    x = np.asarray([row[ss.variables.index(v)] for v in range(n)], dtype=np.int8)
    e = float(bqm.energies((x[None, :], list(range(n))))[0])
    stored = float(ss.record.energy[i])
    if not np.isclose(e, stored, rtol=1e-9, atol=1e-9):
        raise QuboNNError(f"{where}: the stored energy {stored!r} of the best sample differs from the QUBO's "
                          f"{e!r}: the solution was made for a different QUBO")
    return x
