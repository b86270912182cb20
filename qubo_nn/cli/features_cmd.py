"""``qubo-nn features`` (run the frozen backbone once, cache features) and ``qubo-nn train``
(the SGD baseline of the FC head on the cached features)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from ..backbones import ARCHS
from ..features import FEATURE_DATASETS, FeatureConfig, FeatureResult, get_features
from ..head import Head
from ..runtime import atomic_path, versions
from ..train import SCHEDULES, SGDConfig, train_sgd
from .common import device_option, emit, handle_errors, json_option, seed_option


def feature_options(fn: Callable) -> Callable:
    """The options that fill a :class:`FeatureConfig` (shared by every command reading features)."""
    options = [
        click.option("--dataset", type=click.Choice(FEATURE_DATASETS), default="digits", show_default=True,
                     help="Images to run the backbone on (digits: bundled with scikit-learn, no download; "
                          "synthetic-features: CIFAR-100-shaped random features, no backbone)."),
        click.option("--arch", type=click.Choice(ARCHS), default="resnet18", show_default=True,
                     help="torchvision ResNet used as the frozen backbone."),
        click.option("--weights", default="none", show_default=True,
                     help="Backbone weights: 'imagenet' (torchvision's, downloaded or from the torch cache), "
                          "'none' (seeded random init) or a checkpoint path."),
        click.option("--image-size", type=click.IntRange(8, 1024), default=64, show_default=True,
                     help="Images are resized to SIZE × SIZE pixels."),
        click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="Folder containing the extracted 'cifar-100-python' "
                          "[default: $QUBO_NN_DATA or ~/.cache/qubo-nn/data]."),
        click.option("--download", is_flag=True, help="Download CIFAR-100 when it is not under --data-root."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Feature cache folder [default: $QUBO_NN_CACHE or ~/.cache/qubo-nn/features]."),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
                     help="Images per backbone batch."),
        click.option("--feature-seed", type=int, default=0, show_default=True,
                     help="Seed of the random backbone (--weights none) and of the synthetic datasets."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N images of each split (quick looks)."),
        device_option,
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def feature_config(opts: dict[str, Any]) -> FeatureConfig:
    return FeatureConfig(dataset=opts["dataset"], arch=opts["arch"], weights=opts["weights"],
                         image_size=opts["image_size"], data_root=opts["data_root"], download=opts["download"],
                         device=opts["device"], batch_size=opts["batch_size"], seed=opts["feature_seed"],
                         cache_dir=opts["cache_dir"], limit=opts["limit"])


def _shapes(res: FeatureResult) -> dict[str, list[int]]:
    return {"train_X": list(res.train.X.shape), "train_y": list(res.train.y.shape),
            "test_X": list(res.test.X.shape), "test_y": list(res.test.y.shape)}


def _describe(res: FeatureResult) -> str:
    where = str(res.path) if res.path is not None else "(generated, not cached)"
    state = "cache hit" if res.hit else ("rebuilt: " + res.rebuilt if res.rebuilt else "extracted")
    return (f"features: {where}\n  {state} in {res.seconds:.2f} s\n"
            f"  train {tuple(res.train.X.shape)}, test {tuple(res.test.X.shape)}, "
            f"{res.train.num_classes} classes")


@click.command()
@feature_options
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar (stderr).")
@json_option
@handle_errors
def features_command(progress: bool, as_json: bool, **opts: Any) -> None:
    """Run the frozen backbone once over both splits and cache the features."""
    res = get_features(feature_config(opts), progress=progress)
    emit({"path": res.path, "hit": res.hit, "rebuilt": res.rebuilt, "shapes": _shapes(res),
          "num_classes": res.train.num_classes, "seconds": res.seconds}, as_json, _describe(res))


@click.command()
@feature_options
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True, help="SGD epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Learning rate (peak of the schedule).")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True,
              help="SGD momentum.")
@click.option("--train-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="SGD mini-batch size.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="L2 penalty (weight_decay/2)·‖W‖² on the weights (not the bias).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="none", show_default=True,
              help="Learning-rate schedule over the epochs (cosine; step: ×0.1 at 1/2 and 3/4).")
@seed_option
@click.option("--out", type=click.Path(dir_okay=False), default="head.pt", show_default=True,
              help="Where to write the trained head (torch state dict: weight, bias).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show the feature extraction progress bar (stderr).")
@json_option
@handle_errors
def train_command(epochs: int, lr: float, momentum: float, train_batch_size: int, weight_decay: float,
                  schedule: str, seed: int, out: str, progress: bool, as_json: bool, **opts: Any) -> None:
    """Train the FC head with SGD (the baseline) on the cached features; report each epoch."""
    t0 = time.perf_counter()
    res = get_features(feature_config(opts), progress=progress)
    if not as_json:
        click.echo(_describe(res))
    cfg = SGDConfig(epochs=epochs, lr=lr, momentum=momentum, batch_size=train_batch_size,
                    weight_decay=weight_decay, schedule=schedule, seed=seed)
    head0 = Head.init_like_linear(res.train.num_classes, res.train.dim, seed=seed)

    def report(rec: dict, _head: Head) -> None:
        if not as_json:
            click.echo(f"epoch {rec['epoch']:>3}/{epochs}  lr {rec['lr']:.4g}  train loss {rec['train_loss']:.4f}"
                       f"  acc {100 * rec['train_acc']:.2f}%  test loss {rec['test_loss']:.4f}"
                       f"  acc {100 * rec['test_acc']:.2f}%  {rec['wall_time_s']:.3f} s")

    head, history = train_sgd(head0, res.train, res.test, cfg, device=opts["device"], callback=report)
    with atomic_path(out) as tmp:
        torch.save(head.state_dict(), tmp)
    final = history[-1] if history else {}
    emit({"out": Path(out), "features": res.path, "features_hit": res.hit, "config": vars(cfg),
          "history": history, "final": final, "versions": versions(), "seconds": time.perf_counter() - t0},
         as_json, f"head written to {out}")
