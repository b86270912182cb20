"""Samplers and classical roundings on quantize-style class-row problems, against the best known.

Problems: class rows of two fp32 heads, each row rounded to a signed b-bit grid (b = 1, 2, 4;
per-row MSE scale, :func:`qubo_nn.workflows.head_quantize.grid_scale`), objective GPTQ's E(k) = ½(s·k − w)ᵀ
(H + μI)(s·k − w) with H the row's exact loss Hessian block and μ = 0.01·mean diag H (as
``quantize``). Heads: ``train.reference_head`` (L2 by held-out loss) on the realistic synthetic
features (``featureset.realistic_features``, 512-d, 100 classes; ``--n`` training points) and on
the digits features (``features.get_features``, digits with a random ResNet-18, 512-d, 10 classes).

Each row is one :class:`levels.IntegerProblem`, and one BQM per encoding (binary: b variables per
weight; unary: 2^b − 1) built by ``qubo.build_bqm`` over the whole grid, with its
``qubo.integer_form``. Every method is scored on E(k) of the same problem:

- bit-space samplers on the binary BQM: neal (1 read, 1000 sweeps, random start), tabu
  (``time_limit`` = neal's time), steepest (from the RTN bits), the ``decompose`` workflow
  (dwave-hybrid, started at RTN, ``max_time`` 1 s), and neal on the unary BQM (1 and 2 bits; 4 bits
  would be 7,665 variables);
- level-space: ``gptq`` (act-order and natural), ``cd`` (from GPTQ act-order), the ``pipeline``
  (2 reads × 300 sweeps per round, ≤ 3 rounds);
- best known: the lowest E over every method above and a longer pipeline (2 reads × 1000 sweeps,
  4 rounds) started by the same code (kept per row in the results file).

Added groups (``--only GROUP,...`` runs just these on the same rows and merges them into the
existing results file, as a separate run with its own load and wall time; the best known and every
fraction are recomputed with the new energies):

- ``sb``: simulated bifurcation on the binary BQM (32 agents, discrete mode, ``time_limit`` = the
  row's neal time, at least 0.5 s; polished by steepest descent; CPU: no GPU on this machine);
- ``domain-wall``: neal on the domain-wall BQM (1 and 2 bits, as neal-unary) and the pipeline with
  domain-wall windows (``encoding="domain-wall"``, otherwise the pipeline's settings), all bits;
- ``bound``: a certified lower bound: the minimum of the convex box relaxation (k real in
  [kmin, kmax], L-BFGS-B) minus its first-order optimality gap (valid for any approximate
  minimiser by convexity); when it equals the best known, the best known is the optimum;
- ``lns``: large-neighbourhood search with exact sub-solves started from the pipeline's classical
  start (best of CD from GPTQ act-order / natural / RTN): a random variable and 15 of its 30 most
  coupled ones (|H_ij|/√(H_ii H_jj)), the rest fixed, solved exactly (enumeration up to 2^16
  states, else ``levels.sphere_decode``); budget 10× the row's gptq + cd time measured in the same run
  (gptq and cd are re-timed there, and their energies checked against the stored run);
- ``pipeline-lns``: a candidate change of the pipeline: the pipeline as above, then the LNS from its
  answer for the rest of the same budget (9× gptq + cd of the same run, the pipeline's time included).

Score: the fraction of the best-known decrease from round-to-nearest reached,
(E_rtn − E)/(E_rtn − E_best) (1 = the best known; rows where RTN is already the best known count 1),
and wall time. Targets (issue 10): pipeline ≥ 99.9 % on 2-/4-bit rows and ≥ 99 % on 1-bit rows;
strictly below gptq act-order + cd on ≥ 90 % of 1- and 2-bit rows within 10× their time.

Usage: python benchmarks/bench_samplers.py [--rows 5] [--bits 1,2,4] [--n 10000] [--out results] [--quick]
       python benchmarks/bench_samplers.py --only sb,domain-wall,bound,lns   (add to the recorded run)
Writes results/bench_samplers.json and .txt (atomically); records os.getloadavg().
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qubo_nn import samplers as S
from qubo_nn.core.encoding import quantize_encoding
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.core.model import LocalModel
from qubo_nn.workflows.head_quantize import grid_scale, qrange
from qubo_nn.core.bqm import build_bqm
from qubo_nn.core.bqm import integer_form
from qubo_nn.runtime import atomic_write_json, machine_info
from qubo_nn.core.kernels import rtn
from qubo_nn.core.bounds import box_lower_bound as core_box_lower_bound
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.suite.reference import conditional, exact_sub, lns_exact  # noqa: F401 (used here and by the tests)

METHODS = ("neal", "neal-unary", "tabu", "steepest", "decompose", "gptq", "gptq-natural", "cd", "pipeline")
GROUPS = {"sb": ("sb",), "domain-wall": ("neal-domain-wall", "pipeline-domain-wall"), "bound": (), "lns": ("lns",),
          "pipeline-lns": ("pipeline-lns",)}
ALL_METHODS = METHODS + tuple(m for ms in GROUPS.values() for m in ms)
#: candidates for the issue's targets (the default pipeline, its domain-wall variant, and the LNS stage)
CANDIDATES = ("pipeline", "pipeline-domain-wall", "lns", "pipeline-lns")
PIPELINE_SHORT = {"num_reads": 2, "num_sweeps": 300, "rounds": 3}


def heads(n: int, quick: bool):
    from qubo_nn.data.featureset import realistic_features
    from qubo_nn.data.features import FeatureConfig, get_features
    from qubo_nn.train.sgd import reference_head

    out = []
    tr, _ = realistic_features(n_train=n, n_test=1000, dim=512, num_classes=100, seed=0)
    h, info = reference_head(tr, device="cpu")
    out.append(("synthetic-features", h, tr, info.get("l2")))
    if not quick:
        fr = get_features(FeatureConfig(dataset="digits", device="cpu"))
        tr = fr.train
        h, info = reference_head(tr, device="cpu")
        out.append(("digits", h, tr, info.get("l2")))
    return out


def row_problem(stats: HeadStats, head, c: int, bits: int, kind: str):
    D = head.dim
    idx = torch.arange(c * (D + 1), c * (D + 1) + D)
    model = stats.block(idx)
    model = LocalModel(idx=model.idx, g=torch.zeros_like(model.g, dtype=torch.float64), H=model.H.double(),
                       L0=0.0, theta0=model.theta0.double())
    mu = 0.01 * float(model.H.diagonal().mean())
    s = grid_scale(head.W[c:c + 1].double(), bits)[0]
    qmin, qmax = qrange(bits)
    enc = quantize_encoding(model, torch.full((D,), float(s), dtype=torch.float64), qmin, qmax, bits=bits, kind=kind)
    return build_bqm(model, enc, mu), integer_form(model, enc, mu), enc


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def levels_of(ss, form):
    X = ss.record.sample[:1, [ss.variables.index(v) for v in range(form.num_variables)]]
    return form.to_levels(X)[0]


def run_row(stats, head, c, bits, seed):
    bqm, form, enc = row_problem(stats, head, c, bits, "binary")
    p = form.problem
    k_rtn = rtn(p)
    x_rtn = form.to_bits(k_rtn)
    res = {}

    def bitspace(name, sampler, **kw):
        ss, t = timed(lambda: S.sample(bqm, sampler, seed=seed, **kw))
        res[name] = (float(p.energy(levels_of(ss, form))), t)

    bitspace("neal", "neal", num_reads=1)
    bitspace("tabu", "tabu", num_reads=1, time_limit=max(res["neal"][1], 0.05))
    bitspace("steepest", "steepest", initial_states=x_rtn)
    bitspace("decompose", "decompose", initial_states=x_rtn, max_time=1.0, size=64)
    if bits <= 2:
        bqm_u, form_u, _ = row_problem(stats, head, c, bits, "unary")
        ss, t = timed(lambda: S.sample(bqm_u, "neal", seed=seed, num_reads=1))
        res["neal-unary"] = (float(form_u.problem.energy(levels_of(ss, form_u))), t)
    for name, kw in (("gptq", {}), ("gptq-natural", {"act_order": False}), ("cd", {})):
        ss, t = timed(lambda: S.sample(bqm, name.split("-")[0], integer_form=form, **kw))
        res[name] = (float(p.energy(levels_of(ss, form))), t)
    ss, t = timed(lambda: S.sample(bqm, "pipeline", integer_form=form, seed=seed, **PIPELINE_SHORT))
    res["pipeline"] = (float(p.energy(levels_of(ss, form))), t)
    pinfo = {k: ss.info.get(k) for k in ("stage", "energy_classical", "energy_anneal_raw", "anneal_improved_rounds")}
    # best known: a longer pipeline
    ss_long, t_long = timed(lambda: S.sample(bqm, "pipeline", integer_form=form, seed=seed + 1, num_reads=2,
                                             num_sweeps=1000, rounds=4))
    e_long = float(p.energy(levels_of(ss_long, form)))
    e_rtn = float(p.energy(k_rtn))
    e_best = min([e_long] + [e for e, _ in res.values()])
    dec = e_rtn - e_best
    frac = {m: (1.0 if dec <= 1e-15 * max(1.0, abs(e_rtn)) else (e_rtn - e) / dec) for m, (e, _) in res.items()}
    # the gap: decrease vs RTN in absolute terms, tiny decreases make fractions noisy
    return {"bits": bits, "row": c, "num_variables_binary": bqm.num_variables, "weights": p.m,
            "energy_rtn": e_rtn, "energy_best_known": e_best, "energy_long_pipeline": e_long,
            "long_pipeline_s": t_long, "energy": {m: e for m, (e, _) in res.items()},
            "time_s": {m: t for m, (_, t) in res.items()}, "fraction": frac, "pipeline_info": pinfo}


# ------------------------------------------------------------------ added groups (sb, domain-wall, bound, lns)

def box_lower_bound(p: IntegerProblem, max_iter: int = 5000) -> dict:
    """The recorded run's bound: the plain box relaxation of :func:`qubo_nn.core.bounds.box_lower_bound`
    (no diagonal shift), certified by its first-order gap."""
    return core_box_lower_bound(p, shift=False, max_iter=max_iter)


def run_added(stats, head, c, bits, seed, groups, old: dict) -> dict:
    """The added groups on one row; checks that the row's problem is the stored one (RTN, gptq and
    cd energies) and re-times gptq and cd in this run (the peers of the time ratios)."""
    bqm, form, _ = row_problem(stats, head, c, bits, "binary")
    p = form.problem
    e_rtn = float(p.energy(rtn(p)))
    if not np.isclose(e_rtn, old["energy_rtn"], rtol=1e-9, atol=0):
        raise SystemExit(f"row {c} ({bits} bits): RTN energy {e_rtn!r} differs from the stored {old['energy_rtn']!r}:"
                         " not the same problem, rerun the whole benchmark")
    out: dict = {"energy": {}, "time_s": {}, "peer_time_s": {}, "info": {}}
    for name, kw in (("gptq", {}), ("cd", {})):
        ss, t = timed(lambda: S.sample(bqm, name, integer_form=form, **kw))
        e = float(p.energy(levels_of(ss, form)))
        if not np.isclose(e, old["energy"][name], rtol=1e-9, atol=0):
            raise SystemExit(f"row {c} ({bits} bits): {name} energy {e!r} differs from the stored {old['energy'][name]!r}")
        out["peer_time_s"][name] = t
    if "sb" in groups:
        tl = max(float(old["time_s"]["neal"]), 0.5)
        ss, t = timed(lambda: S.sample(bqm, "sb", seed=seed, num_reads=32, time_limit=tl))
        out["energy"]["sb"], out["time_s"]["sb"] = float(p.energy(levels_of(ss, form))), t
        out["info"]["sb"] = {"time_limit": tl, **ss.info["sb"], **ss.info.get("timing", {})}
    if "domain-wall" in groups:
        if bits <= 2:
            bqm_d, form_d, _ = row_problem(stats, head, c, bits, "domain-wall")
            ss, t = timed(lambda: S.sample(bqm_d, "neal", seed=seed, num_reads=1))
            out["energy"]["neal-domain-wall"] = float(form_d.problem.energy(levels_of(ss, form_d)))
            out["time_s"]["neal-domain-wall"] = t
        ss, t = timed(lambda: S.sample(bqm, "pipeline", integer_form=form, seed=seed, encoding="domain-wall",
                                       **PIPELINE_SHORT))
        out["energy"]["pipeline-domain-wall"] = float(p.energy(levels_of(ss, form)))
        out["time_s"]["pipeline-domain-wall"] = t
        out["info"]["pipeline-domain-wall"] = {k: ss.info.get(k) for k in ("stage", "energy_classical",
                                                                           "energy_anneal_raw", "anneal_improved_rounds")}
    if "bound" in groups:
        b, t = timed(lambda: box_lower_bound(p))
        out["bound"] = {**b, "time_s": t}
    if "lns" in groups:
        budget = 9.0 * (out["peer_time_s"]["gptq"] + out["peer_time_s"]["cd"])
        t0 = time.perf_counter()
        ss = S.sample(bqm, "pipeline", integer_form=form, rounds=0)          # the classical start only
        k0 = levels_of(ss, form)
        k, info = lns_exact(p, k0, budget - (time.perf_counter() - t0), seed=seed)
        out["energy"]["lns"], out["time_s"]["lns"] = float(p.energy(k)), time.perf_counter() - t0
        out["info"]["lns"] = {**info, "start": ss.info.get("classical_start"), "energy_start": float(p.energy(k0))}
    if "pipeline-lns" in groups:
        budget = 9.0 * (out["peer_time_s"]["gptq"] + out["peer_time_s"]["cd"])
        t0 = time.perf_counter()
        ss = S.sample(bqm, "pipeline", integer_form=form, seed=seed, **PIPELINE_SHORT)
        k0 = levels_of(ss, form)
        k, info = lns_exact(p, k0, budget - (time.perf_counter() - t0), seed=seed)
        out["energy"]["pipeline-lns"], out["time_s"]["pipeline-lns"] = float(p.energy(k)), time.perf_counter() - t0
        out["info"]["pipeline-lns"] = {**info, "pipeline_stage": ss.info.get("stage"),
                                       "energy_pipeline": float(p.energy(k0)),
                                       "pipeline_reproduced": bool(float(p.energy(k0)) == old["energy"]["pipeline"])}
    return out


def rescore_row(r: dict) -> None:
    """Best known (and which method found it) and every fraction, from all energies the row holds."""
    e_rtn = r["energy_rtn"]
    cands = {"long-pipeline": r["energy_long_pipeline"], **r["energy"]}
    by = min(cands, key=cands.get)
    e_best = cands[by]
    dec = e_rtn - e_best
    r["energy_best_known"], r["best_known_by"] = e_best, by
    r["fraction"] = {m: (1.0 if dec <= 1e-15 * max(1.0, abs(e_rtn)) else (e_rtn - e) / dec)
                     for m, e in r["energy"].items()}
    if "bound" in r:
        lb = r["bound"]["lower_bound"]
        r["bound"]["best_known_gap"] = (e_best - lb) / (e_rtn - lb) if e_rtn > lb else 0.0
        r["bound"]["certified_optimal"] = bool(e_best - lb <= 1e-9 * max(abs(e_best), 1e-300) + 1e-15)


def merge_added(row: dict, added: dict, run_index: int) -> None:
    for m, e in added["energy"].items():
        row["energy"][m] = e
        row["time_s"][m] = added["time_s"][m]
        row.setdefault("method_run", {})[m] = run_index
    row.setdefault("peer_time_s_by_run", {})[str(run_index)] = added["peer_time_s"]
    row.setdefault("added_info", {}).update(added["info"])
    if "bound" in added:
        row["bound"] = added["bound"]
    rescore_row(row)


# ------------------------------------------------------------------ tables

def summarise(rows):
    table = {}
    for ds in sorted({r["dataset"] for r in rows}):
        for bits in sorted({r["bits"] for r in rows}):
            rs = [r for r in rows if r["dataset"] == ds and r["bits"] == bits]
            if not rs:
                continue
            for m in ALL_METHODS:
                fr = [r["fraction"][m] for r in rs if m in r["fraction"]]
                ts = [r["time_s"][m] for r in rs if m in r["time_s"]]
                if fr:
                    table[f"{ds}/{bits}/{m}"] = {"min": min(fr), "median": float(np.median(fr)),
                                                "time_median_s": float(np.median(ts)), "rows": len(fr)}
    return table


def peer_time(r: dict, method: str) -> float:
    """gptq + cd time of the run that measured ``method`` (the same run, so the ratio is fair)."""
    run = r.get("method_run", {}).get(method, 0)
    if run == 0:
        return r["time_s"]["gptq"] + r["time_s"]["cd"]
    t = r["peer_time_s_by_run"][str(run)]
    return t["gptq"] + t["cd"]


def targets(rows, method="pipeline"):
    out = {}
    for bits in sorted({r["bits"] for r in rows}):
        rs = [r for r in rows if r["bits"] == bits and method in r["energy"]]
        if not rs:
            continue
        need = 0.99 if bits == 1 else 0.999
        fr = [r["fraction"][method] for r in rs]
        strictly = [r["energy"][method] < r["energy"]["cd"] - 1e-12 * max(1.0, abs(r["energy"]["cd"])) for r in rs]
        ratio = [r["time_s"][method] / peer_time(r, method) for r in rs]
        within = [s and q <= 10 for s, q in zip(strictly, ratio)]
        rec = {"fraction_target": need, "fraction_min": min(fr),
               "rows_meeting_fraction": int(sum(f >= need for f in fr)), "rows": len(rs),
               "rows_strictly_below_gptq_cd": int(sum(strictly)),
               "rows_strictly_below_within_10x": int(sum(within)),
               "time_ratio_median": float(np.median(ratio))}
        info_key = "pipeline_info" if method == "pipeline" else None
        if info_key or method == "pipeline-domain-wall":
            infos = [r[info_key] if info_key else r["added_info"][method] for r in rs]
            rec["stages"] = {s: sum(i["stage"] == s for i in infos) for s in ("classical", "anneal", "polish")}
        bounded = [r for r in rs if "bound" in r]
        if bounded:
            rec["rows_cd_certified_optimal"] = int(sum(
                r["energy"]["cd"] - r["bound"]["lower_bound"] <= 1e-9 * abs(r["energy"]["cd"]) + 1e-15
                for r in bounded))
            rec["rows_with_bound"] = len(bounded)
        out[str(bits)] = rec
    return out


def render(rec: dict) -> str:
    runs = [rec.get("first_run", {"loadavg_start": rec["loadavg_start"], "loadavg_end": rec["loadavg_end"],
                                  "wall_time_s": rec["wall_time_s"], "methods": list(METHODS)})]
    runs += rec.get("added_runs", [])
    lines = ["# bench_samplers: fraction of the best-known decrease from RTN (min / median over rows), median time", ""]
    for i, run in enumerate(runs):
        lines.append(f"run {i} ({', '.join(run['methods'])}): load average start {tuple(run['loadavg_start'])}, "
                     f"end {tuple(run['loadavg_end'])} (2 shared cores); wall {run['wall_time_s']:.0f} s")
    lines += ["", "Best known = the lowest energy any method of any run found (fractions recomputed after each run).",
              "", "| dataset | bits | method | fraction min | fraction median | time median (s) | rows |",
              "|---|---|---|---|---|---|---|"]
    for key, v in rec["summary"].items():
        ds, bits, m = key.split("/")
        lines.append(f"| {ds} | {bits} | {m} | {v['min']:.4f} | {v['median']:.4f} | {v['time_median_s']:.3f} | {v['rows']} |")
    for method, tg in rec["targets"].items():
        lines += ["", f"## Targets ({method})", "",
                  "| bits | fraction target | min fraction | rows meeting | strictly below gptq+cd | ... within 10× time "
                  "| median time ratio | stage classical/anneal/polish | cd certified optimal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for bits, v in tg.items():
            st = v.get("stages")
            stages = f"{st['classical']}/{st['anneal']}/{st['polish']}" if st else "-"
            cert = f"{v['rows_cd_certified_optimal']}/{v['rows_with_bound']}" if "rows_with_bound" in v else "-"
            lines.append(f"| {bits} | {v['fraction_target']} | {v['fraction_min']:.5f} | "
                         f"{v['rows_meeting_fraction']}/{v['rows']} | {v['rows_strictly_below_gptq_cd']}/{v['rows']} | "
                         f"{v['rows_strictly_below_within_10x']}/{v['rows']} | {v['time_ratio_median']:.1f} | "
                         f"{stages} | {cert} |")
    bounded = [r for r in rec["rows"] if "bound" in r]
    if bounded:
        lines += ["", "## Certified lower bound (convex box relaxation)", "",
                  "| dataset | bits | rows | relaxation integral (all levels) | best known certified optimal "
                  "| best-known gap to the bound, max (share of RTN − bound) |", "|---|---|---|---|---|---|"]
        for ds in sorted({r["dataset"] for r in bounded}):
            for bits in sorted({r["bits"] for r in bounded}):
                rs = [r for r in bounded if r["dataset"] == ds and r["bits"] == bits]
                if rs:
                    integral = sum(r["bound"]["relaxation_integral_fraction"] == 1.0 for r in rs)
                    cert = sum(r["bound"]["certified_optimal"] for r in rs)
                    gap = max(r["bound"]["best_known_gap"] for r in rs)
                    lines.append(f"| {ds} | {bits} | {len(rs)} | {integral}/{len(rs)} | {cert}/{len(rs)} | {gap:.4%} |")
    by = {}
    for r in rec["rows"]:
        by[r.get("best_known_by", "?")] = by.get(r.get("best_known_by", "?"), 0) + 1
    lines += ["", "Best known found by: " + ", ".join(f"{k} {v}" for k, v in sorted(by.items()))]
    return "\n".join(lines) + "\n"


def write(rec: dict, out: Path, name: str) -> str:
    rec["summary"] = summarise(rec["rows"])
    rec["targets"] = {m: targets(rec["rows"], m) for m in CANDIDATES if any(m in r["energy"] for r in rec["rows"])}
    text = render(rec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", rec)
    from qubo_nn.runtime import atomic_path
    with atomic_path(out / f"{name}.txt") as tmp:
        Path(tmp).write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5, help="class rows per head and bit width")
    ap.add_argument("--bits", default="1,2,4")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None,
                    help=f"comma list of added groups {tuple(GROUPS)}: run only these on the recorded rows and merge")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    out = Path(a.out)
    name = "bench_samplers_quick" if a.quick else "bench_samplers"
    groups = [g for g in (a.only or "").split(",") if g]
    bad = sorted(set(groups) - set(GROUPS))
    if bad:
        ap.error(f"--only takes groups from {tuple(GROUPS)}, got {bad}")
    old = None
    if groups:
        old = json.loads((out / f"{name}.json").read_text())
        same = {k: old["argv"][k] for k in ("rows", "bits", "n", "seed", "quick")}
        mine = {k: vars(a)[k] for k in ("rows", "bits", "n", "seed", "quick")}
        if same != mine:
            ap.error(f"--only adds to the recorded run: give its settings {same}, got {mine}")
        stored = {(r["dataset"], r["bits"], r["row"]): r for r in old["rows"]}
        run_index = 1 + len(old.get("added_runs", []))
    bits_list = [int(b) for b in a.bits.split(",")]
    rows = []
    for ds, head, tr, l2 in heads(a.n if not a.quick else 2000, a.quick):
        stats = HeadStats(head.to("cpu", torch.float64), tr, 0.0, "cpu", "float64", 4096, None, 0)
        nrows = min(a.rows if not a.quick else 1, head.num_classes)
        for bits in bits_list:
            for c in range(nrows):
                if groups:
                    r = stored[(ds, bits, c)]
                    added = run_added(stats, head, c, bits, a.seed, groups, r)
                    merge_added(r, added, run_index)
                    shown = [m for g in groups for m in GROUPS[g] if m in r["fraction"]]
                else:
                    r = run_row(stats, head, c, bits, a.seed)
                    r.update(dataset=ds, head_l2=l2)
                    rescore_row(r)
                    shown = [m for m in METHODS if m in r["fraction"]]
                rows.append(r)
                extra = f" bound gap {r['bound']['best_known_gap']:.2e}" if "bound" in r else ""
                print(f"{ds} {bits}-bit row {c}: " + " ".join(f"{m}={r['fraction'][m]:.4f}/{r['time_s'][m]:.2f}s"
                                                         for m in shown) + extra, flush=True)
    if groups:
        rec = old
        rec.setdefault("first_run", {"loadavg_start": rec["loadavg_start"], "loadavg_end": rec["loadavg_end"],
                                     "wall_time_s": rec["wall_time_s"], "methods": list(METHODS)})
        rec.setdefault("added_runs", []).append({
            "groups": groups, "methods": [m for g in groups for m in GROUPS[g]] + (["bound"] if "bound" in groups else []),
            "argv": vars(a), "loadavg_start": load0, "loadavg_end": os.getloadavg(), "machine": machine_info("cpu"),
            "wall_time_s": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "gpu": "none on this machine: sb ran on the CPU"})
    else:
        rec = {"benchmark": "samplers", "argv": vars(a), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
               "machine": machine_info("cpu"), "wall_time_s": time.perf_counter() - t0, "rows": rows}
    print(write(rec, out, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
