"""Whole-network layer-wise rounding of the digits-trained ResNet-18: bits × methods × seeds.

The network is the embedded default of ``qubo-nn pretrain`` (digits, 64 × 64, ResNet-18; trained
if it is not cached). For each calibration seed (which ``--calib`` training images are used),
bit width and method, :func:`qubo_nn.workflows.network_quantize.quantize_network` quantizes every
conv and linear layer (BN folded; first conv and fc at ``--first-last-bits``; the same per-channel
``mse`` grid for every method; act-order column groups with error feedback), and the run records
the per-layer relative reconstruction error ‖(W − Ŵ)X‖²/‖WX‖², the end-to-end test loss
(cross-entropy) and accuracy, and the wall time (capture of the Grams + rounding).

Writes (atomically, after every run; finished runs are skipped on the next call):
  <out>/runs/<method>-W<bits>-seed<seed>.json   each run's record
  <out>/summary.json, <out>/table.md            mean ± std over seeds
  <out>/test_metrics_vs_bits.png                test loss and accuracy vs bits per method
  <out>/layer_error_W<bits>.png                 per-layer relative error per method

Methods whose solver module is missing (cd and qubo need ``qubo_nn.core.grid``) are reported as
not run. Usage:
  .venv/bin/python experiments/network_quantize_sweep.py [--bits 4 3 2] [--methods rtn gptq cd qubo] \
      [--seeds 0 1 2] [--calib 128] [--solve-budget 1200] [--out results/network-quantize]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy: small solves thrash with BLAS threads

import argparse
import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_model
from qubo_nn.train.pretrain import PretrainConfig, load_split, materialize, pretrain
from qubo_nn.runtime import atomic_path, atomic_write_json, atomic_write_text, portable_path
from qubo_nn.workflows.network_quantize import (NETWORK_METHODS, NetworkQuantizeConfig, calibration_indices,
    quantize_network)

COLORS = {"rtn": "tab:gray", "gptq": "tab:blue", "cd": "tab:green", "qubo": "tab:orange"}


def available(method: str) -> bool:
    return method in ("rtn", "gptq") or importlib.util.find_spec("qubo_nn.core.grid") is not None


def run_name(method: str, bits: int, seed: int) -> str:
    return f"{method}-W{bits}-seed{seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    ap.add_argument("--methods", nargs="+", default=list(NETWORK_METHODS), choices=NETWORK_METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--solve-budget", type=float, default=1200.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/network-quantize")
    ap.add_argument("--head-to-head", action="store_true",
                    help="Instead of the sweep: the same group problems solved by gptq, cd and qubo (no budget).")
    ap.add_argument("--rows", type=int, default=8, help="--head-to-head: rows sampled per layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.head_to_head:
        head_to_head(args)
        return
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    pcfg = PretrainConfig()
    ck = pretrain(pcfg)
    model = build_model(pcfg.arch, str(ck.path), num_classes=data.num_classes(pcfg.dataset))
    train_ds, test_ds = load_split(pcfg, "train"), load_split(pcfg, "test")
    X_test, y_test = materialize(test_ds)
    skipped = []
    for seed in args.seeds:
        calib, _ = materialize(train_ds, calibration_indices(len(train_ds), args.calib, seed))
        for bits in args.bits:
            for method in args.methods:
                path = out / "runs" / f"{run_name(method, bits, seed)}.json"
                if path.exists():
                    continue
                if not available(method):
                    skipped.append(run_name(method, bits, seed))
                    continue
                cfg = NetworkQuantizeConfig(bits=bits, method=method, calib=args.calib, group_size=args.group_size,
                                            solve_budget_s=args.solve_budget, seed=seed, device="cpu")
                res = quantize_network(model, calib, X_test, y_test, cfg)
                rec = {**res.record, "checkpoint": portable_path(ck.path), "pretrain_test_acc": ck.test_acc}
                atomic_write_json(path, rec)
                q = rec["quantized"]
                print(f"{run_name(method, bits, seed)}: test loss {q['test_loss']:.4f} acc {q['test_acc']:.2f} "
                      f"in {rec['seconds']:.0f} s (load {rec['loadavg'][0]:.1f})", flush=True)
    summarize(out, skipped)


H2H_LAYERS = ("layer1.0.conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2", "layer4.1.conv2")
H2H_METHODS = ("gptq", "cd", "qubo")


def head_to_head(args) -> None:
    """Equal footing on identical problems: for each layer of ``H2H_LAYERS`` (Gram from the fp32
    folded network on the calibration images of each seed), ``--rows`` random rows, their first
    act-order group of ``--group-size`` columns (the group problem of
    :mod:`qubo_nn.curvature.sequential`), on the layer's ``mse`` grid at each bit width; every
    method of ``levels.solve_levels`` solves the same ``IntegerProblem`` with no time limit."""
    from qubo_nn.curvature.layer_gram import capture_gram
    from qubo_nn.curvature.sequential import sequential_groups
    from qubo_nn.core.problem import IntegerProblem
    from qubo_nn.samplers.level_solvers import solve_levels
    from qubo_nn.nets.bn import fold_batchnorm
    from qubo_nn.core.layout import column_plan, row_view
    from qubo_nn.workflows.head_quantize import grid_scale, qrange

    out = Path(args.out)
    pcfg = PretrainConfig()
    ck = pretrain(pcfg)
    folded, _ = fold_batchnorm(build_model(pcfg.arch, str(ck.path), num_classes=data.num_classes(pcfg.dataset)))
    train_ds = load_split(pcfg, "train")
    rows_out = []
    for seed in args.seeds:
        calib, _ = materialize(train_ds, calibration_indices(len(train_ds), args.calib, seed))
        for name in H2H_LAYERS:
            acc = capture_gram(folded, name, [calib[i:i + 64] for i in range(0, len(calib), 64)])
            H = acc.hessian()
            W = row_view(folded.get_submodule(name).weight.detach()).double()
            plan = column_plan(W.shape[1], args.group_size, torch.diagonal(H))
            seq = sequential_groups(H, plan, 0.01, dtype=torch.float64)
            Hg, cols = seq.group_hessian(0).numpy(), plan.group(0)
            rows = torch.randperm(W.shape[0], generator=torch.Generator().manual_seed(seed))[:args.rows]
            for bits in args.bits:
                scale = grid_scale(W, bits, "mse")
                qmin, qmax = qrange(bits)
                m = len(cols)
                for r in rows.tolist():
                    prob = IntegerProblem(H=Hg, target=W[r, cols].numpy(), scale=np.full(m, float(scale[r])),
                                          kmin=np.full(m, qmin), kmax=np.full(m, qmax))
                    rec = {"seed": seed, "layer": name, "bits": bits, "row": r, "m": m}
                    for method in H2H_METHODS:
                        _, info = solve_levels(prob, method, seed=seed * 1000 + r)
                        rec[method] = {"energy": info["energy"], "wall_time_s": info["wall_time_s"],
                                       "stage": info.get("stage")}
                    rows_out.append(rec)
            print(f"head-to-head seed {seed} {name} done", flush=True)
    atomic_write_json(out / "head_to_head.json", {"rows": rows_out, "group_size": args.group_size,
                                                  "calib": args.calib, "checkpoint": portable_path(ck.path)})
    lines = ["# Head-to-head on identical group problems (first act-order group of random rows)", "",
             f"group size {args.group_size}, calibration {args.calib} images, seeds {args.seeds}, "
             f"{args.rows} rows per layer and seed; energies relative to GPTQ act-order's (lower is better).", "",
             "| bits | layer | problems | cd vs gptq | qubo vs gptq | qubo < cd (strictly) | qubo = cd | qubo > cd "
             "| ms gptq / cd / qubo |", "|---|---|---|---|---|---|---|---|---|"]
    for bits in args.bits:
        for name in H2H_LAYERS:
            rs = [r for r in rows_out if r["bits"] == bits and r["layer"] == name]
            if not rs:
                continue
            rel = {mth: np.mean([r[mth]["energy"] / r["gptq"]["energy"] - 1 for r in rs]) for mth in ("cd", "qubo")}
            tol = [1e-9 * max(abs(r["cd"]["energy"]), 1e-300) for r in rs]
            win = sum(r["qubo"]["energy"] < r["cd"]["energy"] - t for r, t in zip(rs, tol))
            lose = sum(r["qubo"]["energy"] > r["cd"]["energy"] + t for r, t in zip(rs, tol))
            ms = " / ".join(f"{1e3 * np.mean([r[mth]['wall_time_s'] for r in rs]):.0f}" for mth in H2H_METHODS)
            lines.append(f"| W{bits} | {name} | {len(rs)} | {100 * rel['cd']:+.2f} % | {100 * rel['qubo']:+.2f} % "
                         f"| {win} | {len(rs) - win - lose} | {lose} | {ms} |")
    atomic_write_text(out / "head_to_head.md", "\n".join(lines) + "\n")


def summarize(out: Path, skipped: list[str]) -> None:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["config"]["method"], r["config"]["bits"]), []).append(r)

    def ms(vals):
        return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)

    summary = {}
    for (method, bits), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], NETWORK_METHODS.index(kv[0][0]))):
        layers = [L["layer"] for L in rs[0]["layers"]]
        summary[f"{method}/W{bits}"] = {
            "method": method, "bits": bits, "seeds": [r["config"]["seed"] for r in rs],
            "test_loss": ms([r["quantized"]["test_loss"] for r in rs]),
            "test_acc": ms([r["quantized"]["test_acc"] for r in rs]),
            "seconds": ms([r["seconds"] for r in rs]),
            "solve_s": ms([sum(L["solve_s"] for L in r["layers"]) for r in rs]),
            "layer_rel_error": {name: ms([r["layers"][i]["rel_error"] for r in rs]) for i, name in enumerate(layers)},
            "layer_solve_s": {name: ms([r["layers"][i]["solve_s"] for r in rs]) for i, name in enumerate(layers)},
            "loadavg_max": max(r["loadavg"][0] for r in rs),
        }
    ref = runs[0]["reference"] if runs else {}
    atomic_write_json(out / "summary.json", {"runs": summary, "reference": ref, "not_run": skipped})
    lines = ["# Whole-network rounding of the digits ResNet-18 (mean ± std over calibration seeds)", "",
             f"fp32 network: test loss {ref.get('test_loss', float('nan')):.4f}, "
             f"test accuracy {ref.get('test_acc', float('nan')):.2f} %", "",
             "| bits | method | seeds | test loss | test acc % | mean layer rel. error | wall s | rounding s |",
             "|---|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        errs = [v[0] for v in s["layer_rel_error"].values()]
        lines.append(f"| W{s['bits']} | {s['method']} | {len(s['seeds'])} | {s['test_loss'][0]:.4f} ± {s['test_loss'][1]:.4f} "
                     f"| {s['test_acc'][0]:.2f} ± {s['test_acc'][1]:.2f} | {np.mean(errs):.3e} "
                     f"| {s['seconds'][0]:.0f} | {s['solve_s'][0]:.0f} |")
    if skipped:
        lines += ["", "Not run (solver module missing): " + ", ".join(skipped)]
    for bits in sorted({s["bits"] for s in summary.values()}, reverse=True):
        per = {s["method"]: s for s in summary.values() if s["bits"] == bits}
        names = list(next(iter(per.values()))["layer_rel_error"])
        lines += ["", f"## W{bits}: per-layer relative reconstruction error ‖(W−Ŵ)X‖²/‖WX‖² (mean over seeds)", "",
                  "| layer | " + " | ".join(per) + " |", "|---|" + "---|" * len(per)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(f"{per[m]['layer_rel_error'][n][0]:.3e}" for m in per) + " |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    plot(summary, out)


def plot(summary: dict, out: Path) -> None:
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for method in NETWORK_METHODS:
        pts = sorted((s["bits"], s) for s in summary.values() if s["method"] == method)
        if not pts:
            continue
        b = [p[0] for p in pts]
        for ax, key in ((ax1, "test_loss"), (ax2, "test_acc")):
            ax.errorbar(b, [p[1][key][0] for p in pts], yerr=[p[1][key][1] for p in pts], marker="o", capsize=3,
                        label=method, color=COLORS[method])
    ax1.set(xlabel="bits per weight (first conv and fc: 8)", ylabel="test cross-entropy (nats)", yscale="log",
            title="end-to-end test loss")
    ax2.set(xlabel="bits per weight (first conv and fc: 8)", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax1, ax2):
        ax.set_xticks(sorted({s["bits"] for s in summary.values()}))
        ax.legend()
    fig.tight_layout()
    with atomic_path(out / "test_metrics_vs_bits.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    for bits in sorted({s["bits"] for s in summary.values()}):
        fig = Figure(figsize=(10, 4))
        ax = fig.subplots()
        for s in summary.values():
            if s["bits"] != bits:
                continue
            names = list(s["layer_rel_error"])
            ax.plot(range(len(names)), [s["layer_rel_error"][n][0] for n in names], marker="o", label=s["method"],
                    color=COLORS[s["method"]])
        ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
        ax.set(yscale="log", ylabel="‖(W−Ŵ)X‖² / ‖WX‖²", title=f"per-layer relative reconstruction error, W{bits}")
        ax.legend()
        fig.tight_layout()
        with atomic_path(out / f"layer_error_W{bits}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)


if __name__ == "__main__":
    main()
