"""``qubo-nn features`` (run the frozen backbone once, cache features) and ``qubo-nn train``
(the SGD baseline of the FC head on the cached features)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qubo_nn.cli.common import (SCHEDULES, check_writable, emit, feature_config, feature_options,
    handle_errors, json_option, progress_option, seed_option, sgd_options)


def _shapes(res) -> dict[str, list[int]]:
    return {"train_X": list(res.train.X.shape), "train_y": list(res.train.y.shape),
            "test_X": list(res.test.X.shape), "test_y": list(res.test.y.shape)}


def _describe(res) -> str:
    from qubo_nn.runtime import portable_path

    where = portable_path(res.path) if res.path is not None else "(generated, not cached)"
    state = "cache hit" if res.hit else ("rebuilt: " + res.rebuilt if res.rebuilt else "extracted")
    return (f"features: {where}\n  {state} in {res.seconds:.2f} s\n"
            f"  train {tuple(res.train.X.shape)}, test {tuple(res.test.X.shape)}, "
            f"{res.train.num_classes} classes")


def _check_cache_dir(opts: dict[str, Any]) -> None:
    from qubo_nn.data.features import default_cache_dir

    check_writable(opts["cache_dir"] or default_cache_dir(), "--cache-dir")


@click.command()
@feature_options
@progress_option
@json_option
@handle_errors
def features_command(progress: bool, as_json: bool, **opts: Any) -> None:
    """Run the frozen backbone once over both splits and cache the features.

    \b
    Example:
      qubo-nn features --dataset digits --weights none
    """
    from qubo_nn.data.features import get_features

    _check_cache_dir(opts)
    res = get_features(feature_config(opts), progress=progress)
    emit({"path": res.path, "hit": res.hit, "rebuilt": res.rebuilt, "shapes": _shapes(res),
          "num_classes": res.train.num_classes, "seconds": res.seconds}, as_json, _describe(res))


@click.command()
@feature_options
@sgd_options
@click.option("--schedule", type=click.Choice(SCHEDULES), default="none", show_default=True,
              help="Learning-rate schedule over the epochs (cosine; step: ×0.1 at 1/2 and 3/4).")
@seed_option
@click.option("--out", type=click.Path(dir_okay=False), default="head.pt", show_default=True,
              help="Where to write the trained head (torch state dict: weight, bias).")
@progress_option
@json_option
@handle_errors
def train_command(epochs: int, lr: float, momentum: float, sgd_batch_size: int, weight_decay: float,
                  schedule: str, seed: int, out: str, progress: bool, as_json: bool, **opts: Any) -> None:
    """Train the FC head with SGD (the baseline) on the cached features; report each epoch.

    \b
    Example:
      qubo-nn train --epochs 3 --out head.pt
    """
    check_writable(out, "--out", kind="file")
    import torch

    from qubo_nn.data.features import get_features
    from qubo_nn.core.head import Head
    from qubo_nn.runtime import atomic_path, versions
    from qubo_nn.train.sgd import SGDConfig, train_sgd

    t0 = time.perf_counter()
    cfg = SGDConfig(epochs=epochs, lr=lr, momentum=momentum, batch_size=sgd_batch_size,
                    weight_decay=weight_decay, schedule=schedule, seed=seed)
    cfg.validate()
    res = get_features(feature_config(opts), progress=progress)
    if not as_json:
        click.echo(_describe(res))
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
