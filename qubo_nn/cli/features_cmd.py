"""``qubo-nn features`` (run the frozen backbone once, cache features) and ``qubo-nn train``
(the SGD baseline of the FC head on the cached features)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qubo_nn.cli.common import (
    DISCRETE_METHODS,
    SCHEDULES,
    STEP_SOLVERS,
    TRAIN_GRIDS,
    check_writable,
    emit,
    feature_config,
    feature_options,
    handle_errors,
    json_option,
    progress_option,
    seed_option,
    sgd_options,
)


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
@click.option("--grid", type=click.Choice(TRAIN_GRIDS), default="fp32", show_default=True,
              help="fp32: the SGD baseline head; binary (w = α·s, s = ±1) or ternary (w = α·t, t ∈ {−1, 0, 1}): "
                   "a discrete head trained by --method from the fp32 reference head.")
@click.option("--method", type=click.Choice(DISCRETE_METHODS), default=None,
              help="[binary/ternary] ptq: CD from GPTQ on the exact CE curvature; ste: straight-through QAT "
                   "(lr and epochs tuned on a held-out split); qubo: ptq, then annealed code steps accepted "
                   "on the true loss  [default: qubo].")
@click.option("--step-solver", type=click.Choice(STEP_SOLVERS), default=None,
              help="[binary/ternary, qubo] the annealing pipeline (qubo) or CD alone (cd, the classical "
                   "control)  [default: qubo].")
@click.option("--sweeps", type=click.IntRange(min=1), default=None,
              help="[binary/ternary, qubo] at most this many sweeps over the rows  [default: 8].")
@click.option("--subsample", type=click.IntRange(min=1), default=None,
              help="[binary/ternary] Hessian blocks from a seeded subset of this many training samples.")
@click.option("--val-every", type=click.IntRange(min=1), default=None,
              help="[binary/ternary, qubo] check the validation loss every N row steps inside a sweep and keep "
                   "the codes of the best check (early stopping inside a sweep)  [default: only between sweeps].")
@seed_option
@click.option("--out", type=click.Path(dir_okay=False), default="head.pt", show_default=True,
              help="Where to write the trained head (torch state dict: weight, bias).")
@progress_option
@json_option
@handle_errors
def train_command(epochs: int, lr: float, momentum: float, sgd_batch_size: int, weight_decay: float,
                  schedule: str, grid: str, method: str | None, step_solver: str | None, sweeps: int | None,
                  subsample: int | None, val_every: int | None, seed: int, out: str, progress: bool, as_json: bool,
                  **opts: Any) -> None:
    """Train the FC head on the cached features: the SGD baseline (--grid fp32), or a binary/ternary
    head (--grid binary|ternary --method ptq|ste|qubo); report the training curve.

    \b
    Example:
      qubo-nn train --epochs 3 --out head.pt
      qubo-nn train --grid binary --method qubo --out head-bin.pt
    """
    check_writable(out, "--out", kind="file")
    _refuse_other_grid_options(grid)
    _refuse_qubo_only_options(grid, method or "qubo")
    if grid != "fp32":
        return _train_discrete(grid, method or "qubo", step_solver, sweeps, subsample, val_every, seed, out,
                               progress, as_json, opts)
    import torch

    from qubo_nn.core.head import Head
    from qubo_nn.data.features import get_features
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


_SGD_ONLY = ("epochs", "lr", "momentum", "sgd_batch_size", "weight_decay", "schedule")
_DISCRETE_ONLY = ("method", "step_solver", "sweeps", "subsample", "val_every")


def _refuse_other_grid_options(grid: str) -> None:
    """An option of the other kind of training is refused (exit 2), never ignored."""
    ctx = click.get_current_context()
    given = [n for n in ctx.params if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
    wrong = [n for n in given if n in (_SGD_ONLY if grid != "fp32" else _DISCRETE_ONLY)]
    if wrong:
        names = ", ".join("--" + n.replace("_", "-") for n in wrong)
        raise click.UsageError(f"{names} {'applies' if len(wrong) == 1 else 'apply'} to "
                               f"{'--grid fp32 (SGD)' if grid != 'fp32' else '--grid binary/ternary'} only, "
                               f"not to --grid {grid}")


_QUBO_ONLY = ("step_solver", "sweeps", "val_every")


def _refuse_qubo_only_options(grid: str, method: str) -> None:
    """--step-solver, --sweeps and --val-every steer qubo's sweeps: with --method ptq or ste they are refused
    (exit 2), never ignored."""
    if grid == "fp32" or method == "qubo":
        return
    ctx = click.get_current_context()
    wrong = [n for n in _QUBO_ONLY if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
    if wrong:
        names = ", ".join("--" + n.replace("_", "-") for n in wrong)
        raise click.UsageError(f"{names} {'applies' if len(wrong) == 1 else 'apply'} to --method qubo only, "
                               f"not to --method {method}")


def _train_discrete(grid: str, method: str, step_solver: str | None, sweeps: int | None, subsample: int | None,
                    val_every: int | None, seed: int, out: str, progress: bool, as_json: bool, opts: dict) -> None:
    import torch

    from qubo_nn.data.features import get_features
    from qubo_nn.runtime import atomic_path, atomic_write_json, to_jsonable, versions
    from qubo_nn.train.sgd import reference_head
    from qubo_nn.workflows.train_discrete import DiscreteConfig, train_discrete

    t0 = time.perf_counter()
    cfg = DiscreteConfig(grid=grid, method=method, seed=seed, subsample=subsample)
    if step_solver is not None:
        cfg.step_solver = step_solver
    if sweeps is not None:
        cfg.sweeps = sweeps
    if val_every is not None:
        cfg.val_every = val_every
    cfg.validate()
    record = Path(out).with_suffix(".json")
    if record.resolve() == Path(out).resolve():
        raise click.UsageError(f"--out {out!r}: the head and its .json record would be the same file; "
                               "expected a head path such as head-bin.pt")
    check_writable(record, "--out (its .json record)", kind="file")
    res = get_features(feature_config(opts), progress=progress)
    if not as_json:
        click.echo(_describe(res))
        click.echo("fitting the fp32 reference head (L2 chosen on a held-out split) ...", err=True)
    head, rinfo = reference_head(res.train, seed=0, device="cpu")
    dh, rec = train_discrete(head, res.train, res.test, cfg)
    with atomic_path(out) as tmp:
        torch.save({**dh.head().state_dict()}, tmp)
    rec.update(features=res.path, fp32={"l2": rinfo["l2"]}, versions=versions(), seconds=time.perf_counter() - t0)
    atomic_write_json(record, to_jsonable(rec))
    f = rec["final"]
    emit({"out": Path(out), "record": record, **rec}, as_json,
         f"{grid} head by {method}: test acc {100 * f['test_acc']:.2f}%  test loss {f['test_loss']:.4f}  "
         f"train loss {f['train_loss']:.4f}  ({rec['wall_time_s']:.1f} s); head written to {out}, record {record}")
