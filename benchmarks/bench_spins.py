"""Binary and ternary rows (issue 24): every method on the same spin-grid objective, against the best known;
and (``--heads``) whole heads quantized by every method, beside fp32 and a QAT (STE) reference.

Rows (``--datasets digits,realistic,network``, ``--rows`` each, :func:`instances`): class rows of the
fp32 heads of the heads runs (digits: results/quantize/heads/digits.pt on the digits features; realistic:
results/spins/heads/realistic-50k.pt on ``realistic_features`` at full size, 50,000 × 512, 100 classes),
H̃ = the row's exact CE Hessian block + μI (μ = 0.01·mean diag H, as ``quantize``), t the fp32 row, L0 the
loss at the fp32 head; and (row, group-of-64) problems of a network layer (``bench_annealer.network_problems``).
Each row becomes, for grid ∈ {binary, ternary}, the fixed-scale problem (``core.spins.spin_problem``)

    E(c) = L0 + ½(α c − t)ᵀH̃(α c − t),   c ∈ {−1, +1}ᵐ (binary) or {−1, 0, +1}ᵐ (ternary),

with α the scale that quantize's ``cd`` alternation converges to on that row. Methods (:func:`run_group`):
rtn, gptq (act-order), cd (single + pair flips from gptq; the peer), tabu (random start, the peer's time),
``pipeline`` (neal on unary windows, hot, from the best of 3 CDs, CD polish), ``batch`` (batch-anneal
over all rows of a dataset and grid at once, from the same 3-CD start, CD polish; its time split evenly);
the best-known run (longer batch-anneal, then tabu + CD); ``core.bounds.box_lower_bound`` (certified).
Times are CPU seconds of this one-thread process (the cores are shared). Reported per grid and per dataset:
(E − E*)/E* median and worst, the bound's gap (E* − LB)/E*, time per row, rows where a candidate is strictly
below gptq + cd within 10× their time, and the stage (classical / anneal / polish) of each pipeline and
batch answer. ``--encodings``: the ternary neal pipeline with domain-wall windows on each group's first row.

Usage: python benchmarks/bench_spins.py [--rows 10] [--datasets digits,realistic,network] [--seed 0] [--out results]
       python benchmarks/bench_spins.py --heads --dataset digits|realistic [--seeds 5] [--qat-seeds 5] ...
Writes results/bench_spins.json and .txt atomically after every (dataset, grid) (``--quick``: *_quick);
the heads: results/spins/heads_<dataset>.{json,md,png} after every seed. Records os.getloadavg().
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):    # before NumPy loads: BLAS threads
    os.environ.setdefault(_v, "1")     # beyond the 2 shared cores made each 512² Cholesky take 1 s (measured)
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qubo_nn.core.bounds import box_lower_bound
from qubo_nn.core.kernels import coordinate_descent, gptq, rtn
from qubo_nn.core.spins import TERNARY_ENCODING, alternate, spin_bqm, spin_problem, ternary_from_spins, levels_of_codes
from qubo_nn.curvature.head_ce import HeadCE
from qubo_nn.runtime import atomic_path, atomic_write_json, machine_info, to_jsonable, versions
from qubo_nn.samplers.level_solvers import solve_levels
from qubo_nn.samplers.registry import sample

HOT = {"params": {"num_reads": 4, "num_sweeps": 1000}, "rounds": 4, "refine_span": None, "budget_x": 6.0}
BATCH = {"num_reads": 4, "num_sweeps": 100, "rounds": 4, "k_start": "best"}
LONG = {"num_reads": 8, "num_sweeps": 400, "rounds": 4, "tabu_x": 5.0}
METHODS = ("rtn", "gptq", "cd", "tabu", "pipeline", "batch")
CANDIDATES = ("tabu", "pipeline", "batch")


def instances(dataset: str, n: int):
    """(H̃, t, L0) of ``n`` rows: a head's class rows 0..n−1 (the heads runs' fp32 heads, :func:`head_data`;
    H̃ = the row's exact CE Hessian block + μI, μ = 0.01·mean diag, t the fp32 row, L0 the loss at fp32), or
    ``network``: n (row, group-of-64) problems of a random-init ResNet-18's layer2.0.conv2 on 64 digits
    calibration images (``bench_annealer.network_problems``: H = the group's block of the damped input Gram,
    t = the fp32 weights of the row in that group, no error feedback; spread over the layer's rows and groups)."""
    if dataset == "network":
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_annealer", ROOT / "benchmarks" / "bench_annealer.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        probs, meta = mod.network_problems(10**9, "layer2.0.conv2", 64)
        pick = np.linspace(0, len(probs) - 1, n).round().astype(int)
        return [(probs[j].H, probs[j].target, 0.0, f"{j // meta['rows']}/{j % meta['rows']}") for j in pick], meta
    tr, _, head = head_data(dataset)
    src = HeadCE(head, tr, 0.0, "cpu", "float64", 4096, None, 0)
    out = []
    for c in range(min(n, head.num_classes)):
        p0 = src.row_problem(c, 1.0, -1, 1, 0.01)
        out.append((p0.H, p0.target, p0.const, str(c)))
    return out, {"head_file": str(HEAD_FILES[dataset].relative_to(ROOT)), "data": HEAD_DATA[dataset]}


def timed(fn):
    """(fn(), CPU seconds of this process): every solver runs on one thread in this process, so CPU time
    measures the work, not the other jobs on the shared cores."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def _cd_solver(p, k_prev):
    return coordinate_descent(p, gptq(p, True))[0]


def _tabu_levels(p, bqm, grid, seed, time_s, start=None):
    kw = {"num_reads": 1, "timeout": max(int(1000 * time_s), 1)}
    if start is not None:
        kw["initial_states"] = start[None, :]
    ss = sample(bqm, "tabu", seed=seed, **kw)
    sig = ss.record.sample[0, [ss.variables.index(v) for v in range(bqm.num_variables)]]
    return levels_of_codes(sig if grid == "binary" else ternary_from_spins(sig), grid)


def _spins_of(k, grid):
    from qubo_nn.core.spins import codes_of_levels, ternary_spins

    c = codes_of_levels(k, grid)
    return c.astype(np.int8) if grid == "binary" else ternary_spins(c)


def run_row(H, t, L0, grid, seed, encodings=False) -> dict:
    """One row scored alone (:func:`run_group` of one)."""
    return run_group([(H, t, L0)], grid, seed, encodings)[0]


def run_group(insts, grid, seed, encodings=False) -> list[dict]:
    """Every method on rows ``insts`` [(H̃, t, L0)] at ``grid``; the batched methods run all rows at once.

    Per row: α = the scale of the cd ↔ α alternation (the problem every method is then asked to solve);
    rtn, gptq (act-order), cd (from gptq; its time includes gptq's: the peer time); tabu from a random
    state for the peer time; ``pipeline``: the neal pipeline (``solve_levels(p, "qubo", sampler="neal")``:
    best of 3 CDs, unary windows annealed hot, 4 reads × 1000 sweeps, CD polish, ≤ 4 rounds, no new round
    after 6× the peer time). Batched over the rows: ``batch`` (``solve_levels_batch``, k_start "best": the
    same 3-CD start, then 4 chains × 100 sweeps of batch-anneal, CD polish, ≤ 4 rounds; its CPU time split
    evenly over the rows) and the best-known run (batch-anneal 8 chains × 400 sweeps, ≤ 4 rounds, seed + 1,
    then per row tabu from its answer for 5× the peer time and CD). E* = the lowest of all.
    """
    from qubo_nn.samplers.level_solvers import solve_levels_batch

    rows, probs, bqms = [], [], []
    for j, (H, t, L0) in enumerate(insts):
        (_, alpha, ainfo), s_alpha = timed(lambda: alternate(H, t, grid, _cd_solver, None, L0))
        p = spin_problem(H, t, alpha, grid, L0)
        e, tm, info = {}, {}, {}

        def put(name, k, secs):
            assert p.feasible(k), name
            e[name], tm[name] = float(p.energy(k)), secs

        k, s_ = timed(lambda: rtn(p))
        put("rtn", k, s_)
        k_g, s_g = timed(lambda: gptq(p, True))
        put("gptq", k_g, s_g)
        (k_cd, _), s_cd = timed(lambda: coordinate_descent(p, k_g))
        put("cd", k_cd, s_cd + s_g)
        peer = s_g + s_cd
        enc = TERNARY_ENCODING
        bqm = spin_bqm(H, t, alpha, grid, L0, enc)
        k, s_ = timed(lambda: _tabu_levels(p, bqm, grid, seed + j, peer))
        put("tabu", k, s_)
        (k, pinfo), s_ = timed(lambda: solve_levels(p, "qubo", encoding=enc, levels=3, seed=seed + j, sampler="neal",
                                                    params=dict(HOT["params"]), rounds=HOT["rounds"],
                                                    refine_span=HOT["refine_span"], time_budget_s=HOT["budget_x"] * peer))
        put("pipeline", k, s_)
        info["pipeline"] = {x: pinfo.get(x) for x in ("stage", "energy_classical", "classical_start", "energy_anneal_raw",
                                                       "anneal_improved_rounds", "rounds_run")}
        if encodings and grid == "ternary" and j == 0:
            other = "domain-wall" if enc == "unary" else "unary"
            (k, oinfo), s_ = timed(lambda: solve_levels(p, "qubo", encoding=other, levels=3, seed=seed + j, sampler="neal",
                                                        params=dict(HOT["params"]), rounds=HOT["rounds"],
                                                        refine_span=HOT["refine_span"],
                                                        time_budget_s=HOT["budget_x"] * peer))
            info["encodings"] = {enc: {"energy": e["pipeline"], "time_s": tm["pipeline"],
                                       "energy_anneal_raw": pinfo.get("energy_anneal_raw")},
                                 other: {"energy": float(p.energy(k)), "time_s": s_,
                                         "energy_anneal_raw": oinfo.get("energy_anneal_raw")}}
        rows.append({"grid": grid, "alpha": alpha, "alpha_iterations": ainfo["iterations"], "alpha_time_s": s_alpha,
                     "weights": p.m, "bqm_variables": bqm.num_variables, "energy": e, "time_s": tm, "info": info,
                     "peer_time_s": peer})
        probs.append(p)
        bqms.append(bqm)
    n = len(probs)
    seeds = [seed + j for j in range(n)]
    res, s_b = timed(lambda: solve_levels_batch(probs, seeds, k_start=BATCH["k_start"], num_reads=BATCH["num_reads"],
                                                num_sweeps=BATCH["num_sweeps"], rounds=BATCH["rounds"]))
    long_res, s_l = timed(lambda: solve_levels_batch(probs, [x + 1 for x in seeds], k_start="best",
                                                     num_reads=LONG["num_reads"], num_sweeps=LONG["num_sweeps"],
                                                     rounds=LONG["rounds"]))
    for r, p, bqm, (k, binfo), (k_l, _), j in zip(rows, probs, bqms, res, long_res, range(n)):
        r["energy"]["batch"], r["time_s"]["batch"] = float(p.energy(k)), s_b / n
        r["info"]["batch"] = {x: binfo.get(x) for x in ("stage", "energy_classical", "classical_start",
                                                         "energy_anneal_raw", "anneal_improved_rounds", "rounds_run")}
        r["info"]["batch"]["batch_rows"] = n
        (k_t, s_t) = timed(lambda: coordinate_descent(
            p, _tabu_levels(p, bqm, grid, seeds[j] + 1, LONG["tabu_x"] * r["peer_time_s"], _spins_of(k_l, grid)))[0])
        e_long = min(float(p.energy(k_l)), float(p.energy(k_t)))
        b, s_bd = timed(lambda: box_lower_bound(p))
        e, tm, peer = r["energy"], r["time_s"], r["peer_time_s"]
        cands = dict(e, long=e_long)
        by = min(cands, key=cands.get)
        e_best = cands[by]
        tol = 1e-12 * max(1.0, abs(e["cd"]))
        r.update({"long_settings": dict(LONG), "energy_long": e_long, "time_long_s": s_l / n + s_t, "energy_best_known": e_best, "best_known_by": by,
                  "bound": {**b, "time_s": s_bd}, "excess": {m: (x - e_best) / e_best for m, x in e.items()},
                  "bound_gap": (e_best - b["lower_bound"]) / e_best,
                  "strictly_below_cd": {m: bool(e[m] < e["cd"] - tol) for m in CANDIDATES},
                  "time_ratio": {m: tm[m] / peer for m in CANDIDATES}})
        r["target_met"] = {m: r["strictly_below_cd"][m] and r["time_ratio"][m] <= 10 for m in CANDIDATES}
    return rows


def _summ(rs: list[dict]) -> dict:
    g = {"rows": len(rs), "methods": {}, "targets": {}}
    for m in METHODS:
        ex = [r["excess"][m] for r in rs]
        g["methods"][m] = {"excess_median": float(np.median(ex)), "excess_worst": float(max(ex)),
                           "rows_at_best_known": int(sum(x <= 1e-12 for x in ex)),
                           "time_median_s": float(np.median([r["time_s"][m] for r in rs]))}
    for m in CANDIDATES:
        g["targets"][m] = {"rows_strictly_below_gptq_cd": int(sum(r["strictly_below_cd"][m] for r in rs)),
                           "rows_strictly_below_within_10x": int(sum(r["target_met"][m] for r in rs)),
                           "time_ratio_median": float(np.median([r["time_ratio"][m] for r in rs])),
                           "target_rows": int(np.ceil(0.9 * len(rs)))}
    for m in ("pipeline", "batch"):
        st = [r["info"][m]["stage"] for r in rs]
        g[f"{m}_stages"] = {s: st.count(s) for s in ("classical", "anneal", "polish")}
    gaps = [r["bound_gap"] for r in rs]
    g["bound_gap"] = {"median": float(np.median(gaps)), "worst": float(max(gaps))}
    by: dict[str, int] = {}
    for r in rs:
        by[r["best_known_by"]] = by.get(r["best_known_by"], 0) + 1
    g["best_known_by"] = by
    g["long_time_ratio_median"] = float(np.median([r["time_long_s"] / r["peer_time_s"] for r in rs]))
    g["peer_time_median_s"] = float(np.median([r["peer_time_s"] for r in rs]))
    encs = [(r["info"]["encodings"], r) for r in rs if "encodings" in r["info"]]
    if encs:
        names = list(encs[0][0])
        g["encodings"] = {n: {"excess_median": float(np.median([(x[n]["energy"] - r["energy_best_known"])
                                                               / r["energy_best_known"] for x, r in encs])),
                              "time_median_s": float(np.median([x[n]["time_s"] for x, _ in encs])),
                              "rows_lower": int(sum(x[n]["energy"] < min(x[o]["energy"] for o in names if o != n) - 1e-15
                                                    for x, _ in encs))}
                          for n in names}
        g["encodings"]["rows"] = len(encs)
    return g


def summarise(rows: list[dict]) -> dict:
    """Per grid (all datasets together) and per (dataset, grid): excess median/worst, targets, stages, bound."""
    out = {}
    for grid in ("binary", "ternary"):
        rs = [r for r in rows if r["grid"] == grid]
        if not rs:
            continue
        out[grid] = _summ(rs)
        out[grid]["by_dataset"] = {ds: _summ([r for r in rs if r.get("dataset") == ds])
                                   for ds in dict.fromkeys(r.get("dataset") for r in rs)}
    return out


def render(rec: dict) -> str:
    a = rec["argv"]
    lines = ["# bench_spins: binary and ternary rows, every method on the same objective", "",
             f"rows: {a['rows']} per dataset and grid: {', '.join(rec['datasets'])} (digits / realistic: class rows of the "
             "fp32 heads of the heads runs — digits results/quantize/heads/digits.pt, realistic 50,000 × 512 × 100 "
             "results/spins/heads/realistic-50k.pt; network: (row, group-of-64) problems of a random-init ResNet-18 "
             f"layer2.0.conv2, 64 digits calibration images, spread over the layer); seed {a['seed']}; load average start "
             f"{tuple(round(x, 2) for x in rec['loadavg_start'])}, end {tuple(round(x, 2) for x in rec['loadavg_end'])} "
             f"(2 shared cores); wall {rec['wall_time_s']:.0f} s",
             f"settings: pipeline (neal) {HOT}; batch (batch-anneal, all rows of a dataset and grid in one batch, CPU "
             f"time split evenly) {BATCH}; best-known run (batch-anneal, then tabu from it + CD) {LONG}; ternary "
             f"windows: {TERNARY_ENCODING}",
             *(["merged from: " + "; ".join(f"{m['file']} (datasets {m['argv'].get('datasets')}, grids {m['argv'].get('grids')}, "
                                              f"best-known run {m['settings']['long']}, complete {m['complete']}, wall "
                                              f"{m['wall_time_s']:.0f} s)" for m in a["merged"])] if a.get("merged") else []),
             "Times are CPU seconds of the benchmark process (one thread), not wall clock. E includes L0 (heads: the "
             "predicted loss of the head with that row changed); α = the scale of the cd ↔ α alternation on the row; "
             "excess = (E − E*)/E*, E* the best known; bound gap = (E* − LB)/E* with LB the certified box/eigenvalue "
             "lower bound. Target: the candidate strictly below gptq+cd within 10× their time on ≥ 90 % of rows.", ""]
    for grid, gg in rec["summary"].items():
        for title, g in [(f"{grid}, all datasets", gg)] + [(f"{grid}, {ds}", v) for ds, v in gg["by_dataset"].items()]:
            lines += [f"## {title} ({g['rows']} rows; gptq+cd median {g['peer_time_median_s']:.2f} s)", "",
                      "| method | excess median | excess worst | rows at best known | time median (s) |",
                      "|---|---|---|---|---|"]
            for m, v in g["methods"].items():
                lines.append(f"| {m} | {v['excess_median']:.3e} | {v['excess_worst']:.3e} | {v['rows_at_best_known']}/{g['rows']} "
                             f"| {v['time_median_s']:.3f} |")
            lines += ["", "| candidate | strictly below gptq+cd | ... within 10× their time (target ≥ 90 %) | median time ratio |",
                      "|---|---|---|---|"]
            for m, v in g["targets"].items():
                ok = "met" if v["rows_strictly_below_within_10x"] >= v["target_rows"] else "not met"
                lines.append(f"| {m} | {v['rows_strictly_below_gptq_cd']}/{g['rows']} | {v['rows_strictly_below_within_10x']}"
                             f"/{g['rows']} ({ok}) | {v['time_ratio_median']:.1f} |")
            lines += [""] + [f"{m} stage per answer (classical/anneal/polish): {g[m + '_stages']['classical']}/"
                             f"{g[m + '_stages']['anneal']}/{g[m + '_stages']['polish']}" for m in ("pipeline", "batch")]
            lines += [f"certified lower bound: (E* − LB)/E* median {g['bound_gap']['median']:.3e}, worst "
                      f"{g['bound_gap']['worst']:.3e}",
                      "best known found by: " + ", ".join(f"{k} {v}" for k, v in sorted(g["best_known_by"].items()))
                      + f" (long run: median {g['long_time_ratio_median']:.0f}× gptq+cd's time)"]
            if "encodings" in g:
                enc = g["encodings"]
                lines.append(f"ternary encodings (neal pipeline, {enc['rows']} rows): " + "; ".join(
                    f"{n}: excess median {v['excess_median']:.3e}, time median {v['time_median_s']:.2f} s, strictly "
                    f"lower on {v['rows_lower']} rows" for n, v in enc.items() if n != "rows"))
            lines.append("")
    lines += ["## Per row (excess; * = strictly below gptq+cd; stage: c classical, a anneal, p polish)", "",
              "| dataset | row | grid | α | rtn | gptq | cd | tabu | pipeline | batch | gptq+cd (s) | pipeline (s) "
              "| batch (s) | E* | LB gap |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        def cell(m):
            star = "*" if r["strictly_below_cd"].get(m) else ""
            st = f" ({r['info'][m]['stage'][0]})" if m in ("pipeline", "batch") else ""
            return f"{r['excess'][m]:.2e}{star}{st}"
        lines.append(f"| {r['dataset']} | {r['row']} | {r['grid']} | {r['alpha']:.4g} | " + " | ".join(cell(m) for m in METHODS)
                     + f" | {r['peer_time_s']:.2f} | {r['time_s']['pipeline']:.2f} | {r['time_s']['batch']:.2f} "
                     f"| {r['energy_best_known']:.6g} | {r['bound_gap']:.2e} |")
    return "\n".join(lines) + "\n"


HEAD_FILES = {"digits": ROOT / "results" / "quantize" / "heads" / "digits.pt",
              "realistic": ROOT / "results" / "spins" / "heads" / "realistic-50k.pt"}
HEAD_DATA = {"digits": "digits (FeatureConfig(): 1,437 train / 360 test, D = 512, 10 classes)",
             "realistic": "realistic_features(n_train=50000, n_test=10000, dim=512, num_classes=100, seed=0)"}


def head_data(dataset: str):
    """(train, test, fp32 head (float64)) of a heads run: digits with the recorded quantize head; the
    realistic set at full size (50,000 train) with its L2 reference head (results/spins/heads/realistic-50k.json:
    ``reference_head(train, dtype="float32")``, L2 chosen on a held-out fifth)."""
    from qubo_nn.io.heads import load_head_file

    if dataset == "digits":
        from qubo_nn.data.features import FeatureConfig, get_features

        fr = get_features(FeatureConfig(dataset="digits", device="cpu"))
        tr, te = fr.train, fr.test
    else:
        from qubo_nn.data.featureset import realistic_features

        tr, te = realistic_features(n_train=50_000, n_test=10_000, dim=512, num_classes=100, seed=0)
    return tr, te, load_head_file(HEAD_FILES[dataset]).to("cpu", torch.float64)


def run_heads(a) -> int:
    """``--heads``: quantize the fp32 head of ``--dataset`` on the binary and ternary grids with every method.

    rtn, gptq-natural, gptq and cd do not depend on the seed: they run once per grid
    (``spin_head_rows``, the per-row tasks of ``quantize_head``); ``qubo`` (the batched annealing stage,
    ``anneal_spin_rows``: batch-anneal, ``--sweeps`` sweeps × 4 chains, from cd's codes and α) runs for
    seeds 0..``--seeds``−1 on the same classical answers, and so does the QAT reference
    (``train_discrete(method="ste")``: STE from the fp32 head, lr and epochs tuned on a held-out fifth,
    (α, b) refit; ``--qat-seeds`` of them). Every head is W = diag(α)·codes with the fp32 bias (qubo, rtn …
    cd: no bias refit, as quantize); test accuracy and loss from ``metrics``. Writes
    results/spins/heads_<dataset>.{json,md,png} after every seed."""
    from qubo_nn.core.head import Head
    from qubo_nn.curvature.head_ce import HeadCE
    from qubo_nn.workflows.head_quantize import QuantizeConfig, metrics
    from qubo_nn.workflows.spin_quantize import spin_head_rows

    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()
    tr, te, head = head_data(a.dataset)
    fp32 = metrics(head, tr, te)
    print("fp32", fp32, f"{time.perf_counter() - t0:.0f} s", flush=True)
    methods = ["rtn", "gptq-natural", "gptq", "cd", "qubo"]
    runs, classical_info = [], {}
    grids = a.grids.split(",")
    src = HeadCE(head, tr, 0.0, "cpu", "float64", 4096, None, 0)

    def point(codes, alpha, b):
        qh = Head((alpha[:, None] * codes).to(torch.float64), b.clone())
        return metrics(qh, tr, te)

    def energy(E):
        return float(sum(E) - (len(E) - 1) * src.loss)

    cfgs, classical, base = {}, {}, {}
    for grid in grids:
        cfgs[grid] = QuantizeConfig(grid=grid, method="qubo", seed=0, device="cpu", dtype="float64",
                                    sampler_params={"num_sweeps": a.sweeps})
        tc = time.perf_counter()
        timings: dict = {}
        classical[grid] = cl = spin_head_rows(src, cfgs[grid], methods[:-1], {}, timings, keep_rows=True)
        classical_info[grid] = {"wall_s": time.perf_counter() - tc, "hessian_s": timings.get("hessian_s"),
                                "method_wall_s": cl["wall"],
                                "alpha_iterations_median": {m: float(np.median(v)) for m, v in cl["iterations"].items()}}
        base[grid] = {m: {**point(cl["codes"][m], cl["scales"][m], head.b), "energy": energy(cl["energies"][m]),
                          "wall_time_s": cl["wall"][m]} for m in methods[:-1]}
        print(grid, "classical", f"{classical_info[grid]['wall_s']:.0f} s",
              {m: (round(v["test_acc"], 2), round(v["test_loss"], 4)) for m, v in base[grid].items()}, flush=True)
    for seed in range(a.seeds):           # seeds outside grids: an interrupted run has both grids' first seeds
        for grid in grids:
            cfg = cfgs[grid]
            cfg.seed = seed
            params = {"num_reads": cfg.num_reads, "num_sweeps": a.sweeps}
            ts = time.perf_counter()
            res = spin_head_rows(src, cfg, methods, params, {}, classical=classical[grid])
            q = {**point(res["codes"]["qubo"], res["scales"]["qubo"], head.b), "energy": energy(res["energies"]["qubo"]),
                 "wall_time_s": res["wall"]["qubo"], "stage_wall_time_s": time.perf_counter() - ts,
                 **{k: res["qubo_info"][k] for k in ("rows_improved", "rows_anneal_stage", "sampler_wall_time_s")}}
            run = {"grid": grid, "seed": seed, "methods": {**base[grid], "qubo": q}}
            if seed < a.qat_seeds:
                run["methods"]["qat-ste"] = qat(head, tr, te, grid, seed, a)
            runs.append(run)
            print(grid, seed, {m: (round(v["test_acc"], 2), round(v["test_loss"], 4), round(v["wall_time_s"], 1))
                               for m, v in run["methods"].items()}, flush=True)
            _write_heads(a, runs, fp32, classical_info, t0, load0)
    return 0


def merge_heads(a) -> int:
    """``--heads --merge``: one record of the per-grid runs (``--grids binary`` and ``--grids ternary`` run as two
    processes) from results/spins/heads_<dataset>_<grid>.json."""
    import json

    out = ROOT / "results" / "spins"
    recs = [json.loads((out / f"heads_{a.dataset}_{g}.json").read_text()) for g in ("binary", "ternary")
            if (out / f"heads_{a.dataset}_{g}.json").exists()]
    if not recs:
        raise SystemExit(f"no per-grid records results/spins/heads_{a.dataset}_<grid>.json to merge "
                         "(a run of both grids writes heads_<dataset>.* itself)")
    a.merge_commands = [r["command"] for r in recs]
    runs = [run for r in recs for run in r["runs"]]
    for run in runs:                        # JSON holds NaN (the QAT head's energy) as null
        for v in run["methods"].values():
            for k in ("test_acc", "test_loss", "train_loss", "energy", "wall_time_s"):
                v[k] = float("nan") if v.get(k) is None else v[k]
    classical = {g: v for r in recs for g, v in r["classical"].items()}
    t0 = time.perf_counter() - max(r["wall_time_s"] for r in recs)
    _write_heads(a, runs, recs[0]["fp32"], classical, t0, tuple(recs[0]["loadavg_start"]))
    return 0


def qat(head, tr, te, grid, seed, a) -> dict:
    """The QAT reference: ``train_discrete(method="ste")`` (qubo_nn.workflows.train_discrete), its
    final test accuracy (%, its record holds a fraction) and loss (its (α, b) refit included)."""
    from qubo_nn.workflows.train_discrete import DiscreteConfig, train_discrete

    t0 = time.perf_counter()
    cfg = DiscreteConfig(grid=grid, method="ste", seed=seed, device="cpu", ste_epochs=a.ste_epochs,
                         ste_lrs=tuple(float(x) for x in a.ste_lrs.split(",")))
    _, rec = train_discrete(head.to("cpu", torch.float32), tr, te, cfg)
    f = rec["final"]
    return {"test_acc": 100.0 * f["test_acc"], "test_loss": f["test_loss"], "train_loss": f["train_loss"],
            "energy": float("nan"), "wall_time_s": time.perf_counter() - t0,
            "ste": {k: rec["info"]["ste"][k] for k in ("lr", "epochs", "val_loss")}, "config": cfg.to_dict()}


def _write_heads(a, runs, fp32, classical_info, t0, load0) -> None:
    table = {}
    for grid in ("binary", "ternary"):
        rs = [r for r in runs if r["grid"] == grid]
        if not rs:
            continue
        names = list(dict.fromkeys(m for r in rs for m in r["methods"]))
        table[grid] = {}
        for m in names:
            vals = [r["methods"][m] for r in rs if m in r["methods"]]
            table[grid][m] = {k: [float(np.mean([v[k] for v in vals])), float(np.std([v[k] for v in vals]))]
                              for k in ("test_acc", "test_loss", "train_loss", "energy", "wall_time_s")}
            table[grid][m]["seeds"] = len(vals)
        table[grid]["qubo"]["rows_improved_total"] = int(sum(r["methods"]["qubo"]["rows_improved"] for r in rs))
        table[grid]["qubo"]["rows_anneal_stage_total"] = int(sum(r["methods"]["qubo"].get("rows_anneal_stage", 0)
                                                                 for r in rs))
        # identical qubo answers for every seed: the annealing chains changed nothing (the gain is the polish)
        table[grid]["qubo"]["seeds_distinct_energies"] = len({round(r["methods"]["qubo"]["energy"], 12) for r in rs})
        table[grid]["qubo"]["rows_total"] = int(len(rs) * (10 if a.dataset == "digits" else 100))
        accs = {m: [r["methods"][m]["test_acc"] for r in rs] for m in ("qubo", "cd")}
        table[grid]["qubo_minus_cd_points"] = [float(np.mean(np.subtract(accs["qubo"], accs["cd"]))),
                                               float(np.min(np.subtract(accs["qubo"], accs["cd"])))]
    cmd = (f"python benchmarks/bench_spins.py --heads --dataset {a.dataset} --grids {a.grids} --seeds {a.seeds} "
           f"--qat-seeds {a.qat_seeds} --sweeps {a.sweeps} --ste-epochs {a.ste_epochs} --ste-lrs {a.ste_lrs}")
    if a.merge:
        cmd = "; ".join(a.merge_commands)
    rec = {"benchmark": "spins-heads", "command": cmd, "dataset": HEAD_DATA[a.dataset],
           "head_file": str(HEAD_FILES[a.dataset].relative_to(ROOT)), "fp32": fp32, "classical": classical_info,
           "runs": runs, "table": table, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "wall_time_s": time.perf_counter() - t0, "machine": machine_info("cpu"), "versions": versions()}
    out = ROOT / "results" / "spins"
    out.mkdir(parents=True, exist_ok=True)
    name = f"heads_{a.dataset}" + ("" if set(a.grids.split(",")) == {"binary", "ternary"} or a.merge else f"_{a.grids}")
    atomic_write_json(out / f"{name}.json", to_jsonable(rec))
    done = {g: sum(r["grid"] == g for r in runs) for g in ("binary", "ternary")}
    lines = [f"# Binary and ternary {a.dataset} heads: every method, mean ± std over seeds", "",
             f"command: `{cmd}` (OPENBLAS_NUM_THREADS=1, torch 1 thread); data: {HEAD_DATA[a.dataset]}; fp32 head "
             f"({rec['head_file']}): test {fp32['test_acc']:.2f} %, loss {fp32['test_loss']:.4f}. Seeds run: "
             f"{done['binary']} binary, {done['ternary']} ternary of {a.seeds} each. rtn … cd do not depend on the seed "
             "(run once per grid: std 0); qubo = batch-anneal stage from cd's answer, one seed each; qat-ste = "
             "train_discrete(method='ste') (lr/epochs tuned on a held-out fifth, (α, b) refit). Heads keep the fp32 "
             f"bias except qat-ste. Load average {tuple(round(x, 1) for x in load0)} → "
             f"{tuple(round(x, 1) for x in rec['loadavg_end'])} (2 shared cores): times are noisy. Wall "
             f"{rec['wall_time_s']:.0f} s.", "",
             "| grid | method | test acc (%) | test loss | train loss | energy (nats) | time (s) | seeds |",
             "|---|---|---|---|---|---|---|---|",
             f"| — | fp32 | {fp32['test_acc']:.2f} | {fp32['test_loss']:.4f} | {fp32['train_loss']:.4f} | | | |"]
    for grid, t in table.items():
        for m, v in t.items():
            if not isinstance(v, dict):
                continue
            e = "" if not np.isfinite(v["energy"][0]) else f"{v['energy'][0]:.6f}"
            lines.append(f"| {grid} | {m} | {v['test_acc'][0]:.2f} ± {v['test_acc'][1]:.2f} | {v['test_loss'][0]:.4f} "
                         f"± {v['test_loss'][1]:.4f} | {v['train_loss'][0]:.4f} | {e} | {v['wall_time_s'][0]:.1f} | {v['seeds']} |")
    lines.append("")
    for grid, t in table.items():
        d = t["qubo_minus_cd_points"]
        lines.append(f"- {grid}: qubo − cd test accuracy {d[0]:+.2f} points mean, {d[1]:+.2f} worst seed (target on "
                     f"realistic: ≥ +1); rows where the qubo stage lowered the cd energy: {t['qubo']['rows_improved_total']} "
                     f"of {t['qubo']['rows_total']}, of them by a raw annealed state (stage 'anneal'): "
                     f"{t['qubo'].get('rows_anneal_stage_total', 'n/a')}, the rest by its CD polish and CD ↔ α "
                     f"alternation at the refit α; distinct qubo energies over the seeds: "
                     f"{t['qubo'].get('seeds_distinct_energies', 'n/a')}; classical methods "
                     f"{classical_info[grid]['wall_s']:.0f} s once.")
    with atomic_path(out / f"{name}.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    _plot_heads(table, fp32, out / f"{name}.png", a.dataset)
    print("\n".join(lines), flush=True)


def _plot_heads(table, fp32, path, dataset) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 3.8), squeeze=False)
    for ax, (grid, t) in zip(axes[0], table.items()):
        ms = [m for m, v in t.items() if isinstance(v, dict) and m != "rtn"]
        y = [t[m]["test_acc"][0] for m in ms]
        err = [t[m]["test_acc"][1] for m in ms]
        ax.bar(range(len(ms)), y, yerr=err, capsize=4, color=["C0" if m != "qubo" else "C3" for m in ms])
        ax.axhline(fp32["test_acc"], color="k", ls="--", lw=1, label=f"fp32 {fp32['test_acc']:.2f} %")
        ax.set_xticks(range(len(ms)), ms, rotation=30)
        lo = min(v - e for v, e in zip(y, err))
        ax.set_ylim(max(0.0, lo - 3), max(fp32["test_acc"], max(y)) + 1.5)
        ax.set_title(f"{dataset}, {grid} (rtn: {t['rtn']['test_acc'][0]:.1f} %)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10, help="rows per dataset and grid")
    ap.add_argument("--datasets", default="digits,realistic,network")
    ap.add_argument("--long-sweeps", type=int, default=LONG["num_sweeps"], help="best-known run: sweeps per round")
    ap.add_argument("--long-rounds", type=int, default=LONG["rounds"], help="best-known run: rounds")
    ap.add_argument("--merge-rows", default="", help="comma-separated bench_spins.json files: one record of all their rows")
    ap.add_argument("--encodings", action="store_true", help="also the domain-wall ternary pipeline on each group's first row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grids", default="binary,ternary")
    ap.add_argument("--out", default="results")
    ap.add_argument("--quick", action="store_true", help="digits only, 1 row; writes *_quick")
    ap.add_argument("--heads", action="store_true", help="the heads comparison (results/spins/heads_<dataset>.*)")
    ap.add_argument("--dataset", choices=sorted(HEAD_FILES), default="digits", help="--heads: which head")
    ap.add_argument("--seeds", type=int, default=5, help="--heads: annealing seeds")
    ap.add_argument("--merge", action="store_true", help="--heads: merge the per-grid records of --dataset")
    ap.add_argument("--qat-seeds", type=int, default=5, help="--heads: seeds of the QAT (STE) reference")
    ap.add_argument("--sweeps", type=int, default=100, help="--heads: batch-anneal sweeps per alternation")
    ap.add_argument("--ste-epochs", type=int, default=40, help="--heads: STE epochs (tuned on validation)")
    ap.add_argument("--ste-lrs", default="1e-4,3e-4,1e-3,3e-3", help="--heads: STE learning rates tried")
    a = ap.parse_args(argv)
    if a.heads:
        return merge_heads(a) if a.merge else run_heads(a)
    LONG["num_sweeps"], LONG["rounds"] = a.long_sweeps, a.long_rounds
    if a.merge_rows:
        import json

        recs = [json.loads(Path(f).read_text()) for f in a.merge_rows.split(",")]
        rows = [{"long_settings": rec["settings"]["long"], **r} for rec in recs for r in rec["rows"]]
        datasets = list(dict.fromkeys(d for rec in recs for d in rec["datasets"]))
        a.merged = [{"file": f, "argv": rec["argv"], "settings": rec["settings"], "complete": rec["complete"],
                     "wall_time_s": rec["wall_time_s"]} for f, rec in zip(a.merge_rows.split(","), recs)]
        t0 = time.perf_counter() - sum(rec["wall_time_s"] for rec in recs)
        # complete when the records together hold every (dataset, grid) pair with the same number of rows
        counts = {(r["dataset"], r["grid"]): 0 for r in rows}
        for r in rows:
            counts[r["dataset"], r["grid"]] += 1
        grids = {g for _, g in counts}
        covered = len(counts) == len(datasets) * len(grids) and len(set(counts.values())) == 1
        print(write(a, rows, datasets, t0, tuple(recs[0]["loadavg_start"]),
                    final=covered or all(rec["complete"] for rec in recs)))
        return 0
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows, datasets = [], []
    for ds in a.datasets.split(","):
        insts, meta = instances(ds, 1 if a.quick else a.rows)
        datasets.append(ds)
        for grid in a.grids.split(","):
            t1 = time.perf_counter()
            rs = run_group([x[:3] for x in insts], grid, a.seed, encodings=a.encodings)
            for r, x in zip(rs, insts):
                r.update(dataset=ds, row=x[3], source=meta)
                rows.append(r)
                print(f"{ds} row {x[3]} {grid}: " + " ".join(f"{m}={r['excess'][m]:.2e}/{r['time_s'][m]:.2f}s" for m in METHODS)
                      + f" best={r['best_known_by']} gap={r['bound_gap']:.2e} stages={r['info']['pipeline']['stage']}/"
                      f"{r['info']['batch']['stage']}", flush=True)
            print(f"{ds} {grid}: {len(rs)} rows in {time.perf_counter() - t1:.0f} s wall", flush=True)
            write(a, rows, datasets, t0, load0, final=False)     # a partial record after every (dataset, grid)
    print(write(a, rows, datasets, t0, load0, final=True))
    return 0


def write(a, rows, datasets, t0, load0, final: bool) -> str:
    """Write the record and its text (atomically); ``complete`` is False while rows are still running."""
    rec = {"benchmark": "spins", "argv": vars(a), "datasets": datasets, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "complete": final, "settings": {"pipeline": HOT, "batch": BATCH, "long": LONG, "ternary_encoding": TERNARY_ENCODING},
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "machine": machine_info("cpu"),
           "versions": versions(), "wall_time_s": time.perf_counter() - t0, "rows": rows}
    rec["summary"] = summarise(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_spins_quick" if a.quick else "bench_spins"
    atomic_write_json(out / f"{name}.json", to_jsonable(rec))
    text = render(rec)
    if not final:
        text = f"PARTIAL RECORD ({len(rows)} rows so far; the run was still going when this was written)\n\n" + text
    with atomic_path(out / f"{name}.txt") as tmp:
        Path(tmp).write_text(text)
    if final:
        _plot_rows(rows, out / f"{name}.png")
    return text


def _plot_rows(rows: list[dict], path: Path) -> None:
    """Excess (E − E*)/E* against time per row, one panel per grid, a marker per method (log-log; excess 0,
    i.e. at the best known, drawn at 1e-7)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = sorted({r["grid"] for r in rows})
    fig, axes = plt.subplots(1, len(grids), figsize=(6 * len(grids), 4.5), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        rs = [r for r in rows if r["grid"] == grid]
        for m, mk in zip(METHODS, "ov^sDP"):
            ax.scatter([max(r["time_s"][m], 1e-5) for r in rs], [max(r["excess"][m], 1e-7) for r in rs],
                       marker=mk, alpha=0.7, label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("CPU seconds per row")
        ax.set_ylabel("excess over the best known (E − E*)/E*  (1e-7 = at E*)")
        ax.set_title(f"{grid} rows ({len(rs)}: " + ", ".join(sorted({r['dataset'] for r in rs})) + ")")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
