"""``qubo-nn prune``: choose k of n input channels per ResNet layer (L1, greedy, LASSO or QUBO),
refit the kept weights, re-estimate BatchNorm; a pruned checkpoint and a JSON report."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import click

from qubo_nn.errors import QuboNNError
from qubo_nn.cli.common import (SAMPLER_CHOICE, SAMPLER_HELP, SAMPLER_PARAMS_HELP, check_writable, emit,
    handle_errors, json_option, pretrain_note, progress_option, seed_option)

# literal copies keep `qubo-nn --help` free of torch imports; tests check they match the library
_METHODS = ("l1", "greedy", "lasso", "qubo")
_PENALTY_MODES = ("penalty", "cqm")


def check_layers(layer: str) -> None:
    """``--layer`` names each layer at most once (a repeat would prune it twice)."""
    names = [w.strip() for w in layer.split(",") if w.strip()]
    repeated = sorted({w for w in names if names.count(w) > 1})
    if repeated:
        raise QuboNNError(f"--layer: expected each layer once, got {', '.join(repeated)} more than once")


@click.command()
@click.option("--weights", default=None,
              help="ResNet checkpoint to prune [default: the digits ResNet-18 of `qubo-nn pretrain`, trained "
                   "when missing].")
@click.option("--layer", default="all", show_default=True,
              help="'all' or comma-separated layers whose input channels are pruned (layer1.0.conv2, ...).")
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of each layer's input channels kept: k = max(1, round(keep·n)), so at least one "
                   "channel stays.")
@click.option("--method", type=click.Choice(_METHODS), default="qubo", show_default=True,
              help="l1: filter norms (Li et al.); greedy: ThiNet backward elimination; lasso: He et al.; "
                   "qubo: the exact quadratic objective sampled from the best of the other three.")
@click.option("--sampler", type=SAMPLER_CHOICE, default="tabu", show_default=True, help=SAMPLER_HELP)
@click.option("-m", "--sampler-params", "sampler_params", default='{"num_reads": 4, "timeout": 1000}',
              show_default=True, help=SAMPLER_PARAMS_HELP)
@click.option("--params", "params_alias", default=None, hidden=True, help="Old name of --sampler-params.")
@click.option("--penalty-mode", type=click.Choice(_PENALTY_MODES), default="penalty", show_default=True,
              help="Σs = k as λ(Σs − k)² (penalty) or through dimod's ConstrainedQuadraticModel + cqm_to_bqm.")
@click.option("--penalty", default="safe", show_default=True,
              help="λ, or 'safe' (a bound that makes the penalized optimum feasible; with --penalty-mode cqm, "
                   "'safe' means dimod's default).")
@click.option("--calib", type=click.IntRange(min=1), default=256, show_default=True,
              help="Calibration images drawn (by --seed) from the train split.")
@click.option("--refit/--no-refit", default=True, show_default=True, help="Least-squares refit of kept weights.")
@click.option("--bn/--no-bn", "reestimate_bn", default=True, show_default=True,
              help="Re-estimate BatchNorm statistics on the calibration images after pruning.")
@click.option("--out", default="pruned", show_default=True, help="Folder for pruned.pt and report.json.")
@click.option("--export", default=None, help="Also write each layer's pruning QUBO here (<layer>.bqm + .prune.json).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads [default: torch's].")
@seed_option
@progress_option
@json_option
@handle_errors
def prune_command(weights, layer, keep, method, sampler, sampler_params, params_alias, penalty_mode, penalty, calib,
                  refit, reestimate_bn, out, export, threads, seed, progress, as_json) -> None:
    """Prune the input channels of ResNet layers (masked: shapes kept, pruned channels zero) and
    write the pruned checkpoint (--weights PATH loads it) and a report.

    \b
    Example:
      qubo-nn prune --keep 0.5 --method qubo --layer layer4.1.conv2 --out pruned/
    """
    check_layers(layer)
    check_writable(out)
    if export:
        check_writable(export, "--export")
    import torch

    from qubo_nn.workflows.prune.network import PruneConfig
    from qubo_nn.workflows.prune.run import PruneRunConfig, run_prune

    if threads is not None:
        torch.set_num_threads(threads)
    option = "--params" if params_alias is not None else "--sampler-params"
    text = params_alias if params_alias is not None else sampler_params
    try:
        params: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuboNNError(f"{option} must be a JSON object, got {text!r} ({exc})") from exc
    if not isinstance(params, dict):
        raise QuboNNError(f"{option} must be a JSON object, got {type(params).__name__}")
    if penalty != "safe":
        try:
            penalty = float(penalty)
        except ValueError as exc:
            raise QuboNNError(f"--penalty must be a number or 'safe', got {penalty!r}") from exc
    run = PruneRunConfig(weights=weights, calib=calib, out=out, export=export)
    if weights is None:
        pretrain_note(run.dataset, run.arch, run.image_size, quiet=not progress or as_json)
    pcfg = PruneConfig(layer=layer, keep=keep, method=method, sampler=sampler, sampler_params=params,
                       penalty_mode=penalty_mode, penalty=penalty, refit=refit, reestimate_bn=reestimate_bn, seed=seed)
    rep = run_prune(replace(run, prune=pcfg), progress=progress and not as_json)
    t = rep["test"]
    lines = [f"{'layer':<16} {'n':>4} {'k':>4} {'err before refit':>16} {'after refit':>12} {'select s':>9}"]
    for r in rep["layers"]:
        lines.append(f"{r['layer']:<16} {r['n']:>4} {r['k']:>4} {r['error_before_refit']:>16.4f} "
                     f"{r['error_after_refit']:>12.4f} {r['select_s']:>9.2f}")
    lines += [f"test acc %: original {t['original']['acc']:.2f}, pruned {t['pruned_before_bn']['acc']:.2f}, "
              f"after BN re-estimation {t['pruned']['acc']:.2f}",
              f"test loss: original {t['original']['loss']:.4f}, pruned {t['pruned_before_bn']['loss']:.4f}, "
              f"after BN re-estimation {t['pruned']['loss']:.4f}",
              f"multiply-adds kept: {100 * rep['macs']['kept_fraction']:.1f} %",
              f"checkpoint: {rep.get('checkpoint')}  report: {out}/report.json"]
    summary = {"checkpoint": rep.get("checkpoint"), "test": t, "macs": rep["macs"],
               "layers": [{k: r[k] for k in ("layer", "n", "k", "error_before_refit", "error_after_refit",
                                             "select_s")} for r in rep["layers"]],
               "exported": [e["file"] for e in rep["exported"]]}
    emit(summary, as_json, "\n".join(lines))
