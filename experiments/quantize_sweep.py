"""Low-bit FC heads on stable fp32 heads: bits × methods × seeds on digits and the realistic synthetic set.

For each dataset the fp32 head is the reference head (:func:`qubo_nn.train.sgd.reference_head`: the
L2-regularised convex optimum, L2 chosen on a held-out 20 % of train), fitted ONCE per dataset and
saved under ``<out>/heads/<dataset>.pt`` (+ ``.json``: digest, L2 path, fit info); a rerun reuses it
when the feature digest matches. Each (dataset, seed, bits) run is one
:func:`qubo_nn.workflows.head_quantize.quantize_head` call with the library's default QUBO config (method
``qubo``, sampler neal, binary encoding, 1-bit window, 4 reads, damping 0.01): it computes every
method (rtn, gptq-natural, gptq act-order, cd, qubo) on the same per-row integer problems.

What a seed varies: ``QuantizeConfig.seed`` only, i.e. the annealer's seed (per row:
``child_seed(seed, row)``) and, where ``--subsample`` applies (synthetic-features), the random
training subset the Hessian blocks are computed from. The head and the features are the same for
every seed. Hence on digits (full Hessian) rtn, gptq-natural, gptq and cd are deterministic and
their std over seeds is exactly 0; only qubo can move.

Datasets:
- ``digits``: the embedded default features (qubo_nn.data.features.get_features(FeatureConfig()):
  digits, resnet18, weights none, 64×64), 1,437 train / 360 test, 10 classes, D = 512.
- ``synthetic-features``: :func:`qubo_nn.data.featureset.realistic_features` (seed 0; D = 512, 100
  classes; ``--synthetic-n`` / ``--synthetic-n-test``, default the full 50,000 / 10,000), Hessian
  blocks from ``--subsample`` training samples (default 10,000).

Writes (atomically; a finished run is skipped on the next call):
  <out>/heads/<dataset>.pt, .json        the fp32 head and how it was fitted
  <out>/runs/<dataset>/<b>bit-seed<k>.json one record per run (digests, machine, versions, config, metrics)
  <out>/jitter/<dataset>.json             (--jitter) train.jitter_check of the fp32 fit at the chosen L2
  <out>/summary.json, table.md, accuracy_vs_bits.png   recomputed from the per-run records

Usage: .venv/bin/python experiments/quantize_sweep.py [--datasets digits synthetic-features] [--seeds 0 1 2 3 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = ("digits", "synthetic-features")
METHOD_LABELS = {"rtn": "rtn", "gptq-natural": "gptq natural order", "gptq": "gptq act-order",
                 "cd": "cd (from gptq act-order)", "qubo": "qubo (default pipeline, neal)"}
METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "energy", "wall_time_s")
# the realistic set's L2 grid: the one of benchmarks/bench_features.py (around the calibration's choice)
REALISTIC_L2_GRID = (3e-2, 1e-2, 3e-3)
SEED_NOTE = ("a seed varies QuantizeConfig.seed only: the annealer's seed (per row) and, where the Hessian is "
             "subsampled, the training subset of the Hessian blocks; the fp32 head and the features are the "
             "same for every seed, so a method without randomness has std 0 where the Hessian is not subsampled")


# ---------------------------------------------------------------- data and heads

def load(dataset: str, args) -> tuple:
    """(train, test, source) of ``dataset``; source says what the features are."""
    from qubo_nn.data.features import FeatureConfig, get_features
    from qubo_nn.runtime import portable_path

    if dataset == "digits":
        cfg = FeatureConfig(device="cpu")
    else:
        cfg = FeatureConfig(dataset="synthetic-features", n_train=args.synthetic_n, n_test=args.synthetic_n_test,
                            device="cpu")
    res = get_features(cfg)
    fc = {k: v for k, v in vars(cfg).items() if k not in ("cache_dir", "data_root", "device")}
    if dataset != "digits":
        fc = {k: fc[k] for k in ("dataset", "n_train", "n_test", "seed")} | {"dim": 512, "num_classes": 100}
    return res.train, res.test, {"features": fc, "path": portable_path(res.path),
                                 "n_train": res.train.n, "n_test": res.test.n, "dim": res.train.dim,
                                 "num_classes": res.train.num_classes}


def fit_settings(dataset: str) -> dict:
    """reference_head's keyword arguments per dataset (digits: the library default, as `qubo-nn quantize head
    --fp32-head reference`; the realistic set: float32 and the grid of bench_features, for time)."""
    if dataset == "digits":
        return {"seed": 0, "device": "cpu"}
    return {"seed": 0, "device": "cpu", "dtype": "float32", "max_iter": 200, "tol": 1e-6,
            "l2_grid": REALISTIC_L2_GRID}


def refit_settings(dataset: str, l2: float) -> dict:
    """convex_optimum's keyword arguments for a refit at the chosen ``l2`` (the jitter check)."""
    s = fit_settings(dataset)
    return {"l2": l2, "device": "cpu", "dtype": s.get("dtype", "float64"), "max_iter": s.get("max_iter", 300),
            "tol": s.get("tol", 1e-7)}


def get_head(dataset: str, train, test, out: Path, features_digest: str) -> tuple[Any, dict]:
    """The fp32 reference head of ``dataset``: loaded from ``out/heads`` when it was fitted on the same
    features (digest), else fitted and saved atomically (.pt, then .json)."""
    import torch

    from qubo_nn.io.heads import load_head_file
    from qubo_nn.core.head import evaluate
    from qubo_nn.runtime import atomic_path, atomic_write_json, machine_info, tensor_digest, versions
    from qubo_nn.train.sgd import reference_head

    pt, js = out / "heads" / f"{dataset}.pt", out / "heads" / f"{dataset}.json"
    if pt.exists() and js.exists():
        meta = json.loads(js.read_text())
        head = load_head_file(pt)
        if meta["features_digest"] == features_digest and tensor_digest(head.W, head.b) == meta["head_digest"]:
            return head, meta
        print(f"{pt}: fitted on other features or damaged; refitting", flush=True)
    settings = fit_settings(dataset)
    machine = machine_info("cpu")
    t0 = time.perf_counter()
    head, info = reference_head(train, **settings)
    head = head.to("cpu")
    with atomic_path(pt) as tmp:
        torch.save(head.state_dict(), tmp)
    tl, ta = evaluate(head, test)
    meta = {"dataset": dataset, "features_digest": features_digest, "head_digest": tensor_digest(head.W, head.b),
            "reference_head": {k: v for k, v in settings.items()}, "info": info, "test_loss": tl, "test_acc": ta,
            "wall_time_s": time.perf_counter() - t0, "machine": machine,
            "load_average_1m_end": os.getloadavg()[0], "versions": versions()}
    atomic_write_json(js, meta)
    return head, meta


# ---------------------------------------------------------------- runs

def run_path(out: Path, dataset: str, bits: int, seed: int) -> Path:
    return out / "runs" / dataset / f"{bits}bit-seed{seed}.json"


def quantize_config(dataset: str, bits: int, seed: int, args):
    """The library's default QUBO config (QuantizeConfig defaults) at ``bits``, ``seed``; the Hessian
    subsampled on the synthetic set only."""
    from qubo_nn.workflows.head_quantize import QuantizeConfig

    sub = args.subsample if dataset != "digits" else None
    return QuantizeConfig(bits=bits, method="qubo", sampler="neal", subsample=sub, device="cpu", seed=seed)


def one_run(dataset: str, bits: int, seed: int, head, head_meta: dict, train, test, source: dict,
            features_digest: str, args) -> dict:
    """Quantize ``head`` once (every method) and return the run's record."""
    from qubo_nn.workflows.head_quantize import quantize_head
    from qubo_nn.runtime import machine_info, tensor_digest, versions

    cfg = quantize_config(dataset, bits, seed, args)
    machine = machine_info("cpu")
    t0 = time.perf_counter()
    res = quantize_head(head, train, test, cfg, progress=False)
    wall = time.perf_counter() - t0
    rec = res.record()
    methods = {}
    for m, v in rec["methods"].items():
        methods[m] = {k: v[k] for k in v if k != "row_energies"}
        methods[m]["row_energies"] = v["row_energies"]
    return {"dataset": dataset, "bits": bits, "seed": seed, "seed_varies": SEED_NOTE,
            "features": source, "features_digest": features_digest,
            "head_digest": tensor_digest(head.W, head.b), "head_file": f"heads/{dataset}.pt",
            "head_l2": head_meta["info"]["l2"], "config": rec["config"], "reference": rec["reference"],
            "methods": methods, "timings": rec["timings"], "wall_time_s": wall, "machine": machine,
            "load_average_1m_end": os.getloadavg()[0], "versions": versions()}


def run_jitter(dataset: str, train, test, head_meta: dict, out: Path, trials: int) -> dict:
    """train.jitter_check of a from-zeros refit at the head's chosen L2 (1e-6 relative jitter)."""
    from qubo_nn.runtime import atomic_write_json, machine_info, versions
    from qubo_nn.train.sgd import convex_optimum, jitter_check

    settings = refit_settings(dataset, head_meta["info"]["l2"])
    machine = machine_info("cpu")
    t0 = time.perf_counter()
    res = jitter_check(train, test, lambda tr: convex_optimum(tr, **settings)[0], rel=1e-6, trials=trials, seed=0)
    rec = {"dataset": dataset, "fit": "convex_optimum from zeros", "settings": settings, "jitter": res,
           "features_digest": head_meta["features_digest"], "wall_time_s": time.perf_counter() - t0,
           "machine": machine, "load_average_1m_end": os.getloadavg()[0], "versions": versions()}
    atomic_write_json(out / "jitter" / f"{dataset}.json", rec)
    return rec


# ---------------------------------------------------------------- summary, table, plot

def load_records(out: Path) -> list[dict]:
    """Every per-run record under ``out/runs`` (sorted by dataset, bits, seed)."""
    recs = [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*/*.json"))]
    return sorted(recs, key=lambda r: (r["dataset"], r["bits"], r["seed"]))


def _stat(xs: list[float]) -> dict:
    a = np.asarray(xs, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size),
            "min": float(a.min()), "max": float(a.max())}


def summarize(records: list[dict]) -> dict:
    """Mean, sample std (ddof = 1), n, min, max over seeds, recomputed from the per-run records:

    {dataset: {"fp32": {metric: stat}, "seeds": [...], "bits": {bits: {method: {metric: stat,
    "delta_acc": stat (acc − fp32 acc of the same run), "qubo": {...}}}}}}; the qubo method also
    gets ``rows_improved`` / ``rows_anneal_stage`` (stats of the per-run counts), ``rows`` (C) and
    ``energy_below_cd`` (runs whose qubo energy is strictly below cd's).
    """
    out: dict = {}
    groups: dict = {}
    for r in records:
        groups.setdefault(r["dataset"], {}).setdefault(r["bits"], []).append(r)
    for ds, by_bits in groups.items():
        allruns = [r for rs in by_bits.values() for r in rs]
        d = out[ds] = {"seeds": sorted({r["seed"] for r in allruns}),
                       "fp32": {k: _stat([r["reference"][k] for r in allruns])
                                for k in ("test_acc", "test_loss", "train_acc", "train_loss")},
                       "head_digests": sorted({r["head_digest"] for r in allruns}),
                       "features_digests": sorted({r["features_digest"] for r in allruns}),
                       "bits": {}}
        for bits, runs in sorted(by_bits.items()):
            cell: dict = {}
            names = sorted(runs[0]["methods"], key=lambda m: (list(METHOD_LABELS).index(m)
                                                              if m in METHOD_LABELS else len(METHOD_LABELS), m))
            for m in names:
                ms = [r["methods"][m] for r in runs]
                c = {k: _stat([x[k] for x in ms]) for k in METRICS}
                c["delta_acc"] = _stat([r["methods"][m]["test_acc"] - r["reference"]["test_acc"] for r in runs])
                c["seeds"] = [r["seed"] for r in runs]
                if m == "qubo":
                    c["rows_improved"] = _stat([x["rows_improved"] for x in ms])
                    c["rows_anneal_stage"] = _stat([x["rows_anneal_stage"] for x in ms])
                    c["rows"] = len(ms[0]["row_energies"])
                    c["energy_below_cd"] = int(sum(r["methods"]["qubo"]["energy"] < r["methods"]["cd"]["energy"]
                                                   for r in runs))
                    # the pipeline's energy split in two: its classical start (best of CD from gptq act-order,
                    # gptq natural, rtn) against cd, and what annealing + polish took off that start
                    c["classical_gain_vs_cd"] = _stat([sum(r["methods"]["cd"]["row_energies"])
                                                       - r["methods"]["qubo"]["energy_classical"] for r in runs])
                    c["anneal_gain"] = _stat([r["methods"]["qubo"]["energy_classical"]
                                              - sum(r["methods"]["qubo"]["row_energies"]) for r in runs])
                    for base in ("cd", "gptq"):   # paired over seeds: the seed's Hessian subset is shared
                        c[f"acc_minus_{base}"] = _stat([r["methods"]["qubo"]["test_acc"] - r["methods"][base]["test_acc"]
                                                        for r in runs])
                    c["anneal_raw_excess"] = _stat([r["methods"]["qubo"]["energy_anneal_raw"]
                                                    - r["methods"]["qubo"]["energy_classical"] for r in runs])
                    c["runs"] = len(runs)
                cell[m] = c
            d["bits"][bits] = cell
    return out


def _pm(s: dict, f: str = ".2f") -> str:
    return f"{s['mean']:{f}} ± {s['std']:{f}}" if s["n"] > 1 else f"{s['mean']:{f}}"


def table(records: list[dict], jitter: dict | None = None, notes: dict | None = None) -> str:
    """Markdown table of :func:`summarize` (jitter: {dataset: jitter record}; notes: {dataset: text})."""
    S = summarize(records)
    jitter, notes = jitter or {}, notes or {}
    lines = ["# Low-bit FC heads on the stable fp32 reference heads", "",
             "Recorded by `experiments/quantize_sweep.py`; every number below is recomputed from the per-run "
             "records in `runs/` (`summary.json` holds the same statistics). Mean ± sample std (ddof 1) over "
             "seeds. Accuracy in %, losses in nats (mean cross-entropy, no L2 term). Δ acc: the quantized head "
             "minus the fp32 head, in points. Energy: the predicted loss of the quantized head on the per-row "
             "integer problems (Σ_rows E_row − (C−1)·L0, every method scored on the same problems; lower is "
             "better). qubo rows improved: rows where annealing + CD polish beat the best classical start "
             "(of C rows); of which anneal stage: rows where a raw annealed sample did, before any polish. "
             "E(qubo) < E(cd): runs where the pipeline's total energy is strictly below cd's. time s: the "
             "method's own time (cd includes its gptq start; qubo includes its classical start).", "",
             f"Seeds: {SEED_NOTE}.", ""]
    for ds, d in S.items():
        f = d["fp32"]
        lines += [f"## {ds}", ""]
        if ds in notes:
            lines += [notes[ds], ""]
        lines += [f"fp32 reference head (digest {', '.join(d['head_digests'])}; features "
                  f"{', '.join(d['features_digests'])}; seeds {d['seeds']}): test acc **{_pm(f['test_acc'])}**, "
                  f"test loss {_pm(f['test_loss'], '.4f')}, train acc {_pm(f['train_acc'])}, "
                  f"train loss {_pm(f['train_loss'], '.4f')}.", ""]
        j = jitter.get(ds)
        if j:
            jj = j["jitter"]
            lines += [f"Jitter check (refit from zeros at l2 = {j['settings']['l2']:g}, {j['settings']['dtype']}, "
                      f"features × (1 + 1e-6·N(0,1)), {jj['trials']} trials): base {100 * jj['base_acc']:.2f} %, "
                      f"trials {' '.join(f'{100 * a:.2f}' for a in jj['accs'])} → spread "
                      f"**{jj['spread_points']:.2f} points** (target < 0.5).", ""]
        else:
            lines += ["Jitter check: not run for this dataset in this sweep (see REPRODUCE.md).", ""]
        lines += ["| bits | method | test acc % | Δ acc | test loss | train loss | energy (nats) | time s |",
                  "|---|---|---|---|---|---|---|---|"]
        for bits, cell in d["bits"].items():
            for m, c in cell.items():
                lines.append(f"| {bits} | {METHOD_LABELS.get(m, m)} | {_pm(c['test_acc'])} | "
                             f"{c['delta_acc']['mean']:+.2f} | {_pm(c['test_loss'], '.4f')} | "
                             f"{_pm(c['train_loss'], '.4f')} | {_pm(c['energy'], '.6f')} | "
                             f"{c['wall_time_s']['mean']:.2f} |")
        lines += ["", f"Where the qubo pipeline's energy comes from ({ds}; nats, mean ± std over seeds): "
                  "`cd − start` = cd's energy minus the pipeline's classical start (best of CD from gptq act-order, "
                  "gptq natural order and rtn: no annealing); `anneal gain` = that start minus the final energy "
                  "(what annealing + CD polish of the samples added); `raw anneal − start` = the annealer's own best "
                  "samples (before polish and before any fallback) minus the start (> 0: the raw samples are worse); the "
                  "accuracy differences are paired by seed, in points.",
                  "", "| bits | rows improved (by a raw sample) / C | runs E(qubo) < E(cd) | cd − start | anneal gain "
                  "| raw anneal − start | test acc qubo − cd (paired) | qubo − gptq act-order |",
                  "|---|---|---|---|---|---|---|---|"]
        for bits, cell in d["bits"].items():
            c = cell.get("qubo")
            if c:
                lines.append(f"| {bits} | {c['rows_improved']['mean']:.1f} ({c['rows_anneal_stage']['mean']:.1f}) / "
                             f"{c['rows']} | {c['energy_below_cd']} of {c['runs']} | "
                             f"{c['classical_gain_vs_cd']['mean']:.3g} ± {c['classical_gain_vs_cd']['std']:.2g} | "
                             f"{c['anneal_gain']['mean']:.3g} ± {c['anneal_gain']['std']:.2g} | "
                             f"{c['anneal_raw_excess']['mean']:.3g} ± {c['anneal_raw_excess']['std']:.2g} | "
                             f"{c['acc_minus_cd']['mean']:+.2f} ± {c['acc_minus_cd']['std']:.2f} | "
                             f"{c['acc_minus_gptq']['mean']:+.2f} ± {c['acc_minus_gptq']['std']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    """Test accuracy (top) and test loss (bottom) vs bits, per method, one column per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qubo_nn.runtime import atomic_path

    S = summarize(records)
    fig, axes = plt.subplots(2, len(S), figsize=(6.2 * len(S), 8.0), squeeze=False)
    styles = {"rtn": ("tab:gray", "s"), "gptq-natural": ("tab:blue", "o"), "gptq": ("tab:cyan", "v"),
              "cd": ("tab:green", "D"), "qubo": ("tab:red", "^")}
    for col, (ds, d) in enumerate(S.items()):
        bits = sorted(d["bits"])
        names = list(dict.fromkeys(m for b in bits for m in d["bits"][b]))
        for row, metric, fp in ((0, "test_acc", d["fp32"]["test_acc"]), (1, "test_loss", d["fp32"]["test_loss"])):
            ax = axes[row, col]
            for k, m in enumerate(names):
                xs = [b + (k - (len(names) - 1) / 2) * 0.07 for b in bits if m in d["bits"][b]]
                st = [d["bits"][b][m][metric] for b in bits if m in d["bits"][b]]
                color, marker = styles.get(m, (None, "x"))
                ax.errorbar(xs, [s["mean"] for s in st], yerr=[s["std"] for s in st], color=color, marker=marker,
                            capsize=3, label=METHOD_LABELS.get(m, m))
            ax.axhline(fp["mean"], color="black", ls="--", lw=1, label=f"fp32 reference ({fp['mean']:.3g})")
            ax.set_xticks(bits)
            ax.grid(alpha=0.3)
            ax.set_ylabel("test accuracy (%)" if metric == "test_acc" else "test loss (nats)")
            if row == 0:
                ax.set_title(f"{ds}: mean ± std over {len(d['seeds'])} seeds")
                ax.legend(loc="lower right", fontsize=8)
            else:
                ax.set_xlabel("bits per weight (per-row symmetric grid, bias fp32)")
                vals = [c["test_loss"]["mean"] for b in bits for c in d["bits"][b].values()] + [fp["mean"]]
                if min(vals) > 0 and max(vals) / min(vals) > 20:   # rtn's low-bit losses: orders of magnitude above
                    ax.set_yscale("log")
    fig.suptitle("Quantized FC head of the fp32 reference head: test accuracy and loss vs bits")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def dataset_notes(out: Path) -> dict:
    """{dataset: one line on the features and the head}, from the saved head records."""
    notes = {}
    for js in sorted((out / "heads").glob("*.json")):
        m = json.loads(js.read_text())
        info = m["info"]
        notes[m["dataset"]] = (f"fp32 head: reference_head({', '.join(f'{k}={v}' for k, v in m['reference_head'].items())})"
                               f" → l2 = {info['l2']:g} (validation CE by l2: "
                               f"{', '.join(f'{float(k):g}: {v:.4f}' for k, v in info['val_loss_by_l2'].items())}), "
                               f"fitted in {m['wall_time_s']:.0f} s.")
    return notes


def write_summary(out: Path) -> None:
    """summary.json, table.md and the plot, from the per-run records on disk."""
    from qubo_nn.runtime import atomic_write_json, atomic_write_text

    recs = load_records(out)
    if not recs:
        return
    jitter = {p.stem: json.loads(p.read_text()) for p in sorted((out / "jitter").glob("*.json"))}
    atomic_write_json(out / "summary.json", {"summary": summarize(recs), "runs": len(recs), "seed_varies": SEED_NOTE})
    atomic_write_text(out / "table.md", table(recs, jitter, dataset_notes(out)))
    plot(recs, out / "accuracy_vs_bits.png")


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/quantize")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--synthetic-n", type=int, default=50_000)
    p.add_argument("--synthetic-n-test", type=int, default=10_000)
    p.add_argument("--subsample", type=int, default=10_000, help="Hessian rows on synthetic-features")
    p.add_argument("--jitter", action="store_true", help="also run the fp32 jitter check (after the runs)")
    p.add_argument("--jitter-trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--summary-only", action="store_true", help="only rewrite summary.json, table.md and the plot")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.summary_only:
        write_summary(out)
        return 0
    import torch

    from qubo_nn.runtime import atomic_write_json, tensor_digest

    torch.set_num_threads(args.threads)
    for ds in args.datasets:
        train, test, source = load(ds, args)
        fdig = tensor_digest(train.X, train.y, test.X, test.y)
        print(f"{ds}: features {fdig} ({train.n} train / {test.n} test, D = {train.dim}, C = {train.num_classes})",
              flush=True)
        head, hmeta = get_head(ds, train, test, out, fdig)
        print(f"{ds}: fp32 head {hmeta['head_digest']} l2 {hmeta['info']['l2']:g} test acc "
              f"{100 * hmeta['test_acc']:.2f} % (fit {hmeta['wall_time_s']:.0f} s)", flush=True)
        for bits in args.bits:
            for seed in args.seeds:
                path = run_path(out, ds, bits, seed)
                if path.exists():
                    old = json.loads(path.read_text())
                    if old["features_digest"] == fdig and old["head_digest"] == hmeta["head_digest"]:
                        continue
                rec = one_run(ds, bits, seed, head, hmeta, train, test, source, fdig, args)
                atomic_write_json(path, rec)
                print(f"{ds} {bits}-bit seed {seed}: fp32 {rec['reference']['test_acc']:.2f}  " + "  ".join(
                    f"{m} {v['test_acc']:.2f}/{v['energy']:.5f}" for m, v in rec["methods"].items())
                    + f"  qubo rows improved {rec['methods']['qubo']['rows_improved']}  ({rec['wall_time_s']:.1f} s, "
                    f"load {rec['load_average_1m_end']:.1f})", flush=True)
                write_summary(out)
        if args.jitter and not (out / "jitter" / f"{ds}.json").exists():
            j = run_jitter(ds, train, test, hmeta, out, args.jitter_trials)
            print(f"{ds}: jitter spread {j['jitter']['spread_points']:.2f} points ({j['wall_time_s']:.0f} s)",
                  flush=True)
        write_summary(out)
    write_summary(out)
    print((out / "table.md").read_text() if (out / "table.md").exists() else "no runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
