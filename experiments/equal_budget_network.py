"""Whole digits ResNet-18 at equal solve budget: grids W2 / binary / ternary × rtn, gptq, cd, qubo × seeds.

Issues 20 and 24. The network is the embedded default of ``qubo-nn pretrain`` (digits, 64 × 64,
ResNet-18). For each calibration seed (which ``--calib`` training images are used), grid and
method, :func:`qubo_nn.workflows.network_quantize.quantize_network` rounds every conv and linear
layer (BN folded; first conv and fc at 8 bits; ``W2`` = the signed 2-bit grid, ``binary`` = α_r·{−1, +1},
``ternary`` = α_r·{−1, 0, +1} with α refit), with BatchNorm correction after the rounding: each record
holds the test loss/accuracy before the correction (``bn_correct.before``) and after (``quantized``),
so one rounding gives both columns. cd and qubo get the same ``--solve-budget`` seconds for the
whole network; both run batched (GPTQ factorized once per group, compiled CD); qubo starts every
row at CD's answer and spends the rest of each group's budget share on batched annealing rounds
(restarts: ``sampler_params={"rounds": 10**6}``), so it is never above cd on a row it solved.

Writes (atomically; finished runs are skipped on the next call):
  <out>/runs/<grid>-<method>-seed<seed>.json    each run's record
  <out>/summary.json, <out>/table.md            mean ± std over seeds, with and without BN correction
  <out>/accuracy.png                            test accuracy per grid and method, with/without BN correction
Usage:
  .venv/bin/python experiments/equal_budget_network.py [--grids W2 binary ternary] [--methods rtn gptq cd qubo]
      [--seeds 0 1 2] [--calib 128] [--solve-budget 120] [--threads 1] [--out results/equal-budget]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy: small solves thrash with BLAS threads

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_model
from qubo_nn.runtime import atomic_path, atomic_write_json, atomic_write_text, portable_path
from qubo_nn.train.pretrain import PretrainConfig, load_split, materialize, pretrain
from qubo_nn.workflows.network_quantize import (NETWORK_METHODS, NetworkQuantizeConfig, calibration_indices,
                                                quantize_network)

GRIDS = {"W2": {"grid": "signed", "bits": 2}, "binary": {"grid": "binary", "bits": 1},
         "ternary": {"grid": "ternary", "bits": 2}}
COLORS = {"rtn": "tab:gray", "gptq": "tab:blue", "cd": "tab:green", "qubo": "tab:orange"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--methods", nargs="+", default=list(NETWORK_METHODS), choices=NETWORK_METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--solve-budget", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/equal-budget")
    ap.add_argument("--summarize", action="store_true", help="only rebuild the tables and plot from runs/")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        run_all(args, out)
    summarize(out)


def run_all(args, out: Path) -> None:
    pcfg = PretrainConfig()
    ck = pretrain(pcfg)
    model = build_model(pcfg.arch, str(ck.path), num_classes=data.num_classes(pcfg.dataset))
    train_ds, test_ds = load_split(pcfg, "train"), load_split(pcfg, "test")
    X_test, y_test = materialize(test_ds)
    for seed in args.seeds:
        calib, _ = materialize(train_ds, calibration_indices(len(train_ds), args.calib, seed))
        for grid in args.grids:
            for method in args.methods:
                name = f"{grid}-{method}-seed{seed}"
                path = out / "runs" / f"{name}.json"
                if path.exists():
                    continue
                cfg = NetworkQuantizeConfig(**GRIDS[grid], method=method, calib=args.calib, seed=seed, device="cpu",
                                            solve_budget_s=args.solve_budget, bn_correct=True,
                                            executor="threads", workers=args.threads,
                                            sampler_params={"rounds": 10**6} if method == "qubo" else {})
                res = quantize_network(model, calib, X_test, y_test, cfg)
                rec = {**res.record, "grid_name": grid, "checkpoint": portable_path(ck.path),
                       "pretrain_test_acc": ck.test_acc}
                atomic_write_json(path, rec)
                q, b = rec["quantized"], rec["bn_correct"]["before"]
                print(f"{name}: acc {b['test_acc']:.2f} → {q['test_acc']:.2f} with BN correction, loss "
                      f"{b['test_loss']:.4f} → {q['test_loss']:.4f}, {rec['seconds']:.0f} s "
                      f"(load {rec['loadavg'][0]:.1f})", flush=True)


def _ms(vals: list[float]) -> tuple[float, float]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _run_stats(r: dict) -> dict:
    layers = r["layers"]
    solved = sum(L.get("rows_solved", 0) for L in layers)
    total = sum(L.get("rows_total", 0) for L in layers)
    stages: dict[str, int] = {}
    for L in layers:
        for k, v in (L.get("stages") or {}).items():
            stages[k] = stages.get(k, 0) + v
    return {"acc": r["bn_correct"]["before"]["test_acc"], "loss": r["bn_correct"]["before"]["test_loss"],
            "acc_bn": r["quantized"]["test_acc"], "loss_bn": r["quantized"]["test_loss"],
            "layer_err": float(np.mean([L["rel_error"] for L in layers])),
            "solve_s": sum(L["solve_s"] for L in layers), "seconds": r["seconds"],
            "coverage": solved / total if total else None, "stages": stages, "load": r["loadavg"][0]}


def summarize(out: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if not runs:
        return
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["grid_name"], r["config"]["method"]), []).append(r)
    summary = {}
    for (grid, method), rs in sorted(groups.items(), key=lambda kv: (list(GRIDS).index(kv[0][0]),
                                                                     NETWORK_METHODS.index(kv[0][1]))):
        st = [_run_stats(r) for r in rs]
        stages: dict[str, int] = {}
        for s in st:
            for k, v in s["stages"].items():
                stages[k] = stages.get(k, 0) + v
        summary[f"{grid}/{method}"] = {
            "grid": grid, "method": method, "seeds": [r["config"]["seed"] for r in rs],
            **{key: _ms([s[key] for s in st]) for key in ("acc", "loss", "acc_bn", "loss_bn", "layer_err",
                                                          "solve_s", "seconds")},
            "per_seed": {r["config"]["seed"]: {k: s[k] for k in ("acc", "loss", "acc_bn", "loss_bn", "layer_err")}
                         for r, s in zip(rs, st)},
            "coverage": None if st[0]["coverage"] is None else min(s["coverage"] for s in st),
            "stages": stages, "load_max": max(s["load"] for s in st),
            "budget_s": rs[0]["config"]["solve_budget_s"]}
    ref = runs[0]["reference"]
    atomic_write_json(out / "summary.json", {"runs": summary, "reference": ref})
    lines = ["# Whole digits ResNet-18 at equal solve budget (mean ± std over calibration seeds)", "",
             f"fp32 network: test loss {ref['test_loss']:.4f}, accuracy {ref['test_acc']:.2f} % (360 test images). "
             f"Solve budget {runs[0]['config']['solve_budget_s']:.0f} s for cd and qubo; first conv and fc at 8 bits.",
             "",
             "| grid | method | seeds | test acc % | test loss | acc % + BN corr. | loss + BN corr. "
             "| mean layer rel. error | coverage | solve s | run s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary.values():
        cov = "—" if s["coverage"] is None else f"{100 * s['coverage']:.1f} %"
        lines.append(f"| {s['grid']} | {s['method']} | {len(s['seeds'])} | {s['acc'][0]:.2f} ± {s['acc'][1]:.2f} "
                     f"| {s['loss'][0]:.4f} ± {s['loss'][1]:.4f} | {s['acc_bn'][0]:.2f} ± {s['acc_bn'][1]:.2f} "
                     f"| {s['loss_bn'][0]:.4f} ± {s['loss_bn'][1]:.4f} | {s['layer_err'][0]:.4e} | {cov} "
                     f"| {s['solve_s'][0]:.0f} | {s['seconds'][0]:.0f} |")
    lines += ["", "## qubo against cd, seed by seed", "",
              "| grid | seed | Δacc (qubo − cd) | Δacc + BN | Δloss + BN | Δ mean layer error | qubo stages |",
              "|---|---|---|---|---|---|---|"]
    for grid in GRIDS:
        q, c = summary.get(f"{grid}/qubo"), summary.get(f"{grid}/cd")
        if not q or not c:
            continue
        for seed in sorted(set(q["per_seed"]) & set(c["per_seed"])):
            a, b = q["per_seed"][seed], c["per_seed"][seed]
            lines.append(f"| {grid} | {seed} | {a['acc'] - b['acc']:+.2f} | {a['acc_bn'] - b['acc_bn']:+.2f} "
                         f"| {a['loss_bn'] - b['loss_bn']:+.4f} | {a['layer_err'] - b['layer_err']:+.3e} "
                         f"| {q['stages']} |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    plot(summary, out)


def plot(summary: dict, out: Path) -> None:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    grids = [g for g in GRIDS if any(s["grid"] == g for s in summary.values())]
    width = 0.2
    for ax, key, title in ((axes[0], "acc", "without BN correction"), (axes[1], "acc_bn", "with BN correction")):
        for j, method in enumerate(NETWORK_METHODS):
            xs, ys, es = [], [], []
            for i, g in enumerate(grids):
                s = summary.get(f"{g}/{method}")
                if s:
                    xs.append(i + (j - 1.5) * width)
                    ys.append(s[key][0])
                    es.append(s[key][1])
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=method, color=COLORS[method])
        ax.set_xticks(range(len(grids)), grids)
        ax.set(title=f"test accuracy, {title}", ylim=(0, 100))
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(out / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


if __name__ == "__main__":
    main()
