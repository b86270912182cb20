"""Whole-network layer-wise rounding of the digits-trained ResNet-18: bits × methods × seeds.

The network is the embedded default of ``qubo-nn pretrain`` (digits, 64 × 64, ResNet-18; trained
if it is not cached). For each calibration seed (which ``--calib`` training images are used),
bit width and method, :func:`qubo_nn.tasks.network_quantize.quantize_network` quantizes every
conv and linear layer (BN folded; first conv and fc at ``--first-last-bits``; the same per-channel
``mse`` grid for every method; act-order column groups with error feedback), and the run records
the per-layer relative reconstruction error ‖(W − Ŵ)X‖²/‖WX‖², the end-to-end test loss
(cross-entropy) and accuracy, and the wall time (capture of the Grams + rounding).

Writes (atomically, after every run; finished runs are skipped on the next call):
  <out>/runs/<method>-W<bits>-seed<seed>.json   each run's record
  <out>/summary.json, <out>/table.md            mean ± std over seeds
  <out>/test_metrics_vs_bits.png                test loss and accuracy vs bits per method
  <out>/layer_error_W<bits>.png                 per-layer relative error per method

Methods whose solver module is missing (cd and qubo need ``qubo_nn.levels``) are reported as
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

from qubo_nn import data
from qubo_nn.backbones import build_model
from qubo_nn.pretrain import PretrainConfig, load_split, materialize, pretrain
from qubo_nn.runtime import atomic_path, atomic_write_json, atomic_write_text, portable_path
from qubo_nn.tasks.network_quantize import NETWORK_METHODS, NetworkQuantizeConfig, calibration_indices, quantize_network

COLORS = {"rtn": "tab:gray", "gptq": "tab:blue", "cd": "tab:green", "qubo": "tab:orange"}


def available(method: str) -> bool:
    return method in ("rtn", "gptq") or importlib.util.find_spec("qubo_nn.levels") is not None


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
