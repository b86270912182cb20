"""Low-bit FC heads: bits × methods × seeds on the embedded default and on synthetic CIFAR-100 features.

For each dataset and seed an SGD baseline head is trained (qubo_nn.train.train_sgd, the same
defaults as ``qubo-nn train``), then quantized at each bit width with
:func:`qubo_nn.quantize.quantize_head`: round-to-nearest, GPTQ-style greedy and QUBO rounding with
each sampler (rtn/greedy are computed once per (seed, bits); each sampler adds a QUBO run).

Datasets:
- ``digits``: the embedded default (qubo_nn.features.get_features: digits, resnet18, weights none,
  64×64), 1,437 train / 360 test images, 10 classes, D = 512.
- ``synthetic``: qubo_nn.featureset.synthetic_features (100 classes, D = 512) with a reduced size
  (``--synthetic-n`` train, ``--synthetic-n-test`` test; defaults 10,000 / 2,000) for time.

Writes (atomically, after every run, so ``--resume`` skips finished runs):
  <out>/sweep.json       every run's record (config, fp32 reference, per-method metrics and energies)
  <out>/table.md         mean ± std over seeds of test accuracy, test loss, QUBO energy, targets
  <out>/accuracy_vs_bits.png
  <out>/ablation.md     (--ablation) one setting changed at a time, digits seed 0

Usage: .venv/bin/python experiments/quantize_sweep.py [--seeds 0 1 2] [--samplers neal tabu] ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qubo_nn.features import FeatureConfig, get_features
from qubo_nn.featureset import synthetic_features
from qubo_nn.head import Head
from qubo_nn.quantize import QuantizeConfig, quantize_head
from qubo_nn.runtime import atomic_path, atomic_write_json, atomic_write_text, portable_path, tensor_digest, versions
from qubo_nn.train import SGDConfig, train_sgd

METHOD_ORDER = ("rtn", "gptq-natural")


def load(dataset: str, args) -> tuple:
    if dataset == "digits":
        cfg = FeatureConfig()
        res = get_features(cfg)
        return res.train, res.test, {"features": vars(cfg), "path": portable_path(res.path)}
    train, test = synthetic_features(n=args.synthetic_n, dim=512, num_classes=100, seed=0,
                                     n_test=args.synthetic_n_test)
    return train, test, {"features": "synthetic_features", "n": args.synthetic_n, "n_test": args.synthetic_n_test,
                         "dim": 512, "num_classes": 100, "seed": 0}


def run_key(dataset: str, seed: int, bits: int, sampler: str) -> str:
    return f"{dataset}/seed{seed}/{bits}bit/{sampler}"


def _flat(v: dict) -> dict:
    """A method's record as (quantized only, + bias refit): the refit run keeps both."""
    pure = v.get("before_refit", v)
    return {"acc": pure["test_acc"], "loss": pure["test_loss"], "energy": v["energy"],
            "improved": v.get("rows_improved"), "time": v["wall_time_s"],
            "refit_acc": v["test_acc"] if "before_refit" in v else None}


def summarize(runs: dict) -> dict:
    """{dataset: {"fp32": {seed: {...}}, "bits": {bits: {method: {seed: {...}}}}}}."""
    out: dict = {}
    for rec in runs.values():
        d = out.setdefault(rec["dataset"], {"fp32": {}, "bits": {}})
        ref = rec["reference"]
        d["fp32"][rec["seed"]] = {"acc": ref["test_acc"], "loss": ref["test_loss"],
                                  "refit_acc": ref.get("refit_bias", {}).get("test_acc")}
        for m, v in rec["methods"].items():
            name = m if m != "qubo" else f"qubo-{rec['sampler']}"
            d["bits"].setdefault(rec["bits"], {}).setdefault(name, {})[rec["seed"]] = _flat(v)
    return out


def _ms(xs) -> str:
    xs = np.asarray(xs, dtype=float)
    return f"{xs.mean():.2f} ± {xs.std():.2f}" if len(xs) > 1 else f"{xs.mean():.2f}"


def table(runs: dict, meta: dict) -> str:
    S = summarize(runs)
    lines = ["# Low-bit FC heads: round-to-nearest vs GPTQ-style greedy vs QUBO rounding", "",
             "Recorded by `experiments/quantize_sweep.py` (every run, its config and versions: `sweep.json`). "
             "Test accuracy in %, mean ± std over seeds (population std); Δ = mean paired difference to the "
             "fp32 head of the same seed, in points; test loss in nats. QUBO energy = the quantized head's "
             "predicted loss on the per-row BQMs (nats; Σ_rows E_row − (C−1)·L0, here L0 + Σ_rows ½ΔᵀH̃Δ: "
             "lower is better, every method scored on the same BQMs). `rows improved` = rows (per seed) where "
             "the sampler beat the greedy/RTN incumbents it started from. `time s`: the method's own time (qubo: "
             "sampling only, after greedy). `+ bias refit`: the same head after "
             "re-fitting its fp32 bias with the weights frozen (L-BFGS); the fp32 line gets the same refit.", "",
             f"Settings: {meta['settings']}", ""]
    for ds, d in S.items():
        seeds = sorted(d["fp32"])
        fp = [d["fp32"][k]["acc"] for k in seeds]
        fpr = [d["fp32"][k]["refit_acc"] for k in seeds if d["fp32"][k]["refit_acc"] is not None]
        lines += [f"## {ds}", "", meta["datasets"][ds], "",
                  f"fp32 head (SGD baseline, seeds {seeds}): test accuracy **{_ms(fp)}**, "
                  f"test loss {_ms([d['fp32'][k]['loss'] for k in seeds])}"
                  + (f"; with the bias refit {_ms(fpr)}" if fpr else ""), "",
                  "| bits | method | test acc % | Δ vs fp32 | test loss | QUBO energy | rows improved | time s "
                  "| + bias refit: acc % |", "|---|---|---|---|---|---|---|---|---|"]
        for bits in sorted(d["bits"]):
            for name, cell in sorted(d["bits"][bits].items(), key=lambda kv: _order(kv[0])):
                ks = sorted(cell)
                acc = [cell[k]["acc"] for k in ks]
                delta = np.mean([cell[k]["acc"] - d["fp32"][k]["acc"] for k in ks])
                imp = [cell[k]["improved"] for k in ks if cell[k]["improved"] is not None]
                refit = [cell[k]["refit_acc"] for k in ks if cell[k]["refit_acc"] is not None]
                lines.append(f"| {bits} | {name} | {_ms(acc)} | {delta:+.2f} | {_ms([cell[k]['loss'] for k in ks])} | "
                             f"{np.mean([cell[k]['energy'] for k in ks]):.4f} | "
                             f"{'/'.join(str(i) for i in imp)} | {np.mean([cell[k]['time'] for k in ks]):.1f} | "
                             f"{_ms(refit) if refit else ''} |")
        lines.append("")
        lines += targets(ds, d)
    return "\n".join(lines) + "\n"


def _order(name: str) -> tuple:
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)


def targets(ds: str, d: dict) -> list[str]:
    """The issue's targets, on the quantized heads without the bias refit (set for the embedded
    default; checked on every dataset)."""
    out = [f"Targets ({ds}; quantized heads, no bias refit):", ""]
    seeds = sorted(d["fp32"])
    fp = np.mean([d["fp32"][k]["acc"] for k in seeds])
    for name, cell in d["bits"].get(4, {}).items():
        if name.startswith("qubo"):
            acc = np.mean([cell[k]["acc"] for k in sorted(cell)])
            ok = acc >= fp - 0.3
            out.append(f"- 4-bit {name} within 0.3 points of fp32: {acc:.2f} vs {fp:.2f} "
                       f"({acc - fp:+.2f}) → **{'met' if ok else 'MISSED'}**")
    two = d["bits"].get(2, {})
    if "rtn" in two and "gptq-natural" in two:
        base = {m: np.mean([two[m][k]["acc"] for k in sorted(two[m])]) for m in ("rtn", "gptq-natural")}
        for name, cell in two.items():
            if name.startswith("qubo"):
                acc = np.mean([cell[k]["acc"] for k in sorted(cell)])
                ok = acc > base["rtn"] and acc > base["gptq-natural"]
                wins = sum(cell[k]["acc"] > max(two["rtn"][k]["acc"], two["gptq-natural"][k]["acc"]) for k in sorted(cell))
                ties = sum(cell[k]["acc"] == max(two["rtn"][k]["acc"], two["gptq-natural"][k]["acc"]) for k in sorted(cell))
                out.append(f"- 2-bit {name} ahead of RTN ({base['rtn']:.2f}) and greedy ({base['gptq-natural']:.2f}): "
                           f"{acc:.2f} → **{'met' if ok else 'MISSED'}** (per seed: ahead of both on {wins}, "
                           f"tied with the better on {ties}, of {len(cell)})")
    return out + [""]


def plot(runs: dict, path: Path) -> None:
    """Top row: test accuracy vs bits (mean ± std over seeds), fp32 as a dashed line. Bottom row:
    the paired change vs the fp32 head of the same seed (the seeds' fp32 heads differ by points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = summarize(runs)
    fig, axes = plt.subplots(2, len(S), figsize=(6.2 * len(S), 8.4), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    styles = {"rtn": ("tab:gray", "s"), "gptq-natural": ("tab:blue", "o"), "qubo-neal": ("tab:red", "^"),
              "qubo-tabu": ("tab:green", "v"), "qubo-steepest": ("tab:purple", "D")}
    for col, (ds, d) in enumerate(S.items()):
        top, bottom = axes[0, col], axes[1, col]
        bits = sorted(d["bits"])
        names = sorted({n for b in bits for n in d["bits"][b]}, key=_order)
        for k, name in enumerate(names):
            xs, ms, ss, dm, ds_ = [], [], [], [], []
            for b in bits:
                cell = d["bits"][b].get(name)
                if cell:
                    a = np.array([cell[s]["acc"] for s in sorted(cell)])
                    delta = a - np.array([d["fp32"][s]["acc"] for s in sorted(cell)])
                    xs.append(b + (k - (len(names) - 1) / 2) * 0.06)
                    ms.append(a.mean())
                    ss.append(a.std())
                    dm.append(delta.mean())
                    ds_.append(delta.std())
            color, marker = styles.get(name, (None, "x"))
            top.errorbar(xs, ms, yerr=ss, color=color, marker=marker, capsize=3, label=name)
            bottom.errorbar(xs, dm, yerr=ds_, color=color, marker=marker, capsize=3, label=name)
        fp = np.array([v["acc"] for v in d["fp32"].values()])
        top.axhline(fp.mean(), color="black", ls="--", lw=1, label=f"fp32 head ({fp.mean():.2f}%)")
        bottom.axhline(0.0, color="black", ls="--", lw=1, label="fp32 head")
        top.set_title(f"{ds}: mean ± std over {len(fp)} seed(s)")
        top.set_ylabel("test accuracy (%)")
        bottom.set_ylabel("test accuracy − fp32, same seed (points)")
        bottom.set_xlabel("bits per weight (per-row symmetric grid; bias fp32)")
        for ax in (top, bottom):
            ax.set_xticks(bits)
            ax.grid(alpha=0.3)
        top.legend(loc="lower right", fontsize=8)
    fig.suptitle("Quantized FC head (no bias refit): test accuracy vs bits per method")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


ABLATION = [  # (label, QuantizeConfig overrides): one change at a time from the sweep's settings
    ("sweep settings", {}),
    ("damping 0.1", {"damping_rel": 0.1}),
    ("gradient term, damping 0.01", {"use_grad": True}),
    ("gradient term, damping 1", {"use_grad": True, "damping_rel": 1.0}),
    ("gradient term, damping 10", {"use_grad": True, "damping_rel": 10.0}),
    ("scale maxabs", {"scale": "maxabs"}),
    ("QUBO window 2 bits", {"window_bits": 2}),
    ("neal's own (hot) schedule", {"refine_span": None}),
]


def ablation(train, test, args, seed: int = 0) -> tuple[list[dict], str]:
    """One change at a time, digits seed ``seed``, 2 and 4 bits, neal: records and a markdown table."""
    sgd = SGDConfig(epochs=args.epochs, lr=0.05, seed=seed)
    head, _ = train_sgd(Head.init_like_linear(train.num_classes, train.dim, seed=seed), train, test, sgd,
                        device=args.device)
    rows = []
    for bits in (2, 4):
        for label, over in ABLATION:
            kw = dict(bits=bits, method="qubo", sampler="neal", scale=args.scale, num_reads=args.num_reads,
                      damping_rel=args.damping, device=args.device, seed=seed)
            kw.update(over)
            res = quantize_head(head.to("cpu"), train, test, QuantizeConfig(**kw))
            rows.append({"bits": bits, "label": label, "overrides": over, "fp32_test_acc": res.reference["test_acc"],
                         "methods": {m: {"test_acc": v.metrics["test_acc"], "test_loss": v.metrics["test_loss"],
                                         "energy": v.energy, "rows_improved": v.info.get("rows_improved")}
                                     for m, v in res.methods.items()}})
            print(f"ablation {bits}-bit {label}: " + "  ".join(
                f"{m} {v['test_acc']:.2f}" for m, v in rows[-1]["methods"].items()), flush=True)
    lines = [f"# Ablation: one setting changed at a time (digits, seed {seed}, neal)", "",
             "Test accuracy % of the quantized heads (no bias refit); energy = predicted loss on that run's "
             "BQMs (not comparable across rows that change the objective: damping, gradient term). "
             f"fp32 head: {rows[0]['fp32_test_acc']:.2f} %.", "",
             "| bits | change | rtn | greedy | qubo-neal | qubo energy | greedy energy | rows improved |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["methods"]
        lines.append(f"| {r['bits']} | {r['label']} | {m['rtn']['test_acc']:.2f} | {m['gptq-natural']['test_acc']:.2f} | "
                     f"{m['qubo']['test_acc']:.2f} | {m['qubo']['energy']:.4f} | {m['gptq-natural']['energy']:.4f} | "
                     f"{m['qubo']['rows_improved']} |")
    return rows, "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/quantize")
    p.add_argument("--datasets", nargs="+", default=["digits", "synthetic"], choices=["digits", "synthetic"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--synthetic-seeds", nargs="+", type=int, default=None,
                   help="seeds on the synthetic set [default: --seeds]")
    p.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--samplers", nargs="+", default=["neal", "tabu"])
    p.add_argument("--synthetic-samplers", nargs="+", default=None, help="[default: --samplers]")
    p.add_argument("--sampler-params", default="{}", help="JSON: {sampler: {param: value}}")
    p.add_argument("--num-reads", type=int, default=4)
    p.add_argument("--scale", default="mse", choices=["maxabs", "mse"])
    p.add_argument("--damping", type=float, default=0.01)
    p.add_argument("--synthetic-n", type=int, default=10_000)
    p.add_argument("--synthetic-n-test", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="keep finished runs of an existing sweep.json")
    p.add_argument("--ablation", action="store_true", help="also run the one-change-at-a-time ablation (digits)")
    p.add_argument("--replot", action="store_true", help="only rewrite table.md and the plot from sweep.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    sampler_params = json.loads(args.sampler_params)
    runs: dict = {}
    abl: list = []
    if args.resume and (out / "sweep.json").exists():
        old = json.loads((out / "sweep.json").read_text())
        runs, abl = old["runs"], old.get("ablation", [])
    if args.replot:
        old = json.loads((out / "sweep.json").read_text())
        atomic_write_text(out / "table.md", table(old["runs"], old["meta"]))
        plot(old["runs"], out / "accuracy_vs_bits.png")
        return 0
    meta = {"settings": (f"per-row symmetric grid, scale `{args.scale}`, bias fp32, Hessian damping "
                         f"{args.damping} × mean diag, objective without the gradient term (GPTQ's), QUBO window "
                         f"1 bit (floor/ceil, shifted to hold the greedy level), {args.num_reads} reads per row "
                         "started from the "
                         f"greedy and RTN solutions (neal: refinement schedule β_cold/100 → β_cold), "
                         f"sampler params {sampler_params or 'defaults'}; SGD baseline {args.epochs} epochs "
                         f"(lr 0.05, momentum 0.9, batch 64)"),
            "datasets": {"digits": "embedded default: digits, resnet18 weights none, 64×64; 1,437 train / 360 test, "
                                   "10 classes, D = 512",
                         "synthetic": f"synthetic_features, CIFAR-100-shaped but reduced: {args.synthetic_n:,} train / "
                                      f"{args.synthetic_n_test:,} test, 100 classes, D = 512"}}

    def save() -> None:
        atomic_write_json(out / "sweep.json", {"meta": meta, "args": vars(args), "versions": versions(), "runs": runs,
                                               "ablation": abl})
        atomic_write_text(out / "table.md", table(runs, meta))
        plot(runs, out / "accuracy_vs_bits.png")

    for ds in args.datasets:
        train, test, source = load(ds, args)
        seeds = args.synthetic_seeds if (ds == "synthetic" and args.synthetic_seeds) else args.seeds
        samplers = args.synthetic_samplers if (ds == "synthetic" and args.synthetic_samplers) else args.samplers
        for seed in seeds:
            head = None
            for bits in args.bits:
                for k, sampler in enumerate(samplers):
                    key = run_key(ds, seed, bits, sampler)
                    if key in runs:
                        continue
                    if head is None:
                        sgd = SGDConfig(epochs=args.epochs, lr=0.05, seed=seed)
                        head0 = Head.init_like_linear(train.num_classes, train.dim, seed=seed)
                        head, _ = train_sgd(head0, train, test, sgd, device=args.device)
                        head = head.to("cpu")
                    cfg = QuantizeConfig(bits=bits, method="qubo", sampler=sampler, scale=args.scale,
                                         sampler_params=sampler_params.get(sampler, {}), num_reads=args.num_reads,
                                         damping_rel=args.damping, refit_bias=True, device=args.device, seed=seed)
                    t0 = time.perf_counter()
                    res = quantize_head(head, train, test, cfg, progress=False)
                    rec = res.record()
                    runs[key] = {"dataset": ds, "seed": seed, "bits": bits, "sampler": sampler,
                                 "source": source, "head_digest": tensor_digest(head.W, head.b),
                                 "sgd": vars(SGDConfig(epochs=args.epochs, lr=0.05, seed=seed)),
                                 "reference": rec["reference"], "config": rec["config"], "timings": rec["timings"],
                                 "methods": {m: {kk: vv for kk, vv in v.items() if kk != "row_energies"}
                                             for m, v in rec["methods"].items()
                                             if m == "qubo" or k == 0}}
                    msg = "  ".join(f"{m} {_flat(v)['acc']:.2f}" for m, v in runs[key]["methods"].items())
                    print(f"{key}: fp32 {rec['reference']['test_acc']:.2f}  {msg}  "
                          f"({time.perf_counter() - t0:.1f} s)", flush=True)
                    save()
    if args.ablation and not abl:
        train, test, _ = load("digits", args)
        abl, text = ablation(train, test, args)
        atomic_write_text(out / "ablation.md", text)
    save()
    print(table(runs, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
