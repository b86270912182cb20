"""``qubo-nn experiment``: SGD baseline vs hybrid (SGD + QUBO sweeps + SGD) vs L-BFGS optimum."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import click

from qubo_nn.errors import QuboNNError
from qubo_nn.cli.common import (SCHEDULES, TRAIN_GRIDS, block_options, check_writable, emit, executor_options,
    feature_options_except, handle_errors, json_option, progress_option, sampler_options, sampler_params,
    sgd_options)

# ExperimentConfig / HybridConfig defaults that differ from the shared options (checked by tests)
_HYBRID_SAMPLER_PARAMS = {"num_reads": 1, "num_sweeps": 100}


MAX_SEED_COUNT = 1000


def parse_seeds(text: str) -> tuple[int, ...]:
    """'N' -> seeds 0..N−1 (1 ≤ N ≤ 1000); '3,4,5' (or '7,') -> those seeds, each in [0, 2³¹ − 1]
    like every other command's --seed."""
    from qubo_nn.runtime import SEED_BOUND

    text = text.strip()
    bad = QuboNNError(f"--seeds expects a count N in [1, {MAX_SEED_COUNT}] (seeds 0..N-1) or a comma list of "
                      f"seeds in [0, {SEED_BOUND - 1}] like 0,1,2, got {text!r}")
    try:
        if "," not in text:
            n = int(text)
            if not 1 <= n <= MAX_SEED_COUNT:
                raise bad
            return tuple(range(n))
        seeds = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise bad from None
    if not seeds or any(not 0 <= s < SEED_BOUND for s in seeds):
        raise bad
    return seeds


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch intra-op threads = ``n`` inside the block (None: unchanged); restored after. The CLI's
    job: library code never sets process-wide state."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@click.command()
@click.option("--grid", type=click.Choice(TRAIN_GRIDS), default="fp32", show_default=True,
              help="fp32: the seed's comparison of SGD, the hybrid and L-BFGS; binary/ternary: the discrete form, "
                   "ptq vs tuned STE vs annealed code steps (digits or synthetic-features; options of the fp32 "
                   "comparison are refused).")
@feature_options_except("batch_size")
@click.option("--feature-dim", type=click.IntRange(min=1), default=None,
              help="synthetic-features: feature dimension [default: the arch's, 512 for resnet18].")
@click.option("--num-classes", type=click.IntRange(min=2), default=100, show_default=True,
              help="synthetic-features: classes.")
@sgd_options
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=2, show_default=True,
              help="Hybrid: SGD epochs W before the QUBO phase (then E − W epochs of fine-tuning).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
              help="Learning-rate schedule over E epochs.")
@click.option("--seeds", default="3", show_default=True, help="N (seeds 0..N−1) or a comma list, e.g. 0,1,2 or 7,")
# QUBO phase
@click.option("--sweeps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Most QUBO sweeps over all blocks.")
@click.option("--tol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Stop sweeping after a sweep that gains less (nats).")
@sampler_options
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Offer the current weights' bits as an initial state to the sampler.")
@block_options
@click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a rejected block.")
@click.option("--damping-growth", type=click.FloatRange(min=1, min_open=True), default=4.0, show_default=True,
              help="Damping × this per retry.")
@executor_options("the anneals run")
@click.option("--device-threads", type=click.IntRange(min=1), default=None,
              help="Torch threads during the QUBO phase [default: unchanged].")
@click.option("--time-matched/--no-time-matched", default=True, show_default=True,
              help="Also run SGD for about as long as the hybrid took (sgd_matched).")
@click.option("--matched-max-factor", type=click.IntRange(min=1), default=100, show_default=True,
              help="sgd_matched runs at most this many × E epochs.")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="Torch CPU threads during the run (0: torch's default). 1 keeps timings stable on a shared CPU.")
@click.option("--lbfgs-max-iter", type=click.IntRange(min=1), default=500, show_default=True,
              help="L-BFGS iterations at most.")
# output
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: results/<dataset>-<timestamp>]; rerun with the same --out to resume.")
@click.option("--overwrite", is_flag=True, help="Discard the results in --out if they were made with other settings.")
@progress_option
@json_option
@handle_errors
def experiment_command(as_json: bool, progress: bool, grid: str, **o: Any) -> None:
    """Compare SGD, the hybrid (SGD warm-up, QUBO sweeps, SGD fine-tuning), SGD given the
    hybrid's time and the L-BFGS optimum of the FC head on the same cached features over
    several seeds; write JSON and PNG plots.

    \b
    Defaults: digits (offline), resnet18, --weights none, 64×64, 3 seeds.
    The real study: qubo-nn experiment --dataset cifar100 --weights imagenet

    \b
    The discrete form (binary/ternary heads): qubo-nn experiment --grid binary

    \b
    Example:
      qubo-nn experiment --seeds 1 --epochs 4 --bits 2 -m '{"num_sweeps": 200}' --out runs/quick
    """
    if grid != "fp32":
        return _discrete(grid, as_json, progress, o)
    # everything is checked before anything is written (config.json records the settings)
    params = sampler_params(o, base=_HYBRID_SAMPLER_PARAMS)
    seeds = parse_seeds(o["seeds"])
    from qubo_nn.study.experiment import ExperimentConfig, default_out, run_experiment
    from qubo_nn.workflows.head_optimize import HybridConfig
    from qubo_nn.workflows.build import BuildConfig

    out = o["out"] or str(default_out(o["dataset"]))
    check_writable(out)
    build = BuildConfig(blocks=o["blocks"], per_block=o["per_block"], size=o["block_size"],
                        num_blocks=o["num_blocks"], bits=o["bits"], encoding=o["encoding"], window=o["window"],
                        damping_rel=o["damping"], subsample=o["subsample"])
    hybrid = HybridConfig(build=build, sampler=o["sampler"], sampler_params=params, polish=o["polish"],
                          warm_start=o["warm_start"], sweeps=o["sweeps"], tol=o["tol"],
                          max_retries=o["max_retries"], damping_growth=o["damping_growth"],
                          workers=o["workers"], device_threads=o["device_threads"], executor=o["executor"],
                          ray_address=o["ray_address"])
    cfg = ExperimentConfig(
        dataset=o["dataset"], arch=o["arch"], weights=o["weights"], image_size=o["image_size"],
        data_root=o["data_root"], download=o["download"], cache_dir=o["cache_dir"], limit=o["limit"],
        n_train=o["n_train"], n_test=o["n_test"], feature_dim=o["feature_dim"], num_classes=o["num_classes"],
        feature_seed=o["feature_seed"], device=o["device"], epochs=o["epochs"], warmup_epochs=o["warmup_epochs"],
        lr=o["lr"], momentum=o["momentum"], batch_size=o["sgd_batch_size"], weight_decay=o["weight_decay"],
        schedule=o["schedule"], seeds=seeds, hybrid=hybrid, lbfgs_max_iter=o["lbfgs_max_iter"],
        threads=o["threads"] or None, time_matched=o["time_matched"], matched_max_factor=o["matched_max_factor"],
        out=out, overwrite=o["overwrite"])
    cfg.validate()
    summary = run_experiment(cfg, progress=progress and not as_json, thread_scope=lambda: torch_threads(cfg.threads),
                             qubo_thread_scope=lambda: torch_threads(cfg.hybrid.device_threads))
    text = summary["table"]
    if summary["loaded"]:
        text += f"\nresumed: loaded {len(summary['loaded'])} completed run(s), computed {len(summary['computed'])}"
    for w in summary["warnings"]:
        text += f"\nwarning: {w}"
    text += f"\nresults: {summary['out']} (summary.json, per-seed/, {len(summary['plots'])} plots)"
    emit({k: v for k, v in summary.items() if k != "table"}, as_json, text)




#: the options ``experiment --grid binary|ternary`` takes; any other given on the command line is refused
_DISCRETE_OPTIONS = {"dataset", "n_train", "n_test", "feature_dim", "num_classes", "seeds", "sweeps", "subsample",
                     "threads", "out", "progress", "as_json", "grid"}


def _discrete(grid: str, as_json: bool, progress: bool, o: dict[str, Any]) -> None:
    ctx = click.get_current_context()
    given = [n for n in ctx.params if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
    wrong = sorted(set(given) - _DISCRETE_OPTIONS)
    if wrong:
        raise click.UsageError(f"{', '.join('--' + n.replace('_', '-') for n in wrong)}: not an option of "
                               f"experiment --grid {grid} (it takes --dataset, --n-train, --n-test, --feature-dim, "
                               f"--num-classes, --seeds, --sweeps, --subsample, --threads, --out)")
    if o["dataset"] not in ("digits", "synthetic-features"):
        raise QuboNNError(f"experiment --grid {grid} runs on digits or synthetic-features, got {o['dataset']!r}")
    synthetic_only = sorted({"n_train", "n_test", "feature_dim", "num_classes"} & set(given))
    if o["dataset"] == "digits" and synthetic_only:
        raise click.UsageError(f"{', '.join('--' + n.replace('_', '-') for n in synthetic_only)}: only for "
                               f"--dataset synthetic-features (digits is the embedded set as it is)")
    seeds = parse_seeds(o["seeds"])
    from dataclasses import replace

    from qubo_nn.study.discrete import DiscreteExperimentConfig, format_table, run_discrete_experiment
    from qubo_nn.workflows.train_discrete import DiscreteConfig

    out = o["out"] or f"results/discrete-{grid}-{o['dataset']}"
    check_writable(out)
    train = replace(DiscreteConfig(), subsample=o["subsample"],
                    sweeps=o["sweeps"] if "sweeps" in given else DiscreteConfig().sweeps)
    cfg = DiscreteExperimentConfig(dataset=o["dataset"], grid=grid, seeds=seeds, n_train=o["n_train"] or 50_000,
                                   n_test=o["n_test"] or 10_000, dim=o["feature_dim"] or 512,
                                   num_classes=o["num_classes"], train=train)
    cfg.validate()
    with torch_threads(o["threads"] or None):
        summary = run_discrete_experiment(cfg, out, progress=progress and not as_json)
    emit({"out": out, **summary}, as_json, format_table(summary))
