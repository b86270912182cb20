"""Channel-pruning sweep on the digits-trained ResNet-18 (``qubo-nn pretrain``'s default checkpoint).

For each calibration seed (which ``--calib`` train images are drawn):

1. statistics of every prunable layer (input of each block's conv2) from the original network;
2. per layer (``--layers``) and keep fraction (``--keeps``): masks by l1 / greedy / lasso / qubo
   (qubo = the project's sampler on the exact quadratic, started from the best of the other
   three), scored on the same objective E(s)/‖Y‖² (before refit) and after the least-squares
   refit; end-to-end test loss/accuracy of the network with only that layer pruned and refit
   (no BatchNorm re-estimation: the refit reproduces the layer's original output, so the BN
   statistics downstream still apply); time per method. QUBO variants scored on the energy
   only: the CQM route (dimod's cqm_to_bqm, its default λ), neal instead of tabu, tabu from
   random starts (no baseline initial states);
3. whole-network prune (all 8 block layers at once, each layer's statistics from the original
   network: one pass shared by the methods) per keep fraction and method: test loss/accuracy
   before and after BatchNorm re-estimation on the calibration images, multiply-adds kept.

Writes results/prune/per-seed/seed<k>.json after each seed (a rerun skips finished seeds),
then summary.json, summary.md (tables) and two plots. ``--replot`` rebuilds the summary and
plots from the per-seed files.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_model
from qubo_nn.train.pretrain import evaluate_model
from qubo_nn.workflows.prune import keep_count, pruning_problem, refit_error, refit_weights
from qubo_nn.workflows.prune.network import (PruneConfig, apply_mask, conv_macs, l1_scores, prunable_layers,
    prune_network, reestimate_batchnorm, select_mask, stats_for)
from qubo_nn.workflows.prune.run import default_checkpoint, load_data
from qubo_nn.workflows.prune.select import select_qubo
from qubo_nn.runtime import atomic_write_json, atomic_write_text, machine_info, sha256_file, versions

METHODS = ("l1", "greedy", "lasso", "qubo")
LAYERS = ("layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2")
QUBO_PARAMS = {"num_reads": 4, "timeout": 500}       # tabu: 4 reads × 0.5 s


def blocks_of(model):
    """(stem, [(name, block)], head) of a torchvision ResNet: the forward pass as a list."""
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    blocks = [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
    return stem, blocks, lambda x: model.fc(torch.flatten(model.avgpool(x), 1))


@torch.no_grad()
def activations_before(model, block: str, images: torch.Tensor) -> torch.Tensor:
    """Input of ``block`` for ``images`` (the part of the network before it is not pruned)."""
    stem, blocks, _ = blocks_of(model.eval())
    x = torch.cat([stem(images[i:i + 120]) for i in range(0, len(images), 120)])
    for name, b in blocks:
        if name == block:
            return x
        x = b(x)
    raise ValueError(block)


@torch.no_grad()
def evaluate_from(model, block: str, acts: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(test loss, acc %) of ``model`` run from ``block`` onward on cached activations."""
    import torch.nn.functional as F

    _, blocks, head = blocks_of(model.eval())
    names = [n for n, _ in blocks]
    loss, correct = 0.0, 0
    for i in range(0, len(labels), 120):
        x = acts[i:i + 120]
        for _, b in blocks[names.index(block):]:
            x = b(x)
        logits = head(x).double()
        loss += float(F.cross_entropy(logits, labels[i:i + 120], reduction="sum"))
        correct += int((logits.argmax(1) == labels[i:i + 120]).sum())
    return loss / len(labels), 100.0 * correct / len(labels)


def run_seed(model, seed: int, args, acts_cache) -> dict:
    t_seed = time.perf_counter()
    X_cal, X_test, y_test = load_data("digits", 64, args.calib, seed)
    layers = {pl.consumer: pl for pl in prunable_layers(model)}
    t0 = time.perf_counter()
    stats = {name: stats_for(model, pl, X_cal) for name, pl in layers.items()}
    stats_s = time.perf_counter() - t0
    cfg = PruneConfig(sampler="tabu", sampler_params=dict(QUBO_PARAMS), seed=seed)
    per_layer = []
    for name in args.layers:
        pl = layers[name]
        block = name.rsplit(".", 1)[0]
        if block not in acts_cache:
            acts_cache[block] = activations_before(model, block, X_test)
        st, scale = stats[name]
        W = model.get_submodule(name).weight.detach()
        problem = pruning_problem(st, W, out_scale=scale)
        l1 = l1_scores(model, pl)
        for keep in args.keeps:
            k = keep_count(pl.channels, keep)
            mask_q, info_q, base = select_mask(problem, k, "qubo", l1, cfg, seed=seed)
            masks = {m: (base[m]["mask"], base[m]["wall_time_s"]) for m in ("l1", "greedy", "lasso")}
            masks["qubo"] = (mask_q, info_q["wall_time_s"])
            for method, (mask, sel_s) in masks.items():
                t1 = time.perf_counter()
                new_w = refit_weights(st, W, mask, damping=cfg.refit_damping)
                refit_s = time.perf_counter() - t1
                net = copy.deepcopy(model)
                apply_mask(net, pl, mask, new_w)
                loss, acc = evaluate_from(net, block, acts_cache[block], y_test)
                row = {"seed": seed, "layer": name, "n": pl.channels, "k": k, "keep": keep, "method": method,
                       "error": problem.relative_error(mask),
                       "error_refit": refit_error(st, new_w, out_scale=scale) / problem.yy,
                       "select_s": sel_s, "refit_s": refit_s, "test_loss": loss, "test_acc": acc}
                if method == "qubo":
                    row["total_s"] = sel_s + info_q["baselines_wall_time_s"]
                    row["qubo"] = {k2: info_q[k2] for k2 in ("started_from", "improved_over_initial",
                                                             "feasible_fraction", "penalty", "from_initial")}
                per_layer.append(row)
            # QUBO variants: energy only
            init = sorted((base[m]["mask"] for m in base), key=problem.error)
            variants = {"tabu-cqm": dict(sampler="tabu", mode="cqm", initial=init, params=dict(QUBO_PARAMS)),
                        "neal-safe": dict(sampler="neal", mode="penalty", initial=init,
                                          params={"num_reads": 4, "num_sweeps": 1000}),
                        "tabu-scratch": dict(sampler="tabu", mode="penalty", initial=None, params=dict(QUBO_PARAMS))}
            for vname, kw in variants.items():
                m, info = select_qubo(problem, k, seed=seed, **kw)
                per_layer.append({"seed": seed, "layer": name, "n": pl.channels, "k": k, "keep": keep,
                                  "method": f"qubo:{vname}", "error": problem.relative_error(m),
                                  "select_s": info["wall_time_s"], "feasible_fraction": info["feasible_fraction"],
                                  "improved_over_initial": info["improved_over_initial"],
                                  "penalty": info["penalty"]})
            print(f"seed {seed} {name} keep {keep}: " + ", ".join(
                f"{r['method']} {r['error']:.4f}" for r in per_layer if r["layer"] == name and r["keep"] == keep),
                flush=True)
    whole = []
    macs0 = conv_macs(model)
    for keep in args.keeps:
        for method in METHODS:
            pcfg = PruneConfig(layer="all", keep=keep, method=method, sampler="tabu",
                               sampler_params=dict(QUBO_PARAMS), reestimate_bn=False, seed=seed)
            t1 = time.perf_counter()
            net, rep = prune_network(model, X_cal, pcfg, stats=stats)
            prune_s = time.perf_counter() - t1
            loss0, acc0 = evaluate_model(net, X_test, y_test)
            reestimate_batchnorm(net, X_cal)
            loss1, acc1 = evaluate_model(net, X_test, y_test)
            macs = conv_macs(net)
            whole.append({"seed": seed, "keep": keep, "method": method, "prune_s": prune_s,
                          "select_s": sum(r["select_s"] for r in rep["layers"]),
                          "test_loss_before_bn": loss0, "test_acc_before_bn": acc0,
                          "test_loss": loss1, "test_acc": acc1, "macs_kept": macs / macs0,
                          "errors": {r["layer"]: r["error_before_refit"] for r in rep["layers"]},
                          "errors_refit": {r["layer"]: r["error_after_refit"] for r in rep["layers"]}})
            print(f"seed {seed} whole keep {keep} {method}: acc {acc0:.2f} -> BN {acc1:.2f}, loss {loss0:.4f} -> "
                  f"{loss1:.4f}, MACs {100 * macs / macs0:.1f} %", flush=True)
    return {"seed": seed, "calib": args.calib, "stats_s": stats_s, "per_layer": per_layer, "whole": whole,
            "wall_time_s": time.perf_counter() - t_seed, "loadavg_end": os.getloadavg()}


def summarize(out: Path, base: dict) -> dict:
    seeds = [json.loads(p.read_text()) for p in sorted((out / "per-seed").glob("seed*.json"))]
    per_layer = [r for s in seeds for r in s["per_layer"]]
    whole = [r for s in seeds for r in s["whole"]]

    def agg(rows, key):
        v = np.array([r[key] for r in rows], dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}

    table = []
    for layer in sorted({r["layer"] for r in per_layer}):
        for keep in sorted({r["keep"] for r in per_layer}, reverse=True):
            for method in sorted({r["method"] for r in per_layer}, key=lambda m: (":" in m, m)):
                rows = [r for r in per_layer if r["layer"] == layer and r["keep"] == keep and r["method"] == method]
                if not rows:
                    continue
                ent = {"layer": layer, "keep": keep, "method": method, "n": rows[0]["n"], "k": rows[0]["k"],
                       "error": agg(rows, "error"), "select_s": agg(rows, "select_s")}
                for key in ("error_refit", "test_loss", "test_acc", "total_s"):
                    if key in rows[0]:
                        ent[key] = agg(rows, key)
                table.append(ent)
    # paired comparison: qubo vs each baseline, same (seed, layer, keep)
    paired = {}
    for other in ("greedy", "lasso", "l1"):
        gains, wins, ties = [], 0, 0
        for r in (r for r in per_layer if r["method"] == "qubo"):
            o = next(x for x in per_layer if x["method"] == other and x["seed"] == r["seed"]
                     and x["layer"] == r["layer"] and x["keep"] == r["keep"])
            gains.append(100.0 * (o["error"] - r["error"]) / o["error"])
            wins += r["error"] < o["error"] * (1 - 1e-9)
            ties += abs(r["error"] - o["error"]) <= 1e-9 * o["error"]
        paired[other] = {"cases": len(gains), "qubo_lower": int(wins), "equal": int(ties),
                         "mean_reduction_pct": float(np.mean(gains)), "max_reduction_pct": float(np.max(gains))}
    wtable = []
    for keep in sorted({r["keep"] for r in whole}, reverse=True):
        for method in METHODS:
            rows = [r for r in whole if r["keep"] == keep and r["method"] == method]
            if rows:
                wtable.append({"keep": keep, "method": method,
                               **{k: agg(rows, k) for k in ("test_acc_before_bn", "test_loss_before_bn", "test_acc",
                                                            "test_loss", "macs_kept", "select_s")}})
    summary = {**base, "seeds": [s["seed"] for s in seeds], "per_layer": table, "paired_error_vs_qubo": paired,
               "whole_network": wtable, "seed_wall_time_s": [s["wall_time_s"] for s in seeds]}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", markdown(summary))
    plot(out, whole, table)
    return summary


def markdown(s: dict) -> str:
    f = lambda a, d=4: f"{a['mean']:.{d}f} ± {a['std']:.{d}f}"   # noqa: E731
    lines = [f"# Channel pruning sweep (seeds {s['seeds']}, {s['calib']} calibration images)", "",
             f"Original network: test accuracy {s['original']['acc']:.2f} %, test loss {s['original']['loss']:.4f}.",
             "", "## Per layer (only that layer pruned; refit, no BN re-estimation)", "",
             "| layer | n | keep | method | E/‖Y‖² before refit | after refit | test loss | test acc % | select s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in s["per_layer"]:
        tl = f(r["test_loss"]) if "test_loss" in r else ""
        ta = f(r["test_acc"], 2) if "test_acc" in r else ""
        er = f(r["error_refit"]) if "error_refit" in r else ""
        sel = f"{r['select_s']['mean']:.3f}" + (f" (+ baselines: {r['total_s']['mean']:.3f})" if "total_s" in r else "")
        lines.append(f"| {r['layer']} | {r['n']} | {r['keep']} | {r['method']} | {f(r['error'])} | {er} | {tl} | "
                     f"{ta} | {sel} |")
    lines += ["", "## QUBO vs each baseline on E before refit (paired, same seed/layer/keep)", "",
              "| baseline | cases | QUBO lower | equal | mean reduction % | max reduction % |", "|---|---|---|---|---|---|"]
    for name, p in s["paired_error_vs_qubo"].items():
        lines.append(f"| {name} | {p['cases']} | {p['qubo_lower']} | {p['equal']} | {p['mean_reduction_pct']:.3f} | "
                     f"{p['max_reduction_pct']:.3f} |")
    lines += ["", "## Whole network (8 block layers; statistics from the original network)", "",
              "| keep | method | MACs kept | test acc % (no BN re-est.) | test loss (no BN re-est.) | test acc % "
              "(BN re-est.) | test loss (BN re-est.) | select s |", "|---|---|---|---|---|---|---|---|"]
    for r in s["whole_network"]:
        lines.append(f"| {r['keep']} | {r['method']} | {r['macs_kept']['mean']:.3f} | {f(r['test_acc_before_bn'], 2)} | "
                     f"{f(r['test_loss_before_bn'])} | {f(r['test_acc'], 2)} | {f(r['test_loss'])} | "
                     f"{r['select_s']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(out: Path, whole: list, table: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method in METHODS:
        keeps = sorted({r["keep"] for r in whole})
        pts = []
        for keep in keeps:
            rows = [r for r in whole if r["keep"] == keep and r["method"] == method]
            if rows:
                pts.append((np.mean([r["macs_kept"] for r in rows]),
                            [np.array([r[k] for r in rows]) for k in ("test_acc", "test_loss", "test_acc_before_bn")]))
        if not pts:
            continue
        x = [p[0] for p in pts]
        for ax, j in zip(axes[:2], (0, 1)):
            ax.errorbar(x, [p[1][j].mean() for p in pts], yerr=[p[1][j].std() for p in pts], marker="o", capsize=3,
                        label=method)
        axes[2].errorbar(x, [p[1][2].mean() for p in pts], yerr=[p[1][2].std() for p in pts], marker="o", capsize=3,
                         label=method)
    axes[0].set_title("whole-network prune: test accuracy (BN re-estimated)")
    axes[1].set_title("test loss (BN re-estimated)")
    axes[2].set_title("test accuracy (no BN re-estimation)")
    for ax in axes:
        ax.set_xlabel("multiply-adds kept (fraction of the original)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("%")
    axes[1].set_ylabel("cross-entropy")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_macs.png", dpi=120)
    plt.close(fig)

    layers = sorted({r["layer"] for r in table})
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.8), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for method in METHODS:
            rows = sorted((r for r in table if r["layer"] == layer and r["method"] == method), key=lambda r: r["keep"])
            ax.errorbar([r["keep"] for r in rows], [r["error"]["mean"] for r in rows],
                        yerr=[r["error"]["std"] for r in rows], marker="o", capsize=3, label=method)
        ax.set_title(f"{layer} (n={rows[0]['n']})")
        ax.set_xlabel("keep fraction")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("E(s)/‖Y‖² before refit")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out / "layer_error.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/prune")
    ap.add_argument("--replot", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "per-seed").mkdir(parents=True, exist_ok=True)
    weights = default_checkpoint()
    model = build_model("resnet18", str(weights), num_classes=data.num_classes("digits"))
    base_path = out / "base.json"
    if base_path.is_file():
        base = json.loads(base_path.read_text())
    else:
        _, X_test, y_test = load_data("digits", 64, 1, 0)
        loss, acc = evaluate_model(model, X_test, y_test)
        base = {"checkpoint": weights.name, "checkpoint_sha256": sha256_file(weights), "calib": args.calib,
                "layers": args.layers, "keeps": args.keeps, "qubo": {"sampler": "tabu", "params": QUBO_PARAMS,
                                                                     "penalty": "safe"},
                "refit_damping": PruneConfig().refit_damping, "original": {"loss": loss, "acc": acc},
                "versions": versions(), "machine": machine_info()}
        atomic_write_json(base_path, base)
    if not args.replot:
        acts = {}
        for seed in args.seeds:
            path = out / "per-seed" / f"seed{seed}.json"
            if path.is_file():
                print(f"seed {seed}: done, skipped", flush=True)
                continue
            atomic_write_json(path, run_seed(model, seed, args, acts))
    s = summarize(out, base)
    print(markdown(s))


if __name__ == "__main__":
    main()
