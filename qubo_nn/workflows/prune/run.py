"""``qubo-nn prune`` as one library call: checkpoint in, pruned checkpoint and JSON report out.

:func:`run_prune` loads a ResNet checkpoint (default: the cached digits ResNet-18 of
``qubo-nn pretrain``, trained when missing), draws ``calib`` calibration images from the train
split (seeded), prunes (:func:`~qubo_nn.workflows.prune.network.prune_network`), re-estimates BatchNorm
statistics, evaluates the test split before and after, and writes

- ``<out>/pruned.pt``: ``{"state_dict": ...}`` (same architecture, pruned channels zeroed), a
  checkpoint ``--weights PATH`` accepts;
- ``<out>/report.json``: config, per-layer masks and errors, test loss/accuracy (original,
  pruned before and after BN re-estimation), multiply-adds kept, versions, times;
- with ``export``: ``<export>/<layer>.bqm`` (the layer's pruning QUBO, a project QUBO file that
  ``qubo-nn solve`` reads; variable i = 1 keeps input channel i) and ``<layer>.prune.json``
  (its meaning: k, n, penalty, ‖Y‖², the energy of a mask with k ones IS its reconstruction error).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.prune.network import PruneConfig, conv_macs, prune_network, reestimate_batchnorm
from qubo_nn.workflows.prune.objective import prune_bqm


@dataclass
class PruneRunConfig:
    """Inputs of :func:`run_prune`; ``weights=None`` = the default ``qubo-nn pretrain`` checkpoint."""

    weights: str | None = None
    dataset: str = "digits"
    arch: str = "resnet18"
    image_size: int = 64
    calib: int = 256
    prune: PruneConfig = field(default_factory=PruneConfig)
    out: str | None = "pruned"
    export: str | None = None


def default_checkpoint(dataset: str = "digits", arch: str = "resnet18", image_size: int = 64,
                       progress: bool = False) -> Path:
    """The checkpoint of ``qubo-nn pretrain`` with its defaults (cached; trained when missing)."""
    from qubo_nn.train.pretrain import PretrainConfig, pretrain

    return pretrain(PretrainConfig(dataset=dataset, arch=arch, image_size=image_size), progress=progress).path


def load_data(dataset: str, image_size: int, calib: int, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(calibration images drawn from train by ``seed``, test images, test labels)."""
    from qubo_nn.data import datasets as data
    from qubo_nn.train.pretrain import materialize
    from qubo_nn.runtime import calibration_indices

    train = data.load_dataset(dataset, "train", image_size, seed=0)
    test = data.load_dataset(dataset, "test", image_size, seed=0)
    if not 1 <= calib <= len(train):
        raise QuboNNError(f"expected calib in [1, {len(train)}] (the train split's size), got {calib}")
    idx = calibration_indices(len(train), calib, seed)
    X_cal, _ = materialize(train, idx.tolist())
    X_test, y_test = materialize(test)
    return X_cal, X_test, y_test


def export_problem(export_dir: Path, pl, problem, k: int, cfg: PruneConfig) -> dict[str, Any]:
    """Write one layer's pruning BQM (dimod file) and its ``.prune.json`` meaning."""
    from qubo_nn.io.bqm_files import write_bqm
    from qubo_nn.runtime import atomic_write_json

    bqm, info = prune_bqm(problem, k, mode=cfg.penalty_mode, penalty=cfg.penalty)
    path = Path(export_dir) / f"{pl.consumer}.bqm"
    write_bqm(bqm, path)
    meta = {"kind": "qubo-nn channel-pruning QUBO", "layer": pl.consumer, "producer": pl.producer,
            "n": problem.n, "k": int(k), "variables": "variable i = 1 keeps input channel i of the layer",
            "energy": "for masks with k ones: the BN-weighted reconstruction error ‖Σ s_i Y_i − Y‖² "
                      "(before refit); otherwise plus penalty·(Σs − k)²",
            "yy": problem.yy, "mode": info["mode"], "penalty": info["penalty"], "file": path.name}
    atomic_write_json(path.with_name(f"{pl.consumer}.prune.json"), meta)
    return meta


def run_prune(cfg: PruneRunConfig, progress: bool = False) -> dict[str, Any]:
    """Prune a checkpoint; see the module docstring. Returns the report (also written)."""
    from qubo_nn.data import datasets as data
    from qubo_nn.nets.backbones import build_model
    from qubo_nn.train.pretrain import evaluate_model
    from qubo_nn.runtime import atomic_path, atomic_write_json, sha256_file, versions

    t0 = time.perf_counter()
    cfg.prune.validate()
    weights = cfg.weights or str(default_checkpoint(cfg.dataset, cfg.arch, cfg.image_size, progress))
    model = build_model(cfg.arch, weights, num_classes=data.num_classes(cfg.dataset))
    X_cal, X_test, y_test = load_data(cfg.dataset, cfg.image_size, cfg.calib, cfg.prune.seed)
    base_loss, base_acc = evaluate_model(model, X_test, y_test)
    exported = []
    hook = None
    if cfg.export:
        def hook(pl, problem, k):
            exported.append(export_problem(Path(cfg.export), pl, problem, k, cfg.prune))
    pruned, report = prune_network(model, X_cal, replace(cfg.prune, reestimate_bn=False), progress=progress,
                                   on_problem=hook)
    loss0, acc0 = evaluate_model(pruned, X_test, y_test)
    report["config"]["reestimate_bn"] = cfg.prune.reestimate_bn
    if cfg.prune.reestimate_bn:
        report["bn_reestimated"] = reestimate_batchnorm(pruned, X_cal, cfg.prune.batch_size)
    loss1, acc1 = evaluate_model(pruned, X_test, y_test)
    macs0, macs1 = conv_macs(model, cfg.image_size), conv_macs(pruned, cfg.image_size)
    report.update({
        "run": {k: v for k, v in asdict(cfg).items() if k != "prune"},
        "weights_sha256": sha256_file(weights) if Path(weights).is_file() else None,
        "test": {"original": {"loss": base_loss, "acc": base_acc},
                 "pruned_before_bn": {"loss": loss0, "acc": acc0},
                 "pruned": {"loss": loss1, "acc": acc1}},
        "macs": {"original": macs0, "pruned": macs1, "kept_fraction": macs1 / macs0},
        "exported": exported, "versions": versions(), "wall_time_s": time.perf_counter() - t0})
    if cfg.out:
        out = Path(cfg.out)
        with atomic_path(out / "pruned.pt") as tmp:
            torch.save({"state_dict": copy.deepcopy(pruned.state_dict())}, tmp)
        report["checkpoint"] = str(out / "pruned.pt")
        atomic_write_json(out / "report.json", report)
    return report
