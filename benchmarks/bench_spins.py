"""Binary and ternary head rows (issue 24): every method on the same spin-grid objective, against the best known.

Rows: class rows 0..rows−1 of the L2 reference heads (``train.reference_head``) on the digits features
(``features.get_features(FeatureConfig())``: digits through a random ResNet-18, 512-d, 10 classes) and on
the realistic synthetic features (``featureset.realistic_features``, 512-d, 100 classes, ``--n`` training
points: a reduced size, stated in the output). H̃ = the row's exact loss Hessian block + μI, μ = 0.01·mean
diag H (as ``quantize``), t the fp32 row (``curvature.head_ce.HeadCE.row_problem``). Each row becomes, for
grid ∈ {binary, ternary}, the fixed-scale problem (``core.spins.spin_problem``)

    E(c) = L0 + ½(α c − t)ᵀH̃(α c − t),   c ∈ {−1, +1}ᵐ (binary) or {−1, 0, +1}ᵐ (ternary),

with α the scale that quantize's ``cd`` alternation converges to on that row (codes ↔ closed-form
refit from the XNOR/TWN start; ``core.spins.alternate``): the α of the problem every method is then
asked to solve. Methods, all scored on this E:

- ``rtn`` (binary: sign; ternary: the nearest level, |t| > α/2), ``gptq`` (act-order), ``cd`` (single +
  pair flips from gptq; the peer, its time includes gptq's);
- ``tabu``: dwave-tabu on the spin BQM (``core.spins.spin_bqm``: binary one spin per weight, ternary
  two) from a random state, time limit = the row's gptq + cd time;
- ``pipeline``: ``solve_levels(p, "qubo")`` hot (neal's full β range, 4 reads × 1000 sweeps, ≤ 4 rounds,
  no new round after 6× gptq + cd; ternary windows in ``core.spins.TERNARY_ENCODING``) — the best classical
  start (best of 3 CDs), annealed windows, CD polish; ``stage`` says which stage produced the answer;
- ``long``: the best-known run: the same pipeline with 4 reads × 2000 sweeps, ≤ 4 rounds, seed + 1, no
  budget, then tabu from its answer for 10× gptq + cd.
- ``bound``: ``core.bounds.box_lower_bound`` (convex box relaxation with the eigenvalue diagonal shift on
  binary rows, certified by its first-order gap).

Best known E* = min over all methods and the long run. Reported per grid: (E − E*)/E* (E includes L0,
the loss at the fp32 head: the energy is the predicted loss) median and worst, the bound's gap
(E* − LB)/E*, time per row, rows where the pipeline (or tabu) is strictly below gptq + cd within 10×
their time, and the stage of each pipeline answer. ``--encodings``: the ternary pipeline with unary and
domain-wall windows on the first rows of each dataset (the choice of ``TERNARY_ENCODING``).

Usage: python benchmarks/bench_spins.py [--rows 5] [--n 4000] [--seed 0] [--out results] [--quick]
Writes results/bench_spins.json and .txt atomically (``--quick``: *_quick); records os.getloadavg().
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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
LONG = {"params": {"num_reads": 4, "num_sweeps": 2000}, "rounds": 4, "refine_span": None, "tabu_x": 10.0}
METHODS = ("rtn", "gptq", "cd", "tabu", "pipeline")
CANDIDATES = ("tabu", "pipeline")


def heads(n: int, quick: bool):
    from qubo_nn.data.featureset import realistic_features
    from qubo_nn.data.features import FeatureConfig, get_features
    from qubo_nn.train.sgd import reference_head

    fr = get_features(FeatureConfig(dataset="digits", device="cpu"))      # a generator: rows start early
    h, info = reference_head(fr.train, device="cpu")
    yield "digits", h, fr.train, info.get("l2")
    if not quick:
        tr, _ = realistic_features(n_train=n, n_test=1000, dim=512, num_classes=100, seed=0)
        h, info = reference_head(tr, device="cpu")
        yield "realistic", h, tr, info.get("l2")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


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
    k, s_ = timed(lambda: _tabu_levels(p, bqm, grid, seed, peer))
    put("tabu", k, s_)
    (k, pinfo), s_ = timed(lambda: solve_levels(p, "qubo", encoding=enc, levels=3, seed=seed,
                                                params=dict(HOT["params"]), rounds=HOT["rounds"],
                                                refine_span=HOT["refine_span"], time_budget_s=HOT["budget_x"] * peer))
    put("pipeline", k, s_)
    info["pipeline"] = {x: pinfo.get(x) for x in ("stage", "energy_classical", "classical_start", "energy_anneal_raw",
                                                   "anneal_improved_rounds", "rounds_run")}
    if encodings and grid == "ternary":
        other = "domain-wall" if enc == "unary" else "unary"
        (k, oinfo), s_ = timed(lambda: solve_levels(p, "qubo", encoding=other, levels=3, seed=seed,
                                                    params=dict(HOT["params"]), rounds=HOT["rounds"],
                                                    refine_span=HOT["refine_span"], time_budget_s=HOT["budget_x"] * peer))
        info["encodings"] = {enc: {"energy": e["pipeline"], "time_s": tm["pipeline"],
                                   "energy_anneal_raw": pinfo.get("energy_anneal_raw")},
                             other: {"energy": float(p.energy(k)), "time_s": s_,
                                     "energy_anneal_raw": oinfo.get("energy_anneal_raw")}}
    t0 = time.perf_counter()
    k_l, _ = solve_levels(p, "qubo", encoding=enc, levels=3, seed=seed + 1, params=dict(LONG["params"]),
                          rounds=LONG["rounds"], refine_span=LONG["refine_span"])
    k_t = _tabu_levels(p, bqm, grid, seed + 1, LONG["tabu_x"] * peer, _spins_of(k_l, grid))
    k_t = coordinate_descent(p, k_t)[0]
    e_long = min(float(p.energy(k_l)), float(p.energy(k_t)))
    t_long = time.perf_counter() - t0
    b, s_b = timed(lambda: box_lower_bound(p))
    cands = dict(e, long=e_long)
    by = min(cands, key=cands.get)
    e_best = cands[by]
    tol = 1e-12 * max(1.0, abs(e["cd"]))
    r = {"grid": grid, "alpha": alpha, "alpha_iterations": ainfo["iterations"], "alpha_time_s": s_alpha,
         "weights": p.m, "variables_ternary_bqm" if grid == "ternary" else "variables_bqm": bqm.num_variables,
         "energy": e, "time_s": tm, "info": info, "peer_time_s": peer, "energy_long": e_long, "time_long_s": t_long,
         "energy_best_known": e_best, "best_known_by": by, "bound": {**b, "time_s": s_b},
         "excess": {m: (x - e_best) / e_best for m, x in e.items()},
         "bound_gap": (e_best - b["lower_bound"]) / e_best,
         "strictly_below_cd": {m: bool(e[m] < e["cd"] - tol) for m in CANDIDATES},
         "time_ratio": {m: tm[m] / peer for m in CANDIDATES}}
    r["target_met"] = {m: r["strictly_below_cd"][m] and r["time_ratio"][m] <= 10 for m in CANDIDATES}
    return r


def summarise(rows: list[dict]) -> dict:
    out = {}
    for grid in ("binary", "ternary"):
        rs = [r for r in rows if r["grid"] == grid]
        if not rs:
            continue
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
        st = [r["info"]["pipeline"]["stage"] for r in rs]
        g["pipeline_stages"] = {s: st.count(s) for s in ("classical", "anneal", "polish")}
        gaps = [r["bound_gap"] for r in rs]
        g["bound_gap"] = {"median": float(np.median(gaps)), "worst": float(max(gaps))}
        by: dict[str, int] = {}
        for r in rs:
            by[r["best_known_by"]] = by.get(r["best_known_by"], 0) + 1
        g["best_known_by"] = by
        g["long_time_ratio_median"] = float(np.median([r["time_long_s"] / r["peer_time_s"] for r in rs]))
        encs = [r["info"]["encodings"] for r in rs if "encodings" in r["info"]]
        if encs:
            names = list(encs[0])
            g["encodings"] = {n: {"excess_median": float(np.median([(x[n]["energy"] - r["energy_best_known"])
                                                                   / r["energy_best_known"]
                                                                   for x, r in zip(encs, [r for r in rs if "encodings" in r["info"]])])),
                                  "time_median_s": float(np.median([x[n]["time_s"] for x in encs])),
                                  "rows_lower": int(sum(x[n]["energy"] < min(x[o]["energy"] for o in names if o != n) - 1e-15
                                                        for x in encs))}
                              for n in names}
            g["encodings"]["rows"] = len(encs)
        out[grid] = g
    return out


def render(rec: dict) -> str:
    a = rec["argv"]
    lines = ["# bench_spins: binary and ternary head rows, every method on the same objective", "",
             f"rows: {a['rows']} class rows per head of {', '.join(rec['datasets'])} (digits: 1,437 train images; "
             f"realistic synthetic features at a reduced size: --n {a['n']} training points, 512-d, 100 classes), "
             f"seed {a['seed']}; load average start {tuple(round(x, 2) for x in rec['loadavg_start'])}, end "
             f"{tuple(round(x, 2) for x in rec['loadavg_end'])} (2 cores shared by 8 helpers: times are noisy); "
             f"wall {rec['wall_time_s']:.0f} s",
             f"settings: pipeline {HOT}; best-known run {LONG}; ternary windows: {TERNARY_ENCODING}",
             "E includes L0 (E = predicted loss of the head with that row changed); α = the scale of quantize's cd "
             "alternation on the row; excess = (E − E*)/E* with E* the best known.", ""]
    for grid, g in rec["summary"].items():
        lines += [f"## {grid} ({g['rows']} rows)", "",
                  "| method | excess median | excess worst | rows at best known | time median (s) |", "|---|---|---|---|---|"]
        for m, v in g["methods"].items():
            lines.append(f"| {m} | {v['excess_median']:.3e} | {v['excess_worst']:.3e} | {v['rows_at_best_known']}/{g['rows']} "
                         f"| {v['time_median_s']:.3f} |")
        lines += ["", "| candidate | strictly below gptq+cd | ... within 10× their time (target ≥ 90 %) | median time ratio |",
                  "|---|---|---|---|"]
        for m, v in g["targets"].items():
            lines.append(f"| {m} | {v['rows_strictly_below_gptq_cd']}/{g['rows']} | {v['rows_strictly_below_within_10x']}/{g['rows']} "
                         f"| {v['time_ratio_median']:.1f} |")
        st = g["pipeline_stages"]
        lines += ["", f"pipeline stage per answer (classical/anneal/polish): {st['classical']}/{st['anneal']}/{st['polish']}",
                  f"certified lower bound: (E* − LB)/E* median {g['bound_gap']['median']:.3e}, worst {g['bound_gap']['worst']:.3e}",
                  "best known found by: " + ", ".join(f"{k} {v}" for k, v in sorted(g["best_known_by"].items()))
                  + f" (long run: median {g['long_time_ratio_median']:.0f}× gptq+cd's time)"]
        if "encodings" in g:
            enc = g["encodings"]
            lines.append(f"ternary encodings (pipeline, {enc['rows']} rows): " + "; ".join(
                f"{n}: excess median {v['excess_median']:.3e}, time median {v['time_median_s']:.2f} s, strictly lower on "
                f"{v['rows_lower']} rows" for n, v in enc.items() if n != "rows"))
        lines.append("")
    lines += ["## Per row (excess; * = strictly below gptq+cd)", "",
              "| dataset | row | grid | α | rtn | gptq | cd | tabu | pipeline (stage) | gptq+cd (s) | pipeline (s) | bound gap |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        def cell(m):
            star = "*" if r["strictly_below_cd"].get(m) else ""
            return f"{r['excess'][m]:.2e}{star}"
        lines.append(f"| {r['dataset']} | {r['row']} | {r['grid']} | {r['alpha']:.4g} | " + " | ".join(cell(m) for m in METHODS[:4])
                     + f" | {cell('pipeline')} ({r['info']['pipeline']['stage']}) | {r['peer_time_s']:.2f} "
                     f"| {r['time_s']['pipeline']:.2f} | {r['bound_gap']:.2e} |")
    return "\n".join(lines) + "\n"


def run_heads(a) -> int:
    """``--heads``: quantize the recorded digits fp32 head (``results/quantize/heads/digits.pt``) on the
    binary and ternary grids with every method (``quantize_head``, ``QuantizeConfig(grid=..., method="qubo",
    seed=s)`` with a short pipeline: 2 reads × 300 sweeps), seeds 0..``--seeds``−1 (a seed varies only
    the annealer: rtn/gptq/cd are deterministic on digits); writes results/spins/heads_digits.{json,md}."""
    from qubo_nn.data.features import FeatureConfig, get_features
    from qubo_nn.io.heads import load_head_file
    from qubo_nn.workflows.head_quantize import QuantizeConfig, metrics, quantize_head

    t0, load0 = time.perf_counter(), os.getloadavg()
    fr = get_features(FeatureConfig(dataset="digits", device="cpu"))
    head = load_head_file(ROOT / "results" / "quantize" / "heads" / "digits.pt").to("cpu", torch.float64)
    fp32 = metrics(head, fr.train, fr.test)
    runs = []
    for seed in range(a.seeds):
        for grid in ("binary", "ternary"):
            cfg = QuantizeConfig(grid=grid, method="qubo", seed=seed, device="cpu", dtype="float64", num_reads=2,
                                 sampler_params={"num_sweeps": 300})
            res = quantize_head(head, fr.train, fr.test, cfg)
            rec = res.record()
            runs.append({"grid": grid, "seed": seed, "config": rec["config"],
                         "methods": {m: {k: v[k] for k in ("test_acc", "test_loss", "train_acc", "train_loss", "energy",
                                                           "wall_time_s")}
                                     | ({k: v[k] for k in ("rows_improved", "rows_anneal_stage")} if m == "qubo" else {})
                                     for m, v in rec["methods"].items()}})
            print(grid, seed, {m: round(v["test_acc"], 2) for m, v in runs[-1]["methods"].items()}, flush=True)
            _write_heads(a, runs, fp32, t0, load0)
    return 0


def _write_heads(a, runs, fp32, t0, load0) -> None:
    table = {}
    for grid in ("binary", "ternary"):
        rs = [r for r in runs if r["grid"] == grid]
        if not rs:
            continue
        table[grid] = {m: {k: [float(np.mean([r["methods"][m][k] for r in rs])), float(np.std([r["methods"][m][k] for r in rs]))]
                           for k in ("test_acc", "test_loss", "train_loss", "energy", "wall_time_s")}
                       for m in rs[0]["methods"]}
        table[grid]["qubo"]["rows_improved_total"] = int(sum(r["methods"]["qubo"]["rows_improved"] for r in rs))
    rec = {"benchmark": "spins-heads", "command": "python benchmarks/bench_spins.py --heads --seeds %d" % a.seeds,
           "dataset": "digits (FeatureConfig(): 1,437 train / 360 test, D = 512, 10 classes)",
           "fp32": fp32, "runs": runs, "table": table, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "wall_time_s": time.perf_counter() - t0, "machine": machine_info("cpu"), "versions": versions()}
    out = ROOT / "results" / "spins"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "heads_digits.json", to_jsonable(rec))
    done = {g: sum(r["grid"] == g for r in runs) for g in ("binary", "ternary")}
    lines = ["# Binary and ternary digits heads (quantize_head, every method; mean ± std over the seeds run: "
             f"{done['binary']} binary, {done['ternary']} ternary of {a.seeds} each)", "",
             f"command: `{rec['command']}`; fp32 head (results/quantize/heads/digits.pt): test {fp32['test_acc']:.2f} %, "
             f"loss {fp32['test_loss']:.4f}; a seed varies only the annealer; load average "
             f"{tuple(round(x, 1) for x in load0)} (2 shared cores); no QAT reference in this run.", "",
             "| grid | method | test acc (%) | test loss | train loss | energy (nats) | time (s) |", "|---|---|---|---|---|---|---|"]
    for grid, t in table.items():
        for m, v in t.items():
            lines.append(f"| {grid} | {m} | {v['test_acc'][0]:.2f} ± {v['test_acc'][1]:.2f} | {v['test_loss'][0]:.4f} "
                         f"| {v['train_loss'][0]:.4f} | {v['energy'][0]:.4f} | {v['wall_time_s'][0]:.1f} |")
        lines.append(f"| {grid} | qubo rows improved by annealing (all seeds) | {t['qubo']['rows_improved_total']} of "
                     f"{10 * done[grid]} | | | | |")
    with atomic_path(out / "heads_digits.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2, help="class rows per head")
    ap.add_argument("--n", type=int, default=2000, help="realistic synthetic training points (reduced size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grids", default="binary,ternary")
    ap.add_argument("--encoding-rows", type=int, default=1, help="rows per head where both ternary encodings run")
    ap.add_argument("--out", default="results")
    ap.add_argument("--quick", action="store_true", help="digits only, 1 row; writes *_quick")
    ap.add_argument("--heads", action="store_true", help="the digits heads comparison (results/spins/)")
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args(argv)
    if a.heads:
        return run_heads(a)
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows, datasets = [], []
    for ds, head, tr, l2 in heads(a.n, a.quick):
        datasets.append(ds)
        src = HeadCE(head.to("cpu", torch.float64), tr, 0.0, "cpu", "float64", 4096, None, 0)
        for c in range(min(1 if a.quick else a.rows, head.num_classes)):
            p0 = src.row_problem(c, 1.0, -1, 1, 0.01)
            for grid in a.grids.split(","):
                r = run_row(p0.H, p0.target, p0.const, grid, a.seed, encodings=c < a.encoding_rows)
                r.update(dataset=ds, row=c, head_l2=l2)
                rows.append(r)
                write(a, rows, datasets, t0, load0, final=False)     # a partial record after every row
                print(f"{ds} row {c} {grid}: " + " ".join(f"{m}={r['excess'][m]:.2e}/{r['time_s'][m]:.2f}s" for m in METHODS)
                      + f" best={r['best_known_by']} gap={r['bound_gap']:.2e} stage={r['info']['pipeline']['stage']}",
                      flush=True)
    print(write(a, rows, datasets, t0, load0, final=True))
    return 0


def write(a, rows, datasets, t0, load0, final: bool) -> str:
    """Write the record and its text (atomically); ``complete`` is False while rows are still running."""
    rec = {"benchmark": "spins", "argv": vars(a), "datasets": datasets, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "complete": final, "settings": {"pipeline": HOT, "long": LONG, "ternary_encoding": TERNARY_ENCODING},
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
    return text


if __name__ == "__main__":
    raise SystemExit(main())
