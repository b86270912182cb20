"""BatchNorm after quantization (issue 13): statistics correction, and the last block's γ/β tuned
by SGD, Adam, the QUBO hybrid and L-BFGS at equal wall time.

Network: the embedded default of ``qubo-nn pretrain`` (digits, 64 × 64, ResNet-18). Each seed s
quantizes it with :func:`qubo_nn.workflows.network_quantize.quantize_network` (GPTQ act-order, W2,
first/last layer 8 bits, 128 calibration images drawn by s; cached under ``--cache``).

Stages (``--stages``; finished records are skipped on the next call):

- ``correct``: :func:`qubo_nn.nets.bn_correct.correct_statistics` on each quantized network (BN
  folded; fp32 folded reference; the same 128 calibration images), bias only and bias + variance;
  test loss/accuracy before and after; the levels check (W' = (a·s)·k on every corrected layer).
  Also RTN W4 (seed 0). → ``<out>/correct/<run>.json``
- ``lr``: the learning rates of SGD (momentum 0.9) and Adam, a grid at ``--lr-budget`` seconds
  on seed 0; the best final training loss whose run never diverged is used. → ``<out>/lr_grid.json``
- ``tune``: per seed, ``sgd``, ``adam``, ``hybrid`` (SGD phases with the tuned SGD rate) and
  ``lbfgs`` on θ = γ/β of layer4.1.bn1/bn2 (2,048 parameters) for ``--budget`` seconds each.
  → ``<out>/tune/<method>-seed<s>.json``
- ``summary``: ``summary.json``, ``summary.md``, ``loss_vs_time.png``.

Usage:
  .venv/bin/python experiments/bn_sweep.py [--seeds 0 1 2] [--budget 60] [--out results/bn]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_model
from qubo_nn.nets.bn import fold_batchnorm
from qubo_nn.nets.bn_correct import correct_statistics
from qubo_nn.train.pretrain import PretrainConfig, evaluate_model, load_split, materialize, pretrain
from qubo_nn.runtime import (atomic_path, atomic_write_json, atomic_write_text, machine_info, portable_path,
    versions)
from qubo_nn.workflows.bn_tune import TUNE_METHODS, BasicBlockTail, BNTuneConfig, TailData, tune
from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, calibration_indices, quantize_network

SGD_LRS = (0.1, 0.3, 1.0, 3.0)
ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
COLORS = {"sgd": "tab:blue", "adam": "tab:green", "hybrid": "tab:orange", "lbfgs": "tab:gray"}


class Setup:
    """The pretrained network, the splits, and per-seed quantized networks and tail caches."""

    def __init__(self, args) -> None:
        self.args = args
        self.pcfg = PretrainConfig()
        self.ck = pretrain(self.pcfg)
        self.C = data.num_classes(self.pcfg.dataset)
        self.model = build_model(self.pcfg.arch, str(self.ck.path), num_classes=self.C)
        self.train_ds = load_split(self.pcfg, "train")
        self.X_test, self.y_test = materialize(load_split(self.pcfg, "test"))
        self.cache = Path(args.cache)
        self.cache.mkdir(parents=True, exist_ok=True)

    def calib(self, seed: int) -> torch.Tensor:
        return materialize(self.train_ds, calibration_indices(len(self.train_ds), self.args.calib, seed))[0]

    def quantized(self, method: str, bits: int, seed: int) -> tuple[torch.nn.Module, dict]:
        """(plain quantized model, checkpoint {state_dict, levels, scales, bits}), cached."""
        path = self.cache / f"{method}-W{bits}-seed{seed}.pt"
        if not path.exists():
            cfg = NetworkQuantizeConfig(bits=bits, method=method, calib=self.args.calib, seed=seed, device="cpu")
            res = quantize_network(self.model, self.calib(seed), self.X_test, self.y_test, cfg)
            res.save(path)
        ck = torch.load(path, map_location="cpu", weights_only=True)   # tensors and plain containers only
        m = build_model(self.pcfg.arch, "none", num_classes=self.C)
        m.load_state_dict(ck["state_dict"])
        return m.eval(), ck

    def tail(self, seed: int) -> tuple[BasicBlockTail, TailData, TailData]:
        model, _ = self.quantized("gptq", 2, seed)
        tail = BasicBlockTail(model, "layer4.1")
        path = self.cache / f"tail-gptq-W2-seed{seed}.pt"
        if path.exists():
            d = torch.load(path, map_location="cpu", weights_only=True)
            tr, te = TailData(**d["train"]), TailData(**d["test"])
            tail._build_matrix(tr.x.shape[1:])
        else:
            X, y = materialize(self.train_ds)
            tr, te = tail.prepare(X, y), tail.prepare(self.X_test, self.y_test)
            with atomic_path(path) as tmp:
                torch.save({"train": vars(tr), "test": vars(te)}, tmp)
        return tail, tr, te


def stage_correct(S: Setup, out: Path) -> None:
    runs = [("gptq", 2, s) for s in S.args.seeds] + [("rtn", 4, 0)]
    ref_folded, _ = fold_batchnorm(S.model)
    fp_loss, fp_acc = evaluate_model(S.model, S.X_test, S.y_test)
    for method, bits, seed in runs:
        path = out / "correct" / f"{method}-W{bits}-seed{seed}.json"
        if path.exists():
            continue
        plain, ck = S.quantized(method, bits, seed)
        q_folded, _ = fold_batchnorm(plain)
        calib = S.calib(seed)
        rec = {"method": method, "bits": bits, "seed": seed, "calib": int(len(calib)),
               "fp32": {"test_loss": fp_loss, "test_acc": fp_acc}}
        loss, acc = evaluate_model(q_folded, S.X_test, S.y_test)
        rec["quantized"] = {"test_loss": loss, "test_acc": acc}
        for variant, variance in (("bias", False), ("bias_variance", True)):
            t = time.perf_counter()
            fixed, info = correct_statistics(ref_folded, q_folded, calib, batch_size=64, variance=variance)
            secs = time.perf_counter() - t
            loss, acc = evaluate_model(fixed, S.X_test, S.y_test)
            rec[variant] = {"test_loss": loss, "test_acc": acc, "seconds": secs, "layers": len(info),
                            "levels_check": _levels_check(fixed, info, ck),
                            "per_layer": {n: {k: v for k, v in i.items() if not isinstance(v, torch.Tensor)}
                                          | {"scale_factor_min": float(i["scale_factor"].min()),
                                             "scale_factor_max": float(i["scale_factor"].max())}
                                          for n, i in info.items()}}
        rec.update(loadavg=list(os.getloadavg()), versions=versions(), machine=machine_info(),
                   checkpoint=portable_path(S.ck.path))
        atomic_write_json(path, rec)
        print(f"correct {method} W{bits} seed {seed}: test loss {rec['quantized']['test_loss']:.4f} -> "
              f"bias {rec['bias']['test_loss']:.4f} / bias+var {rec['bias_variance']['test_loss']:.4f}", flush=True)


def _levels_check(fixed: torch.nn.Module, info: dict, ck: dict) -> dict:
    """Every corrected layer: W' / (a·s) equals the stored integer levels k (the per-row grid)."""
    worst, mismatches = 0.0, 0
    for name, i in info.items():
        k = ck["levels"][name].double()
        s = ck["scales"][name].double() * i["scale_factor"]
        w = fixed.get_submodule(name).weight.detach().double().reshape(k.shape[0], -1)
        nz = s != 0
        ratio = w[nz] / s[nz][:, None]
        worst = max(worst, float((ratio - k[nz]).abs().max()))
        mismatches += int((torch.round(ratio) != k[nz]).sum())
    return {"layers": len(info), "max_abs_level_deviation": worst, "level_mismatches": mismatches}


def stage_lr(S: Setup, out: Path) -> dict:
    path = out / "lr_grid.json"
    if path.exists():
        return json.loads(path.read_text())
    tail, tr, te = S.tail(S.args.seeds[0])
    rows = []
    for method, lrs in (("sgd", SGD_LRS), ("adam", ADAM_LRS)):
        for lr in lrs:
            cfg = BNTuneConfig(budget_s=S.args.lr_budget, seed=S.args.seeds[0],
                               **({"sgd_lr": lr} if method == "sgd" else {"adam_lr": lr}))
            _, rec = tune(tail, tr, None, method, cfg)
            losses = [p["train_loss"] for p in rec["history"]]
            diverged = not all(math.isfinite(v) for v in losses) or losses[-1] > losses[0]
            rows.append({"method": method, "lr": lr, "final_train_loss": losses[-1], "diverged": diverged,
                         "epochs": len(losses) - 1, "loadavg": rec["loadavg"]})
            print(f"lr {method} {lr}: train loss {losses[-1]:.5f}{' (diverged)' if diverged else ''}", flush=True)
    best = {m: min((r for r in rows if r["method"] == m and not r["diverged"]),
                   key=lambda r: r["final_train_loss"])["lr"] for m in ("sgd", "adam")}
    res = {"budget_s": S.args.lr_budget, "seed": S.args.seeds[0], "rows": rows, "best": best,
           "rule": "lowest final training loss among runs whose loss never went above the start"}
    atomic_write_json(path, res)
    return res


def stage_lr_edge(S: Setup, out: Path) -> None:
    """The next grid point above each chosen rate (× 3.33), same budget and seed: was the grid wide enough?"""
    path = out / "lr_edge.json"
    if path.exists():
        return
    grid = json.loads((out / "lr_grid.json").read_text())
    tail, tr, _ = S.tail(grid["seed"])
    rows = []
    for method, lr in (("sgd", 10.0), ("adam", 0.1)):
        cfg = BNTuneConfig(budget_s=grid["budget_s"], seed=grid["seed"],
                           **({"sgd_lr": lr} if method == "sgd" else {"adam_lr": lr}))
        _, rec = tune(tail, tr, None, method, cfg)
        losses = [p["train_loss"] for p in rec["history"]]
        rows.append({"method": method, "lr": lr, "final_train_loss": losses[-1], "max_train_loss": max(losses),
                     "diverged": not all(math.isfinite(v) for v in losses) or losses[-1] > losses[0],
                     "epochs": len(losses) - 1, "loadavg": rec["loadavg"]})
        print(f"lr edge {method} {lr}: train loss {losses[-1]:.5f}", flush=True)
    atomic_write_json(path, {"budget_s": grid["budget_s"], "seed": grid["seed"], "rows": rows,
                             "chosen": grid["best"]})


def stage_tune(S: Setup, out: Path, lrs: dict) -> None:
    for seed in S.args.seeds:
        tail, tr, te = S.tail(seed)
        for method in S.args.methods:
            path = out / "tune" / f"{method}-seed{seed}.json"
            if path.exists():
                continue
            cfg = BNTuneConfig(budget_s=S.args.budget, sgd_lr=lrs["sgd"], adam_lr=lrs["adam"],
                               hessian_samples=S.args.hessian_samples, seed=seed)
            _, rec = tune(tail, tr, te, method, cfg)
            rec.update(seed=seed, machine=machine_info(), checkpoint=portable_path(S.ck.path),
                       quantized="gptq-W2", lr_grid="lr_grid.json")
            atomic_write_json(path, rec)
            f = at_time(rec["history"], S.args.budget)
            print(f"tune seed {seed} {method}: train {f['train_loss']:.5f} test {f['test_loss']:.4f} "
                  f"acc {f['test_acc']:.2f} (load {rec['loadavg'][0]:.1f})", flush=True)


def at_time(history: list[dict], t: float) -> dict:
    """The last monitoring point at or before optimizer time t."""
    pts = [p for p in history if p["t"] <= t + 1e-9]
    return pts[-1] if pts else history[0]


def first_time_below(history: list[dict], level: float) -> float | None:
    for p in history:
        if p["train_loss"] <= level:
            return p["t"]
    return None


def stage_summary(S: Setup, out: Path) -> None:
    T = S.args.budget
    recs = {m: [json.loads(p.read_text()) for p in sorted((out / "tune").glob(f"{m}-seed*.json"))]
            for m in TUNE_METHODS}
    recs = {m: r for m, r in recs.items() if r}
    corr = [json.loads(p.read_text()) for p in sorted((out / "correct").glob("*.json"))]

    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        return [statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0]

    start = [r["history"][0] for r in next(iter(recs.values()))] if recs else []
    targets = {}
    if "sgd" in recs:   # time for each method to reach the SGD baseline's loss at T (per seed)
        targets = {r["seed"]: at_time(r["history"], T)["train_loss"] for r in recs["sgd"]}
    table = {}
    for m, rs in recs.items():
        fin = [at_time(r["history"], T) for r in rs]
        half = [at_time(r["history"], T / 2) for r in rs]
        table[m] = {"seeds": [r["seed"] for r in rs],
                    "train_loss": ms([p["train_loss"] for p in fin]), "test_loss": ms([p["test_loss"] for p in fin]),
                    "test_acc": ms([p["test_acc"] for p in fin]), "train_acc": ms([p["train_acc"] for p in fin]),
                    "train_loss_half": ms([p["train_loss"] for p in half]),
                    "test_loss_half": ms([p["test_loss"] for p in half]),
                    "best_test_loss": ms([min(p["test_loss"] for p in r["history"] if p["t"] <= T) for r in rs]),
                    "time_to_sgd_final": [first_time_below(r["history"], targets.get(r["seed"], -1)) for r in rs],
                    "optimizer_s": ms([r["optimizer_s"] for r in rs]),
                    "loadavg_max": max(r["loadavg"][0] for r in rs)}
        if m == "hybrid":
            blocks = [b for r in rs for b in r["blocks"]]
            table[m]["qubo"] = {"blocks": len(blocks), "accepted": sum(b["accepted"] for b in blocks),
                                "rounds": ms([len(r["rounds"]) for r in rs]),
                                "gauss_newton_s": ms([x["gauss_newton_s"] for r in rs for x in r["rounds"]]),
                                "qubo_gain": ms([sum(x["loss_before"] - x["loss_after"] for x in r["rounds"])
                                                 for r in rs]),
                                "hessian_samples": rs[0]["hessian_samples"],
                                **phase_split(rs, T),
                                "num_variables": rs[0]["blocks"][0]["attempts"][0]["num_variables"]}
    lr_grid = json.loads((out / "lr_grid.json").read_text()) if (out / "lr_grid.json").exists() else None
    summary = {"budget_s": T, "start": {"train_loss": ms([p["train_loss"] for p in start]),
                                        "test_loss": ms([p["test_loss"] for p in start]),
                                        "test_acc": ms([p["test_acc"] for p in start])},
               "methods": table, "lr": lr_grid["best"] if lr_grid else None, "correct": corr_table(corr),
               "machine": machine_info(), "versions": versions()}
    atomic_write_json(out / "summary.json", summary)
    edge = json.loads((out / "lr_edge.json").read_text()) if (out / "lr_edge.json").exists() else None
    summary["lr_edge"] = edge
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_summary(summary, lr_grid, edge))
    plot(recs, out / "loss_vs_time.png", T)


def phase_split(rs: list[dict], T: float) -> dict:
    """Time and training-loss gain of the hybrid's QUBO phases and SGD phases up to T (each interval
    between monitoring points belongs to the phase of the later point)."""
    acc = {"qubo": ([], []), "sgd": ([], [])}
    for r in rs:
        h = [p for p in r["history"] if p["t"] <= T + 1e-9]
        for ph in acc:
            dt = sum(b["t"] - a["t"] for a, b in zip(h, h[1:]) if b["phase"] == ph)
            gain = sum(a["train_loss"] - b["train_loss"] for a, b in zip(h, h[1:]) if b["phase"] == ph)
            acc[ph][0].append(dt)
            acc[ph][1].append(gain)
    return {f"{ph}_phase_s": statistics.fmean(v[0]) for ph, v in acc.items()} | \
        {f"{ph}_phase_gain": statistics.fmean(v[1]) for ph, v in acc.items()}


def corr_table(corr: list[dict]) -> list[dict]:
    rows = []
    for r in corr:
        rows.append({"run": f"{r['method']}-W{r['bits']}-seed{r['seed']}",
                     **{k: [r[k]["test_loss"], r[k]["test_acc"]] for k in ("fp32", "quantized", "bias", "bias_variance")},
                     "levels_check": r["bias_variance"]["levels_check"],
                     "seconds": r["bias_variance"]["seconds"]})
    return rows


def _f(x, d=4, scale=1.0):
    return "—" if x is None else f"{scale * x[0]:.{d}f} ± {scale * x[1]:.{d}f}"


def format_summary(s: dict, lr_grid: dict | None, edge: dict | None = None) -> str:
    T = s["budget_s"]
    L = ["# BatchNorm after W2 quantization of the digits ResNet-18 (issue 13)", ""]
    if s["correct"]:
        L += ["## (a) Statistics correction of the quantized, BN-folded network", "",
              "Test loss / accuracy (360 test images); correction measured on the 128 calibration images of "
              "the quantization seed; `levels` = integer levels unchanged on every corrected conv "
              "(W' = (a·s)·k; mismatches / max deviation of W'/(a·s) from k).", "",
              "| run | fp32 | quantized | + bias correction | + bias & variance correction | levels | s |",
              "|---|---|---|---|---|---|---|"]
        for r in s["correct"]:
            c = r["levels_check"]
            L.append(f"| {r['run']} | " + " | ".join(f"{r[k][0]:.4f} / {r[k][1]:.2f} %" for k in
                                                    ("fp32", "quantized", "bias", "bias_variance"))
                     + f" | {c['level_mismatches']} / {c['max_abs_level_deviation']:.1e} | {r['seconds']:.0f} |")
        L.append("")
    if s["methods"]:
        st = s["start"]
        L += ["## (b) γ/β of layer4.1 (bn1, bn2: 2,048 parameters) tuned on the training loss", "",
              f"Start (W2 GPTQ network, BN unfolded): train loss {_f(st['train_loss'])}, test loss "
              f"{_f(st['test_loss'])}, test accuracy {_f(st['test_acc'], 2)} %. Every method gets "
              f"{T:.0f} s of optimizer time (monitoring paused); values at t = {T:.0f} s and t = {T / 2:.0f} s, "
              f"mean ± std over seeds {next(iter(s['methods'].values()))['seeds']}.", "",
              f"| method | train loss @{T / 2:.0f}s | train loss @{T:.0f}s | test loss @{T:.0f}s | test acc % @{T:.0f}s "
              "| best test loss ≤ T | s to reach SGD's final loss |", "|---|---|---|---|---|---|---|"]
        for m, r in s["methods"].items():
            tt = [x for x in r["time_to_sgd_final"]]
            ttxt = ", ".join("never" if x is None else f"{x:.0f}" for x in tt)
            L.append(f"| {m} | {_f(r['train_loss_half'], 5)} | {_f(r['train_loss'], 5)} | {_f(r['test_loss'])} | "
                     f"{_f(r['test_acc'], 2)} | {_f(r['best_test_loss'])} | {ttxt} |")
        if "hybrid" in s["methods"]:
            q = s["methods"]["hybrid"]["qubo"]
            L += ["", f"Hybrid: {q['accepted']} of {q['blocks']} block QUBOs accepted on the true loss "
                      f"({q['num_variables']} binary variables each), {_f(q['rounds'], 1)} rounds per run, "
                      f"Gauss–Newton model {_f(q['gauss_newton_s'], 1)} s per round ({q['hessian_samples']} samples "
                      f"for G). Up to T the QUBO phases took {q['qubo_phase_s']:.0f} s and lowered the training loss by "
                      f"{q['qubo_phase_gain']:.4f} nats, the SGD epochs between them {q['sgd_phase_s']:.0f} s for "
                      f"{q['sgd_phase_gain']:.4f} nats (means per run)."]
        if lr_grid:
            L += ["", f"Learning rates (grid at {lr_grid['budget_s']:.0f} s, seed {lr_grid['seed']}; "
                      f"{lr_grid['rule']}): " + "; ".join(f"{r['method']} {r['lr']:g} → {r['final_train_loss']:.5f}"
                                                        f"{' (diverged)' if r['diverged'] else ''}"
                                                        for r in lr_grid["rows"])
                  + f". Used: SGD {lr_grid['best']['sgd']:g}, Adam {lr_grid['best']['adam']:g}."]
        if edge:
            L += ["", "Beyond the grid (same budget and seed): " + "; ".join(
                f"{r['method']} {r['lr']:g} → {r['final_train_loss']:.5f}{' (diverged)' if r['diverged'] else ''}"
                for r in edge["rows"]) + "."]
    return "\n".join(L) + "\n"


def plot(recs: dict, path: Path, T: float) -> None:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for m, rs in recs.items():
        for i, r in enumerate(rs):
            h = r["history"]
            t = [p["t"] for p in h]
            axes[0].plot(t, [max(p["train_loss"], 1e-6) for p in h], color=COLORS.get(m), alpha=0.8,
                         label=m if i == 0 else None, marker="." if m == "hybrid" else None, ms=3)
            axes[1].plot(t, [p["test_loss"] for p in h], color=COLORS.get(m), alpha=0.8, label=m if i == 0 else None)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training cross-entropy (log; clipped at 1e-6)")
    axes[1].set_ylabel("test cross-entropy")
    for ax in axes:
        ax.set_xlabel("optimizer time (s)")
        ax.axvline(T, color="k", lw=0.5, ls=":")
        ax.legend()
    fig.suptitle("W2 GPTQ digits ResNet-18: only layer4.1 bn1/bn2 γ/β trained (one line per seed)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(TUNE_METHODS), choices=TUNE_METHODS)
    ap.add_argument("--stages", nargs="+", default=["correct", "lr", "tune", "summary"],
                    choices=["correct", "lr", "tune", "lr-edge", "summary"])
    ap.add_argument("--budget", type=float, default=60.0, help="optimizer seconds per method and seed")
    ap.add_argument("--lr-budget", type=float, default=15.0, help="seconds per learning-rate grid run")
    ap.add_argument("--hessian-samples", type=int, default=512, help="training samples for the GN matrix")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="runs/bn", help="quantized checkpoints and cached activations")
    ap.add_argument("--out", default="results/bn")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for sub in ("correct", "tune"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    S = Setup(args)
    if "correct" in args.stages:
        stage_correct(S, out)
    lrs = None
    if "lr" in args.stages or "tune" in args.stages:
        lrs = stage_lr(S, out)["best"]
    if "tune" in args.stages:
        stage_tune(S, out, lrs)
    if "lr-edge" in args.stages:
        stage_lr_edge(S, out)
    if "summary" in args.stages:
        stage_summary(S, out)


if __name__ == "__main__":
    main()
