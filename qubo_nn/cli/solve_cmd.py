"""``qubo-nn solve``, ``qubo-nn decode`` and ``qubo-nn samplers``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import QuboNNError
from ..samplers import DEFAULT_SAMPLER, SAMPLERS, describe
from ..solve import INITS, SOLUTION_NAME, SolveConfig, decode, solve
from .common import device_option, emit, handle_errors, json_option


def sampler_params(num_reads: int | None, num_sweeps: int | None, time_limit: float | None,
                   beta_range: tuple[float, float] | None, params_json: str | None) -> dict[str, Any]:
    """The sampler options given on the command line: the named flags plus ``--params`` JSON."""
    params: dict[str, Any] = {}
    if params_json:
        try:
            params = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise QuboNNError(f"--params must be a JSON object, got {params_json!r} ({exc})") from exc
        if not isinstance(params, dict):
            raise QuboNNError(f"--params must be a JSON object, got {type(params).__name__}")
    named = {"num_reads": num_reads, "num_sweeps": num_sweeps, "time_limit": time_limit,
             "beta_range": list(beta_range) if beta_range else None}
    for key, value in named.items():
        if value is None:
            continue
        if key in params:
            raise QuboNNError(f"sampler option {key!r} given twice (--{key.replace('_', '-')} and --params)")
        params[key] = value
    return params


def _solve_text(s: dict[str, Any], out: Path) -> str:
    t = s["totals"]
    lines = [f"solved {t['blocks']} block(s) with {s['config']['sampler']} in {t['wall_time_s']:.2f} s "
             f"(sampling {t['sample_time_s']:.2f} s, {t['mean_block_time_s']:.2f} s per block)"]
    for r in s["blocks"][:10]:
        line = f"  block {r['block_id']:>5}: best energy {r['best_energy']:.9g}"
        if r["predicted_decrease"] is not None:
            line += f"  (current {r['current_energy']:.9g}, predicted decrease {r['predicted_decrease']:.3g})"
        lines.append(line + f"  {r['timings']['sample_s']:.2f} s")
    if len(s["blocks"]) > 10:
        lines.append(f"  ... {len(s['blocks']) - 10} more")
    if "predicted_loss" in t:
        lines.append(f"  predicted loss {t['predicted_loss']:.6f} (from L0 = {t['L0']:.6f})")
    lines.append(f"  solution: {out / SOLUTION_NAME}")
    return "\n".join(lines)


@click.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=DEFAULT_SAMPLER, show_default=True,
              help="Sampler from the registry (`qubo-nn samplers` lists them and their options).")
@click.option("--out", type=click.Path(file_okay=False), default="solution", show_default=True,
              help="Output directory: one <block>.samples.json per block, then solution.json.")
@click.option("--num-reads", "-n", type=click.IntRange(min=1), default=None,
              help="Reads (samples) per block [default: the sampler's].")
@click.option("--num-sweeps", type=click.IntRange(min=1), default=None,
              help="Sweeps per read (neal) [default: 1000].")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="Base seed; block k uses a seed derived from (seed, k), recorded in the solution.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per block (neal: no new read after it; tabu: split over reads; sb, random).")
@click.option("--beta-range", type=(float, float), default=None, metavar="LO HI",
              help="neal's inverse temperatures [default: computed from the biases].")
@click.option("--params", "-m", "params_json", default=None, metavar="JSON",
              help='More sampler options as a JSON object, e.g. \'{"num_restarts": 10}\'.')
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Blocks solved in parallel (threads; neal and tabu release the GIL).")
@click.option("--polish", is_flag=True, help="Polish every sample with steepest descent.")
@click.option("--init", type=click.Choice(INITS), default="auto", show_default=True,
              help="Initial states: current weights (builder blocks), the sampler's random ones, or auto.")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Samples stored per block, lowest energy first [default: all].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@json_option
@handle_errors
def solve_command(source: str, sampler: str, out: str, num_reads: int | None, num_sweeps: int | None, seed: int,
                  time_limit: float | None, beta_range: tuple[float, float] | None, params_json: str | None,
                  workers: int, polish: bool, init: str, keep: int | None, progress: bool, as_json: bool) -> None:
    """Solve SOURCE: a QUBO file (.bqm, .coo, .qubo; from `qubo-nn build` or elsewhere), or a
    build directory / its manifest.json (every block, --workers at a time).

    For blocks built here the best energy is the predicted loss of the head with that block's
    weights moved; `qubo-nn decode OUT` turns the solution into a head.
    """
    cfg = SolveConfig(sampler=sampler, params=sampler_params(num_reads, num_sweeps, time_limit, beta_range,
                                                             params_json),
                      seed=seed, polish=polish, init=init, workers=workers, keep=keep)
    summary = solve(source, out, cfg, progress=progress and not as_json)
    emit({"solution": str(Path(out) / SOLUTION_NAME), **summary}, as_json, _solve_text(summary, Path(out)))


def _decode_text(r: dict[str, Any]) -> str:
    lines = [f"decoded {r['blocks']} block(s), {r['blocks_kept_current']} kept at the current weights (no predicted gain)",
             f"  loss      before {r['loss_before']:.6f}  predicted {r['predicted_loss']:.6f}  "
             f"true {r['true_loss']:.6f}  (Taylor error {r['taylor_error']:+.3g})",
             f"  accuracy  before {r['accuracy_before']:.4f}  after {r['accuracy']:.4f}"]
    if "test_accuracy" in r:
        lines.append(f"  test      accuracy before {r['test_accuracy_before']:.4f}  after {r['test_accuracy']:.4f}")
    if not r["features_match"]:
        lines.append("  warning: the features differ from the ones the QUBOs were built from (digest); the "
                     "predicted loss refers to those")
    if "head" in r:
        lines.append(f"  head: {r['head']}")
    return "\n".join(lines)


@click.command()
@click.argument("solution_dir", type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the new head (state dict) [default: SOLUTION_DIR/head.pt].")
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@json_option
@handle_errors
def decode_command(solution_dir: str, out: str | None, device: str, progress: bool, as_json: bool) -> None:
    """Turn the best samples of SOLUTION_DIR into a new head and report its true loss and
    accuracy (on the features the build used) beside the predicted loss."""
    base = Path(solution_dir)
    target = Path(out) if out else (base if base.is_dir() else base.parent) / "head.pt"
    report = decode(solution_dir, out=target, device=device, progress=progress and not as_json)
    emit(report, as_json, _decode_text(report))


@click.command()
@json_option
@handle_errors
def samplers_command(as_json: bool) -> None:
    """List the samplers: name, available or not (and why), accepted options."""
    rows = describe()
    lines = []
    for r in rows:
        state = "available" if r["available"] else "unavailable"
        lines.append(f"{r['name']:<9} {state:<12} {r['summary']}")
        if r["reason"]:
            lines.append(f"{'':<22}{r['reason']}")
        lines.append(f"{'':<22}options: {', '.join(r['parameters']) or '-'}")
    emit({"samplers": rows}, as_json, "\n".join(lines))
