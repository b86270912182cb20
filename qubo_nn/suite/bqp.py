"""OR-Library ``bqp`` files (Beasley 1990/1998) as a control suite for the same harness.

Format: the first line holds the number of problems; each problem starts with a line "n nnz", then
``nnz`` lines "i j q" (1-based i, j). The problem is to MAXIMISE Σ_lines q·x_i·x_j over x ∈ {0,1}ⁿ
(each line one term, as written: a pair listed twice counts twice). The BQM here MINIMISES the
negated objective, so energy = −objective and a best-known value v of the literature is E* = −v.
"""
from __future__ import annotations

import os
from pathlib import Path

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError


def read_bqp(path: str | os.PathLike) -> list[dimod.BinaryQuadraticModel]:
    """Every problem of an OR-Library bqp file as a BINARY BQM over 0..n−1 (energy = −objective)."""
    path = Path(path)
    if not path.is_file():
        raise QuboNNError(f"bqp file {str(path)!r} does not exist")
    tok = path.read_text().split()
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tok):
            raise QuboNNError(f"{path.name}: expected {what}, got the end of the file")
        try:
            v = kind(tok[pos])
        except ValueError:
            raise QuboNNError(f"{path.name}: expected {what}, got {tok[pos]!r}") from None
        pos += 1
        return v

    count = take(int, "the number of problems")
    out = []
    for t in range(count):
        n, nnz = take(int, f"problem {t + 1}'s n"), take(int, f"problem {t + 1}'s number of nonzeros")
        if n < 1 or nnz < 0:
            raise QuboNNError(f"{path.name}: expected n >= 1 and nnz >= 0 for problem {t + 1}, got {n}, {nnz}")
        end = pos + 3 * nnz
        if end > len(tok):
            raise QuboNNError(f"{path.name}: expected {nnz} 'i j q' lines for problem {t + 1}, got the end of the file")
        trip = np.asarray(tok[pos:end], dtype=np.float64).reshape(nnz, 3)
        pos = end
        i, j, q = trip[:, 0].astype(np.int64) - 1, trip[:, 1].astype(np.int64) - 1, -trip[:, 2]
        if nnz and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
            raise QuboNNError(f"{path.name}: expected indices in 1..{n} in problem {t + 1}")
        diag = i == j
        lin = np.bincount(i[diag], weights=q[diag], minlength=n)
        bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(lin, (i[~diag], j[~diag], q[~diag]), 0.0, "BINARY")
        bqm.add_variables_from((v, 0.0) for v in range(n))
        out.append(bqm)
    return out


def bqp_suite(folder: str | os.PathLike, out: str | os.PathLike, best_known: dict[str, float] | None = None,
              tabu_s: float = 1.0, seed: int = 0) -> dict:
    """Every ``*.txt``/``bqp*`` file of ``folder`` as a suite directory ``out`` (name FILE-T for problem
    T). E* = −``best_known[name]`` (the literature's maxima) where given, else the better of tabu
    (``tabu_s`` s) and neal's default, stated in the metadata."""
    from qubo_nn.runtime import atomic_write_json, sha256_file, to_jsonable
    from qubo_nn.samplers.registry import sample
    from qubo_nn.suite.formats import write_instance
    from qubo_nn.suite.instance import bqm_digest

    folder, out = Path(folder), Path(out)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".txt" or p.name.startswith("bqp")))
    if not files:
        raise QuboNNError(f"expected OR-Library bqp files (*.txt or bqp*) in {str(folder)!r}, got none")
    (out / "instances").mkdir(parents=True, exist_ok=True)
    entries = []
    for f in files:
        for t, bqm in enumerate(read_bqp(f), 1):
            name = f"{f.stem}-{t}"
            if best_known and name in best_known:
                best = {"energy": -float(best_known[name]), "found_by": "literature (given)"}
            else:
                runs = {s: float(sample(bqm, s, seed=seed, **kw).first.energy)
                        for s, kw in (("tabu", {"num_reads": 1, "time_limit": tabu_s}), ("neal", {"num_reads": 1}))}
                by = min(runs, key=runs.get)
                best = {"energy": runs[by], "found_by": f"{by} (control suite, seed {seed})"}
            paths = write_instance(bqm, out / "instances" / name, ("dimod",))
            entries.append({"name": name, "family": "orlib-bqp", "num_variables": bqm.num_variables,
                            "content_digest": bqm_digest(bqm), "has_integer_problem": False,
                            "files": {k: {"path": str(p.relative_to(out)), "sha256": sha256_file(p)} for k, p in paths.items()},
                            "meta": {"source": f"OR-Library {f.name} problem {t}", "energy": "−(Σ q_ij x_i x_j)",
                                     "best_known": best, "lower_bound": None, "baselines": {}}})
    man = {"suite": f"orlib-bqp ({folder.name})", "instances": entries}
    atomic_write_json(out / "manifest.json", to_jsonable(man))
    return man
