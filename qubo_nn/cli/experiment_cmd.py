"""``qubo-nn experiment``: SGD baseline vs hybrid (SGD + QUBO sweeps + SGD) vs L-BFGS optimum."""
from __future__ import annotations

import json
from typing import Any

import click

from ..backbones import ARCHS
from ..errors import QuboNNError
from ..experiment import ExperimentConfig, default_out, run_experiment
from ..features import FEATURE_DATASETS
from ..hybrid import HybridConfig
from ..qubo import BuildConfig
from ..quadratic import BLOCK_KINDS
from ..train import SCHEDULES
from .common import device_option, emit, handle_errors, json_option

_D = ExperimentConfig()
_H = _D.hybrid


def parse_seeds(text: str) -> tuple[int, ...]:
    """'N' -> seeds 0..N−1; '3,4,5' (or '7,') -> those seeds."""
    text = text.strip()
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return tuple(range(n))
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise QuboNNError(f"--seeds expects a count N (seeds 0..N-1) or a comma list like 0,1,2, got {text!r}") from None


def parse_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise QuboNNError(f"--sampler-params expects a JSON object, got {text!r} ({exc})") from None
    if not isinstance(params, dict):
        raise QuboNNError(f"--sampler-params expects a JSON object, got {type(params).__name__}")
    return params


@click.command()
# features
@click.option("--dataset", type=click.Choice(FEATURE_DATASETS), default=_D.dataset,
              help="digits: bundled with scikit-learn (offline); cifar100: the real study; "
                   "synthetic-features: CIFAR-100-shaped random features (no backbone).")
@click.option("--arch", type=click.Choice(ARCHS), default=_D.arch, help="Frozen torchvision ResNet backbone.")
@click.option("--weights", default=_D.weights, help="Backbone weights: imagenet, none (seeded random) or a checkpoint path.")
@click.option("--image-size", type=click.IntRange(8, 1024), default=_D.image_size, help="Images resized to SIZE × SIZE.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder holding cifar-100-python [default: $QUBO_NN_DATA or ~/.cache/qubo-nn/data].")
@click.option("--download", is_flag=True, help="Download CIFAR-100 when missing.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache [default: $QUBO_NN_CACHE or ~/.cache/qubo-nn/features].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of each split.")
@click.option("--feature-seed", type=int, default=_D.feature_seed, help="Seed of the random backbone / synthetic features.")
@click.option("--n-train", type=click.IntRange(min=1), default=_D.n_train, help="synthetic-features: training samples.")
@click.option("--n-test", type=click.IntRange(min=1), default=_D.n_test, help="synthetic-features: test samples.")
@click.option("--feature-dim", type=click.IntRange(min=1), default=None,
              help="synthetic-features: feature dimension [default: the arch's, 512 for resnet18].")
@click.option("--num-classes", type=click.IntRange(min=2), default=_D.num_classes, help="synthetic-features: classes.")
@device_option
# SGD (both methods)
@click.option("--epochs", type=click.IntRange(min=1), default=_D.epochs, help="Total SGD epochs E of each method.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=_D.warmup_epochs,
              help="Hybrid: SGD epochs W before the QUBO phase (then E − W epochs of fine-tuning).")
@click.option("--lr", type=float, default=_D.lr, help="SGD learning rate (peak of the schedule).")
@click.option("--momentum", type=float, default=_D.momentum, help="SGD momentum.")
@click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size, help="SGD mini-batch size.")
@click.option("--weight-decay", type=float, default=_D.weight_decay,
              help="L2 on W (SGD weight decay = the l2 of the QUBO and of the L-BFGS objective).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=_D.schedule, help="Learning-rate schedule over E epochs.")
@click.option("--seeds", default=str(len(_D.seeds)), help="N (seeds 0..N−1) or a comma list, e.g. 0,1,2 or 7,")
# QUBO phase
@click.option("--sweeps", type=click.IntRange(min=1), default=_H.sweeps, help="Most QUBO sweeps over all blocks.")
@click.option("--tol", type=float, default=_H.tol, help="Stop sweeping after a sweep that gains less (nats).")
@click.option("--sampler", default=_H.sampler, help="Sampler name from the registry (qubo-nn samplers).")
@click.option("-m", "--sampler-params", default=None,
              help='Sampler parameters as JSON, e.g. \'{"num_reads": 2, "num_sweeps": 200}\' '
                   f"[default: {json.dumps(_H.sampler_params)}].")
@click.option("--num-reads", type=click.IntRange(min=1), default=None, help="Shortcut for sampler_params num_reads.")
@click.option("--num-sweeps", type=click.IntRange(min=1), default=None, help="Shortcut for sampler_params num_sweeps.")
@click.option("--polish/--no-polish", default=_H.polish, help="Polish samples with steepest descent.")
@click.option("--warm-start/--no-warm-start", default=_H.warm_start,
              help="Offer the current weights' bits as an initial state to the sampler.")
@click.option("--bits", type=click.IntRange(1, 16), default=_H.build.bits, help="Bits per weight in the QUBO.")
@click.option("--blocks", type=click.Choice(BLOCK_KINDS), default=_H.build.blocks, help="How weights are grouped into blocks.")
@click.option("--per-block", type=click.IntRange(min=1), default=_H.build.per_block,
              help="rows/columns: classes/features per block.")
@click.option("--block-size", type=click.IntRange(min=1), default=None, help="topk/random: weights per block.")
@click.option("--num-blocks", type=click.IntRange(min=1), default=None, help="topk: number of blocks.")
@click.option("--window", type=float, default=_H.build.window, help="Grid window in diagonal Newton steps.")
@click.option("--damping", "damping_rel", type=float, default=_H.build.damping_rel,
              help="Damping μ as a fraction of the block's mean Hessian diagonal.")
@click.option("--subsample", type=click.IntRange(min=1), default=None, help="Hessian on this many training samples.")
@click.option("--max-retries", type=click.IntRange(min=0), default=_H.max_retries, help="Retries of a rejected block.")
@click.option("--damping-growth", type=float, default=_H.damping_growth, help="μ × this per retry.")
@click.option("--workers", type=click.IntRange(min=1), default=_H.workers, help="Anneals in flight (CPU threads).")
@click.option("--device-threads", type=click.IntRange(min=1), default=None,
              help="Torch threads during the QUBO phase [default: unchanged].")
@click.option("--time-matched/--no-time-matched", default=_D.time_matched,
              help="Also run SGD for about as long as the hybrid took (sgd_matched).")
@click.option("--matched-max-factor", type=click.IntRange(min=1), default=_D.matched_max_factor,
              help="sgd_matched runs at most this many × E epochs.")
@click.option("--threads", type=click.IntRange(min=0), default=_D.threads,
              help="Torch CPU threads during the run (0: torch's default). 1 keeps timings stable on a shared CPU.")
@click.option("--lbfgs-max-iter", type=click.IntRange(min=1), default=_D.lbfgs_max_iter, help="L-BFGS iterations at most.")
# output
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: results/<dataset>-<timestamp>]; rerun with the same --out to resume.")
@click.option("--overwrite", is_flag=True, help="Discard the results in --out if they were made with other settings.")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@json_option
@handle_errors
def experiment_command(as_json: bool, progress: bool, **o: Any) -> None:
    """Compare SGD, the hybrid (SGD warm-up, QUBO sweeps, SGD fine-tuning), SGD given the
    hybrid's time and the L-BFGS optimum of the FC head on the same cached features over
    several seeds; write JSON and PNG plots.

    \b
    Defaults: digits (offline), resnet18, --weights none, 64×64, 3 seeds.
    The real study: qubo-nn experiment --dataset cifar100 --weights imagenet
    """
    params = dict(_H.sampler_params) if o["sampler_params"] is None else parse_params(o["sampler_params"])
    for key in ("num_reads", "num_sweeps"):
        if o[key] is not None:
            params[key] = o[key]
    build = BuildConfig(blocks=o["blocks"], per_block=o["per_block"], size=o["block_size"],
                        num_blocks=o["num_blocks"], bits=o["bits"], window=o["window"],
                        damping_rel=o["damping_rel"], subsample=o["subsample"])
    hybrid = HybridConfig(build=build, sampler=o["sampler"], sampler_params=params, polish=o["polish"],
                          warm_start=o["warm_start"], sweeps=o["sweeps"], tol=o["tol"],
                          max_retries=o["max_retries"], damping_growth=o["damping_growth"],
                          workers=o["workers"], device_threads=o["device_threads"])
    cfg = ExperimentConfig(
        dataset=o["dataset"], arch=o["arch"], weights=o["weights"], image_size=o["image_size"],
        data_root=o["data_root"], download=o["download"], cache_dir=o["cache_dir"], limit=o["limit"],
        n_train=o["n_train"], n_test=o["n_test"], feature_dim=o["feature_dim"], num_classes=o["num_classes"],
        feature_seed=o["feature_seed"], device=o["device"], epochs=o["epochs"], warmup_epochs=o["warmup_epochs"],
        lr=o["lr"], momentum=o["momentum"], batch_size=o["batch_size"], weight_decay=o["weight_decay"],
        schedule=o["schedule"], seeds=parse_seeds(o["seeds"]), hybrid=hybrid, lbfgs_max_iter=o["lbfgs_max_iter"],
        threads=o["threads"] or None, time_matched=o["time_matched"], matched_max_factor=o["matched_max_factor"],
        out=o["out"] or str(default_out(o["dataset"])), overwrite=o["overwrite"])
    summary = run_experiment(cfg, progress=progress and not as_json)
    text = summary["table"]
    if summary["loaded"]:
        text += f"\nresumed: loaded {len(summary['loaded'])} completed run(s), computed {len(summary['computed'])}"
    for w in summary["warnings"]:
        text += f"\nwarning: {w}"
    text += f"\nresults: {summary['out']} (summary.json, per-seed/, {len(summary['plots'])} plots)"
    emit({k: v for k, v in summary.items() if k != "table"}, as_json, text)
