"""Run any sampler over a suite: per instance the relative excess (E − E*)/|E*|, the success
probability of reaching E* within a tolerance, the time to target TTS₉₉, the baselines beside them;
CSV/JSON files; Dolan–Moré performance profiles over several runs.

Definitions (R repeats, repeat r: wall time τ_r, best energy E_r; E* the instance's best known):
- success: E_r ≤ E* + tol·|E*| (``tol`` relative, default 1e-6); p = successes / R;
- TTS₉₉ = τ · ln(0.01)/ln(1 − p), τ = mean τ_r (∞ if p = 0, τ if p = 1);
- excess = (min_r E_r − E*)/|E*| (negative: the sampler beat the best known; recorded as new_best);
- profile: for each instance the ratio of a sampler's metric to the best sampler's, ρ(x) = share of
  instances with ratio ≤ x (Dolan & Moré 2002); for excess the metric is excess + ``excess_floor``.
"""
from __future__ import annotations

import csv
import fnmatch
import importlib
import io
import json
import math
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import atomic_path, atomic_write_json, child_seed, to_jsonable, versions
from qubo_nn.suite.instance import pack_bits, unpack_bits

DEFAULT_TOL = 1e-6
EXCESS_FLOOR = 1e-6
#: samplers that need the instance's integer problem (IntegerForm)
LEVEL_SAMPLERS = ("gptq", "cd", "pipeline")


def tts99(p: float, tau: float, target: float = 0.99) -> float:
    """Time to reach the target with ``target`` confidence: τ·ln(1 − target)/ln(1 − p); ∞ if p = 0, τ if p = 1."""
    if not 0.0 <= p <= 1.0:
        raise QuboNNError(f"expected a success probability in [0, 1], got {p!r}")
    if p == 0.0:
        return math.inf
    if p == 1.0:
        return float(tau)
    return float(tau) * max(1.0, math.log(1.0 - target) / math.log(1.0 - p))


class ExternalSampler(dimod.Sampler):
    """Any program as a sampler: it gets the instance as an OMMX file and writes samples back.

    ``command`` is a shell-like string with placeholders ``{input}`` (the .ommx file; ``{input_qubo}``:
    the same BQM as qbsolv .qubo), ``{output}`` (the file to write) and ``{time_limit}`` (seconds). The
    output holds one sample per line: n 0/1 values separated by spaces or commas, in variable order
    0..n−1. The program's exit status must be 0.
    """

    parameters = {"command": [], "time_limit": []}
    properties: dict = {}

    def sample(self, bqm, command: str | None = None, time_limit: float | None = None, **_: Any):
        from qubo_nn.io.bqm_files import write_bqm
        from qubo_nn.suite.formats import write_ommx

        if not command:
            raise QuboNNError("sampler 'external' needs a command, e.g. -m '{\"command\": \"prog {input} {output}\"}'")
        n = bqm.num_variables
        with tempfile.TemporaryDirectory() as d:
            inp, out, qub = Path(d) / "instance.ommx", Path(d) / "samples.txt", Path(d) / "instance.qubo"
            write_ommx(bqm, inp)
            if "{input_qubo}" in command:
                write_bqm(bqm, qub, "qubo")
            argv = [a.format(input=inp, output=out, input_qubo=qub, time_limit=time_limit or 0)
                    for a in shlex.split(command)]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise QuboNNError(f"external sampler {argv[0]!r} exited with {done.returncode}: {done.stderr[-500:]}")
            if not out.is_file():
                raise QuboNNError(f"external sampler {argv[0]!r} wrote no {out.name}: expected one sample per line")
            rows = [line.replace(",", " ").split() for line in out.read_text().splitlines() if line.strip()]
        X = np.asarray(rows, dtype=np.int8) if rows else np.zeros((0, n), np.int8)
        if X.ndim != 2 or X.shape[1] != n or not np.isin(X, (0, 1)).all():
            raise QuboNNError(f"external sampler: expected lines of {n} values 0/1, got shape {X.shape}")
        return dimod.SampleSet.from_samples_bqm((X, range(n)), bqm)


def resolve_sampler(name: str):
    """A dimod sampler instance, a registry name, ``external``, or ``module:Class`` (any importable
    dimod sampler class)."""
    if isinstance(name, dimod.Sampler):
        return name
    if name == "external":
        return ExternalSampler()
    if ":" in name:
        mod, attr = name.split(":", 1)
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise QuboNNError(f"expected an importable dimod sampler 'module:Class', got {name!r}: {exc}") from exc
        smp = cls()
        if not isinstance(smp, dimod.Sampler):
            raise QuboNNError(f"expected a dimod.Sampler subclass, got {type(smp).__name__} from {name!r}")
        return smp
    from qubo_nn.samplers.registry import get_sampler
    return get_sampler(name)


def _load_form(suite_dir: Path, entry: dict):
    from qubo_nn.core.problem import IntegerForm
    from qubo_nn.suite.formats import read_problem

    f = entry.get("files", {}).get("problem")
    if not f:
        return None
    p, kind, levels = read_problem(suite_dir / f["path"])
    if levels & (levels - 1):
        return None
    return IntegerForm(p, kind, levels.bit_length() - 1)


def select(entries: list[dict], pattern: str | None) -> list[dict]:
    """Instances whose name or family matches ``pattern`` (fnmatch; a plain word matches as a substring)."""
    if not pattern:
        return entries
    pat = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [e for e in entries if fnmatch.fnmatch(e["name"], pat) or fnmatch.fnmatch(e["family"], pat)]


def run_bench(suite_dir: str | os.PathLike, sampler: str | dimod.Sampler, params: dict | None = None, *, time_limit: float | None = None,
              repeats: int = 3, pattern: str | None = None, seed: int = 0, tol: float = DEFAULT_TOL,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``sampler`` ``repeats`` times on each selected instance of the suite at ``suite_dir``.

    ``time_limit`` is passed as the sampler's ``time_limit`` when it takes one (tabu, sb, neal,
    external), as ``time_budget_s`` to the pipeline, and is recorded either way. Level samplers
    (gptq, cd, pipeline) get the instance's integer form and skip instances without one.
    Returns {"sampler", "params", ..., "instances": [row, ...]} (see :func:`summarise`).
    """
    from qubo_nn.samplers.registry import sample
    from qubo_nn.suite.generate import load_manifest

    if not isinstance(repeats, int) or repeats < 1:
        raise QuboNNError(f"expected repeats >= 1, got {repeats!r}")
    suite_dir = Path(suite_dir)
    man = load_manifest(suite_dir)
    entries = select(man["instances"], pattern)
    if not entries:
        raise QuboNNError(f"expected the filter to match some instances of {man['suite']}, got none for {pattern!r}")
    smp = resolve_sampler(sampler)
    if not isinstance(sampler, str):
        sampler = type(sampler).__name__
    accepted = set(smp.parameters)
    base = dict(params or {})
    if time_limit is not None:
        if "time_limit" in accepted:
            base.setdefault("time_limit", float(time_limit))
        elif "time_budget_s" in accepted:
            base.setdefault("time_budget_s", float(time_limit))
    rows = []
    t_start = time.perf_counter()
    for e in entries:
        meta = e.get("meta", {})
        best = meta.get("best_known", {}).get("energy")
        row = {"name": e["name"], "family": e["family"], "num_variables": e["num_variables"], "best_known": best,
               "lower_bound": (meta.get("lower_bound") or {}).get("lower_bound"),
               "baselines": {k: v.get("energy") for k, v in meta.get("baselines", {}).items()},
               "baseline_times_s": {k: v.get("time_s") for k, v in meta.get("baselines", {}).items()}}
        kw = dict(base)
        if "integer_form" in accepted:
            form = _load_form(suite_dir, e)
            if form is None and sampler in LEVEL_SAMPLERS:
                row["skipped"] = "no integer problem with a power-of-two level count"
                rows.append(row)
                continue
            if form is not None:
                kw["integer_form"] = form
        from qubo_nn.io.bqm_files import read_bqm
        bqm = read_bqm(suite_dir / e["files"]["dimod"]["path"])
        energies, times, best_x = [], [], None
        for r in range(repeats):
            t0 = time.perf_counter()
            ss = sample(bqm, smp, seed=child_seed(seed, r), **kw)
            times.append(time.perf_counter() - t0)
            energies.append(float(ss.first.energy))
            if energies[-1] <= min(energies):
                best_x = np.asarray([ss.first.sample[v] for v in range(bqm.num_variables)], dtype=np.int8)
        row.update(score(energies, times, best, tol))
        row["best_sample"] = pack_bits(best_x)
        rows.append(row)
        if progress:
            progress(f"{e['name']}: excess {row['excess']:.3g} p {row['success_probability']:.2f} "
                     f"tts99 {row['tts99_s']:.3g} s")
    return {"suite": man["suite"], "suite_dir_name": suite_dir.name, "sampler": sampler,
            "params": to_jsonable({**base}), "time_limit": time_limit, "repeats": repeats, "filter": pattern,
            "seed": seed, "tol": tol, "wall_time_s": time.perf_counter() - t_start,
            "loadavg": os.getloadavg(), "versions": versions(), "instances": rows}


def score(energies: list[float], times: list[float], best: float | None, tol: float = DEFAULT_TOL) -> dict[str, Any]:
    """Per-instance metrics of R repeats (energies, wall times) against the best known ``best``."""
    E = np.asarray(energies, dtype=np.float64)
    tau = float(np.mean(times))
    out = {"energies": E.tolist(), "times_s": list(map(float, times)), "energy_min": float(E.min()),
           "energy_median": float(np.median(E)), "time_mean_s": tau}
    if best is None:
        return {**out, "excess": None, "success_probability": None, "tts99_s": None}
    scale = abs(best) if best != 0 else 1.0
    succ = E <= best + tol * scale
    p = float(succ.mean())
    return {**out, "excess": float((E.min() - best) / scale), "excess_median": float((np.median(E) - best) / scale),
            "success_probability": p, "successes": int(succ.sum()), "tts99_s": tts99(p, tau),
            "new_best": bool(E.min() < best - tol * scale)}


def write_results(res: dict, out: str | os.PathLike, stem: str | None = None) -> dict[str, Path]:
    """``out/STEM.json`` and ``out/STEM.csv`` (one line per instance), atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or res["sampler"].replace(":", "_").replace("/", "_")
    js, cs = out / f"{stem}.json", out / f"{stem}.csv"
    atomic_write_json(js, to_jsonable(res))
    base_names = sorted({k for r in res["instances"] for k in r.get("baselines", {})})
    cols = ["name", "family", "num_variables", "best_known", "lower_bound", "energy_min", "excess",
            "success_probability", "time_mean_s", "tts99_s", "skipped"] + [f"baseline_{b}" for b in base_names]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in res["instances"]:
        w.writerow([r.get(c) for c in cols[:11]] + [r.get("baselines", {}).get(b) for b in base_names])
    with atomic_path(cs) as tmp:
        Path(tmp).write_text(buf.getvalue())
    return {"json": js, "csv": cs}


def profile(results: list[dict], metric: str = "tts99_s", excess_floor: float = EXCESS_FLOOR
            ) -> tuple[list[str], np.ndarray]:
    """Dolan–Moré ratios: (sampler names, R (instances × samplers)) with R_is = metric_is / min_s metric_is
    over the instances every run covers (∞ where a sampler failed or skipped: p = 0, no result)."""
    names = [r["sampler"] for r in results]
    by = [{row["name"]: row for row in r["instances"]} for r in results]
    common = sorted(set.intersection(*(set(b) for b in by)))
    M = np.full((len(common), len(results)), np.inf)
    for j, b in enumerate(by):
        for i, name in enumerate(common):
            v = b[name].get(metric)
            if v is not None and not b[name].get("skipped"):
                v = float(v)
                M[i, j] = max(v, 0.0) + excess_floor if metric.startswith("excess") else v
    best = M.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        R = np.where(np.isfinite(best), M / best, np.inf)
    return names, R


def plot_profiles(results: list[dict], path: str | os.PathLike, metrics=("tts99_s", "excess")) -> dict[str, Any]:
    """Dolan–Moré performance profiles (one panel per metric) to ``path`` (png); returns ρ at x = 1, 2, 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2))
    axes = np.atleast_1d(axes)
    summary: dict[str, Any] = {}
    for ax, metric in zip(axes, metrics):
        names, R = profile(results, metric)
        finite = R[np.isfinite(R)]
        xmax = max(2.0, float(finite.max()) * 1.5) if finite.size else 2.0
        xs = np.logspace(0, math.log10(xmax), 400)
        summary[metric] = {}
        for j, name in enumerate(names):
            rho = [(R[:, j] <= x).mean() for x in xs]
            ax.step(xs, rho, where="post", label=name)
            summary[metric][name] = {f"rho_at_{x:g}": float((R[:, j] <= x).mean()) for x in (1, 2, 10)}
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"ratio to the best sampler's {metric}" + (" (+1e-6)" if metric.startswith("excess") else ""))
        ax.set_ylabel("share of instances")
        ax.set_title(f"performance profile: {metric} ({R.shape[0]} instances)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return summary


def summary_text(manifest: dict, runs: list[dict], gap_target: float = 0.05) -> str:
    """A text report: the suite's bound certification (share of instances whose best known is within
    ``gap_target`` of its certified lower bound, by family) and, per run, the share of instances
    where the sampler reached the best known and its median excess, by family."""
    ents = manifest["instances"]
    fams = sorted({e["family"] for e in ents})
    lines = [f"# {manifest['suite']}: {len(ents)} instances, "
             f"{min(e['num_variables'] for e in ents)}..{max(e['num_variables'] for e in ents)} variables", "",
             f"## Best known vs certified lower bound (gap = (E* − LB)/|E*|, target ≤ {gap_target:.0%})", "",
             "Second measure: the same distance as a share of round-to-nearest's: (E* − LB)/(E_rtn − LB).", "",
             "| family | instances | with a bound | gap ≤ target | median gap | median (E*−LB)/(E_rtn−LB) | best known found by |",
             "|---|---|---|---|---|---|---|"]
    total_ok = 0
    for fam in fams:
        es = [e for e in ents if e["family"] == fam]
        gaps = [e["meta"]["lower_bound"]["gap"] for e in es if e["meta"].get("lower_bound")]
        ok = sum(g is not None and g <= gap_target for g in gaps)
        total_ok += ok
        by: dict[str, int] = {}
        for e in es:
            k = e["meta"].get("best_known", {}).get("found_by", "?")
            by[k] = by.get(k, 0) + 1
        med = f"{np.median(gaps):.2%}" if gaps else "-"
        rel = []
        for e in es:
            lb, rt = (e["meta"].get("lower_bound") or {}).get("lower_bound"), e["meta"].get("baselines", {}).get("rtn")
            if lb is not None and rt is not None and rt["energy"] > lb:
                rel.append((e["meta"]["best_known"]["energy"] - lb) / (rt["energy"] - lb))
        mrel = f"{np.median(rel):.2%}" if rel else "-"
        lines.append(f"| {fam} | {len(es)} | {len(gaps)} | {ok} | {med} | {mrel} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(by.items())) + " |")
    lines += ["", f"Certified within {gap_target:.0%}: {total_ok}/{len(ents)} instances "
              f"({total_ok / len(ents):.0%}).", ""]
    if runs:
        lines += ["## Harness runs: instances where the sampler reached E* in at least one repeat / run, median excess",
                  "", "| sampler | settings | " + " | ".join(fams) + " | all | wall (s) |",
                  "|---|---|" + "---|" * (len(fams) + 2)]
        for r in runs:
            cells = []
            rows_all = [x for x in r["instances"] if not x.get("skipped") and x.get("excess") is not None]
            for fam in fams + [None]:
                rows = [x for x in rows_all if fam is None or x["family"] == fam]
                if not rows:
                    cells.append("skipped")
                    continue
                hit = sum(x["success_probability"] > 0 for x in rows)
                cells.append(f"{hit}/{len(rows)}, {np.median([x['excess'] for x in rows]):.2%}")
            settings = f"R={r['repeats']}, time_limit={r.get('time_limit')}, {json.dumps(r.get('params', {}))}"
            lines.append(f"| {r['sampler']} | {settings} | " + " | ".join(cells) + f" | {r['wall_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def rescore(res: dict, manifest: dict, tol: float | None = None) -> dict:
    """The run ``res`` scored again against ``manifest``'s best-known values and baselines (e.g. a run
    made before the best known was final); rows keep their energies and times."""
    tol = res.get("tol", DEFAULT_TOL) if tol is None else tol
    ents = {e["name"]: e for e in manifest["instances"]}
    for row in res["instances"]:
        e = ents.get(row["name"])
        if e is None or row.get("skipped") or "energies" not in row:
            continue
        meta = e.get("meta", {})
        best = meta.get("best_known", {}).get("energy")
        row.update(num_variables=e["num_variables"], best_known=best, lower_bound=(meta.get("lower_bound") or {}).get("lower_bound"),
                   baselines={k: v.get("energy") for k, v in meta.get("baselines", {}).items()},
                   baseline_times_s={k: v.get("time_s") for k, v in meta.get("baselines", {}).items()})
        row.update(score(row["energies"], row["times_s"], best, tol))
    return res


def adopt_new_bests(manifest: dict, res: dict, tol: float | None = None) -> list[str]:
    """Make the run ``res``'s answers the best known of ``manifest`` wherever they are lower than it
    by more than ``tol``·|E*| (the run's tolerance by default): best_known gets the run's best sample
    (``best_sample``), its energy, ``found_by`` the sampler (``previous``: the replaced entry), and the
    lower bound's gap is recomputed. Returns the names changed; rescore older runs with :func:`rescore`."""
    tol = res.get("tol", DEFAULT_TOL) if tol is None else tol
    ents = {e["name"]: e for e in manifest["instances"]}
    changed = []
    for row in res["instances"]:
        e = ents.get(row["name"])
        if e is None or row.get("skipped") or not row.get("best_sample") or not e["meta"].get("best_known"):
            continue
        old = e["meta"]["best_known"]
        if row["energy_min"] >= old["energy"] - tol * abs(old["energy"]):
            continue
        x = unpack_bits(row["best_sample"], e["num_variables"])
        e["meta"]["best_known"] = {"energy": row["energy_min"], "found_by": res["sampler"],
                                   "how": {k: res.get(k) for k in ("params", "repeats", "seed", "time_limit")},
                                   "sample": pack_bits(x), "sample_encoding": old.get("sample_encoding"),
                                   "previous": {k: v for k, v in old.items() if k != "previous"}}
        lb = e["meta"].get("lower_bound")
        if lb is not None and row["energy_min"] != 0:
            lb["gap"] = (row["energy_min"] - lb["lower_bound"]) / abs(row["energy_min"])
        changed.append(row["name"])
    return changed
