"""The seed's comparison in discrete form (issue 19): ptq / ste / qubo heads on a binary or ternary grid,
several seeds, the fp32 reference beside them, on the seed's three axes — training loss vs wall time,
test accuracy vs wall time, final test accuracy per method.

:func:`run_discrete_experiment` writes ``per-seed/<grid>-<method>-seed<k>.json`` (one record per run,
atomic; a finished record with the same config digest is loaded instead of recomputed), ``summary.json``
(recomputed from the per-seed files), ``table.md`` and ``discrete_<grid>.png``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qubo_nn.core.head import evaluate
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import atomic_path, atomic_write_json, machine_info, tensor_digest, to_jsonable
from qubo_nn.workflows.train_discrete import (DISCRETE_GRIDS, DISCRETE_METHODS, DiscreteConfig, DiscreteHead,
                                              PtqStart, ptq_start, train_discrete)

DATASETS = ("digits", "synthetic-features")


@dataclass
class DiscreteExperimentConfig:
    """``n_train``/``n_test``: size of the synthetic-features set (digits: the embedded set as it is)."""

    dataset: str = "digits"
    grid: str = "binary"
    methods: tuple[str, ...] = DISCRETE_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 50_000
    n_test: int = 10_000
    dim: int = 512
    num_classes: int = 100
    train: DiscreteConfig = field(default_factory=DiscreteConfig)
    # True: each seed's fp32 reference head is fit on that seed's fit split only, so that its validation split
    # is held out from every head of the run (False, as recorded before: one reference fit on all of train)
    heldout_reference: bool = False

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise QuboNNError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.grid not in DISCRETE_GRIDS:
            raise QuboNNError(f"grid must be one of {DISCRETE_GRIDS}, got {self.grid!r}")
        bad = [m for m in self.methods if m not in DISCRETE_METHODS]
        if bad or not self.methods:
            raise QuboNNError(f"methods must be a non-empty subset of {DISCRETE_METHODS}, got {list(self.methods)}")
        replace(self.train, grid=self.grid).validate()


def load_discrete_features(cfg: DiscreteExperimentConfig):
    """(train, test, info) for ``cfg.dataset``."""
    if cfg.dataset == "digits":
        from qubo_nn.data.features import FeatureConfig, get_features

        res = get_features(FeatureConfig())
        train, test = res.train, res.test
    else:
        from qubo_nn.data.featureset import realistic_features

        train, test = realistic_features(n_train=cfg.n_train, n_test=cfg.n_test, dim=cfg.dim,
                                         num_classes=cfg.num_classes, seed=0)
    info = {"dataset": cfg.dataset, "n_train": train.n, "n_test": test.n, "dim": train.dim,
            "num_classes": train.num_classes, "digest": tensor_digest(train.X, train.y, test.X, test.y)}
    return train, test, info


def run_discrete_experiment(cfg: DiscreteExperimentConfig, out: str | Path, progress: bool = False) -> dict:
    """Every (method, seed) of ``cfg`` (resuming finished runs); returns the summary."""
    cfg.validate()
    out = Path(out)
    (out / "per-seed").mkdir(parents=True, exist_ok=True)
    train, test, finfo = load_discrete_features(cfg)
    if not cfg.heldout_reference:
        head, rinfo, fp32 = _fp32_reference(train, test, finfo, out)
    runs: dict[str, list[dict]] = {m: [] for m in cfg.methods}
    fp32_by_seed = []
    for seed in cfg.seeds:
        start = None   # the ptq head of this seed, computed once and shared by the methods (its time counted in each)
        held = {}
        if cfg.heldout_reference:       # the reference of this seed sees its fit split only
            from qubo_nn.workflows.train_discrete import split_fit_val

            fit, _ = split_fit_val(train, cfg.train.val_fraction, seed)
            head, rinfo, fp32 = _fp32_reference(fit, test, finfo, out, f"fp32-reference-fit-seed{seed}.pt",
                                                 {"val_fraction": cfg.train.val_fraction, "seed": seed})
            held = {"reference": "fit split"}
            fp32_by_seed.append(fp32)
        for method in cfg.methods:
            tcfg = replace(cfg.train, grid=cfg.grid, method=method, seed=seed)
            path = out / "per-seed" / f"{cfg.grid}-{method}-seed{seed}.json"
            digest = _digest({"train": tcfg.to_dict(), "features": finfo["digest"], "l2": rinfo["l2"], **held})
            rec = _load(path, digest)
            if rec is None:
                if progress:
                    print(f"{cfg.dataset} {cfg.grid} {method} seed {seed} ...", flush=True)
                if start is None:
                    spath = out / "per-seed" / f"{cfg.grid}-start-seed{seed}.pt"
                    sdigest = start_digest(tcfg, finfo["digest"], rinfo["l2"], **held)
                    start = load_start(spath, sdigest)
                    if start is None:
                        start = ptq_start(head, train, tcfg)
                        save_start(start, spath, sdigest)
                _, rec = train_discrete(head, train, test, tcfg, start=start)
                rec.update(digest=digest, features=finfo, fp32=fp32, machine=machine_info())
                atomic_write_json(path, to_jsonable(rec))
            runs[method].append(rec)
    if cfg.heldout_reference:      # one reference per seed: the table shows their mean
        fp32 = {k: float(np.mean([f[k] for f in fp32_by_seed])) for k in fp32_by_seed[0]}
    summary = summarize(runs, fp32, cfg, finfo)
    atomic_write_json(out / f"summary-{cfg.grid}.json", to_jsonable(summary))
    with atomic_path(out / f"table-{cfg.grid}.md") as tmp:
        tmp.write_text(format_table(summary))
    plot_discrete(runs, fp32, out / f"discrete_{cfg.grid}.png", f"{cfg.dataset}, {cfg.grid} head")
    return summary


def start_digest(tcfg: DiscreteConfig, features: str, fp32_l2: float, **reference) -> str:
    """What the ptq start of a seed depends on: the features, the fp32 head (its l2; ``reference``: how it was
    fit, when not on all of train) and the rounding settings."""
    keys = ("grid", "seed", "val_fraction", "damping_rel", "alt_rounds", "l2_grid", "subsample", "dtype")
    return _digest({"features": features, "fp32_l2": fp32_l2, **reference, **{k: tcfg.to_dict()[k] for k in keys}})


def save_start(start: PtqStart, path: Path, digest: str | None = None) -> None:
    """The ptq start of one seed (codes, α, b fitted on the fit split; α, b refit on train; l2): shared by the
    methods and by later runs of the same settings (its ``wall_time_s`` still counted in each method's clock),
    and read by the diagnosis of the qubo steps (``experiments/discrete_gaps.py``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"start": {"codes": start.start.codes, "alpha": start.start.alpha, "b": start.start.b},
                    "head": {"codes": start.head.codes, "alpha": start.head.alpha, "b": start.head.b},
                    "grid": start.head.grid, "l2": start.l2, "wall_time_s": start.wall_time_s,
                    "info": to_jsonable(start.info), "digest": digest}, tmp)


def load_start(path: Path, digest: str) -> PtqStart | None:
    """The saved start of :func:`save_start` when its digest matches, else None."""
    import torch

    try:
        d = torch.load(path, weights_only=False)
    except (OSError, RuntimeError, EOFError):
        return None
    if not isinstance(d, dict) or d.get("digest") != digest:
        return None
    dh = {k: DiscreteHead(d[k]["codes"], d[k]["alpha"], d[k]["b"], d["grid"]) for k in ("head", "start")}
    return PtqStart(dh["head"], dh["start"], d["l2"], d["info"], d["wall_time_s"])


def _fp32_reference(train, test, finfo: dict, out: Path, name: str = "fp32-reference.pt", key: dict | None = None):
    """The fp32 reference head (:func:`qubo_nn.train.sgd.reference_head`, seed 0, fit on ``train``) and its
    metrics, kept in ``out/<name>`` for the features' digest (and ``key``: which part of train it saw), so that
    the binary and ternary runs of one folder share it (its ``wall_time_s`` is the time it took when computed)."""
    import torch

    from qubo_nn.core.head import Head
    from qubo_nn.train.sgd import reference_head

    path = out / name
    tag = finfo["digest"] if key is None else _digest({"features": finfo["digest"], **key})
    try:
        saved = torch.load(path, weights_only=False)
        if saved.get("features") == tag:
            return Head(saved["W"], saved["b"]), saved["info"], saved["fp32"]
    except (OSError, RuntimeError, EOFError, AttributeError, KeyError):
        pass
    t0 = time.perf_counter()
    head, rinfo = reference_head(train, seed=0, device="cpu")
    fp32 = {"train_loss": evaluate(head, train)[0], "test_loss": evaluate(head, test)[0],
            "test_acc": evaluate(head, test)[1], "l2": rinfo["l2"], "wall_time_s": time.perf_counter() - t0}
    with atomic_path(path) as tmp:
        torch.save({"features": tag, "W": head.W, "b": head.b, "info": to_jsonable(rinfo), "fp32": fp32},
                   tmp)
    return head, to_jsonable(rinfo), fp32


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def _load(path: Path, digest: str) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("digest") == digest and "final" in rec else None


def summarize(runs: dict[str, list[dict]], fp32: dict, cfg: DiscreteExperimentConfig, finfo: dict) -> dict:
    """Mean and std over seeds of each method's final metrics and wall time."""
    keys = ("test_acc", "test_loss", "train_loss", "val_loss", "wall_time_s")
    methods = {}
    for m, recs in runs.items():
        methods[m] = {k: {"mean": float(np.mean([r["final"][k] for r in recs])),
                          "std": float(np.std([r["final"][k] for r in recs])),
                          "values": [r["final"][k] for r in recs]} for k in keys}
        methods[m]["seeds"] = [r["config"]["seed"] for r in recs]
    return {"dataset": cfg.dataset, "grid": cfg.grid, "features": finfo, "fp32": fp32, "methods": methods}


def format_table(summary: dict) -> str:
    fp = summary["fp32"]
    lines = [f"# {summary['dataset']}, {summary['grid']} head ({summary['features']['n_train']} train, "
             f"{summary['features']['n_test']} test)", "",
             "| method | test acc (%) | test loss | train loss | wall time (s) | seeds |", "|---|---|---|---|---|---|",
             f"| fp32 reference | {100 * fp['test_acc']:.2f} | {fp['test_loss']:.4f} | {fp['train_loss']:.4f} | "
             f"{fp['wall_time_s']:.1f} | — |"]
    for m, s in summary["methods"].items():
        lines.append(f"| {m} | {100 * s['test_acc']['mean']:.2f} ± {100 * s['test_acc']['std']:.2f} | "
                     f"{s['test_loss']['mean']:.4f} ± {s['test_loss']['std']:.4f} | {s['train_loss']['mean']:.4f} | "
                     f"{s['wall_time_s']['mean']:.1f} | {len(s['seeds'])} |")
    return "\n".join(lines) + "\n"


def plot_discrete(runs: dict[str, list[dict]], fp32: dict, path: Path, title: str) -> Path:
    """Training loss vs wall time, test accuracy vs wall time, final test accuracy per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = dict(zip(DISCRETE_METHODS, ("tab:gray", "tab:blue", "tab:red")))
    for m, recs in runs.items():
        for i, r in enumerate(recs):
            t = [p["wall_time_s"] for p in r["history"]]
            lab = m if i == 0 else None
            axes[0].plot(t, [p["train_loss"] for p in r["history"]], "o-", color=colors[m], ms=3, label=lab, alpha=.8)
            axes[1].plot(t, [100 * p["test_acc"] for p in r["history"]], "o-", color=colors[m], ms=3, label=lab,
                         alpha=.8)
    axes[0].axhline(fp32["train_loss"], color="k", ls=":", label="fp32 reference")
    axes[1].axhline(100 * fp32["test_acc"], color="k", ls=":", label="fp32 reference")
    names = list(runs)
    accs = [[100 * r["final"]["test_acc"] for r in runs[m]] for m in names]
    axes[2].bar(names, [np.mean(a) for a in accs], yerr=[np.std(a) for a in accs], color=[colors[m] for m in names])
    axes[2].axhline(100 * fp32["test_acc"], color="k", ls=":")
    lo = min(min(a) for a in accs)
    axes[2].set_ylim(max(0, lo - 5), max(100 * fp32["test_acc"], max(max(a) for a in accs)) + 1)
    for ax, (xl, yl) in zip(axes, (("wall time (s)", "training loss (nats)"), ("wall time (s)", "test accuracy (%)"),
                                   ("method", "final test accuracy (%)"))):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path

