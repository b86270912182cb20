"""``qubo-nn solve``, ``qubo-nn decode`` and ``qubo-nn samplers``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qubo_nn.cli.common import (INITS, SAMPLER_OWN_ARGS, check_writable, device_option, emit,
    executor_options, handle_errors, json_option, progress_option, sampler_options, sampler_params)


def _solve_text(s: dict[str, Any], out: Path) -> str:
    t = s["totals"]
    fresh = t["blocks"] - t.get("resumed", 0)
    lines = [f"solved {fresh} block(s) with {s['config']['sampler']} in {t['wall_time_s']:.2f} s"
             + (f" (sampling {t['sample_time_s']:.2f} s, {t['mean_sample_time_s']:.2f} s per block)" if fresh else "")
             + (f"; {t['resumed']} resumed from an earlier run (their sampling took {t['resumed_sample_time_s']:.2f} s "
                f"then)" if t.get("resumed") else "")]
    if fresh:
        lines.append(f"  with reading and writing: {t['mean_block_time_s']:.2f} s per block")
    for r in s["blocks"][:10]:
        line = f"  block {r['block_id']:>5}: best energy {r['best_energy']:.9g}"
        if r["predicted_decrease"] is not None:
            line += f"  (current {r['current_energy']:.9g}, predicted decrease {r['predicted_decrease']:.3g})"
        lines.append(line + f"  {r['timings']['sample_s']:.2f} s")
    if len(s["blocks"]) > 10:
        lines.append(f"  ... {len(s['blocks']) - 10} more")
    if "predicted_loss" in t:
        lines.append(f"  predicted loss {t['predicted_loss']:.6f} (from L0 = {t['L0']:.6f})")
        lines.append("  (if every block's best sample is injected, cross terms between blocks ignored; `decode` "
                     "injects only the blocks that lower the true loss, so its prediction can differ)")
    lines.append(f"  solution: {out / 'solution.json'}")
    return "\n".join(lines)


@click.command()
@click.argument("source", type=click.Path(exists=True))
@sampler_options
@click.option("--out", type=click.Path(file_okay=False), default="solution", show_default=True,
              help="Output directory: one <block>.samples.json per block, then solution.json.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="Base seed; block k uses a seed derived from (seed, k), recorded in the solution.")
@executor_options("blocks are solved")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="Blocks read ahead and not yet finished (bounds the driver's memory) [default: 2 x parallelism].")
@click.option("--overwrite", is_flag=True,
              help="Replace the solve files (solution.json, *.samples.json) already in --out; without it a "
                   "rerun only resumes an interrupted run of the same solve.")
@click.option("--init", type=click.Choice(INITS), default="auto", show_default=True,
              help="Initial states: current weights (builder blocks), the sampler's random ones, or auto.")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Samples stored per block, lowest energy first [default: all].")
@progress_option
@json_option
@handle_errors
def solve_command(source: str, out: str, seed: int, workers: int, executor: str, ray_address: str | None,
                  max_in_flight: int | None, overwrite: bool, init: str, keep: int | None, progress: bool,
                  as_json: bool, **o: Any) -> None:
    """Solve SOURCE: a QUBO file (.bqm, .coo, .qubo; from `qubo-nn build` or elsewhere), or a
    build directory / its manifest.json (every block, --workers at a time).

    For blocks built here the best energy is the predicted loss of the head with that block's
    weights moved; `qubo-nn decode OUT` turns the solution into a head. The level samplers
    (gptq, cd, pipeline) read each block's integer form from its block_NNNNN.levels.npz (written
    by `qubo-nn build`); a file without one is refused.

    \b
    Example:
      qubo-nn solve qubos/ --sampler neal --num-sweeps 2000 --workers 2 --out sol/
    """
    params = sampler_params(o)
    check_writable(out)
    from qubo_nn.workflows.solve import SolveConfig, solve

    cfg = SolveConfig(sampler=o["sampler"], params=params, seed=seed, polish=o["polish"], init=init,
                      workers=workers, keep=keep, executor=executor, ray_address=ray_address,
                      max_in_flight=max_in_flight)
    summary = solve(source, out, cfg, progress=progress and not as_json, overwrite=overwrite)
    emit({"solution": str(Path(out) / "solution.json"), **summary}, as_json, _solve_text(summary, Path(out)))


def _decode_text(r: dict[str, Any]) -> str:
    lines = [f"decoded {r['blocks']} block(s): {r['blocks'] - r['blocks_kept_current']} step(s) injected, "
             f"{r['blocks_no_predicted_gain']} without predicted gain and {r['blocks_true_loss_rose']} raising the "
             f"true loss kept at the current weights" + (" (--force: all injected)" if r["force"] else ""),
             f"  loss      before {r['loss_before']:.6f}  predicted {r['predicted_loss']:.6f}  "
             f"true {r['true_loss']:.6f}  (Taylor error {r['taylor_error']:+.3g})",
             f"  accuracy  before {r['accuracy_before']:.4f}  after {r['accuracy']:.4f}"]
    if "test_accuracy" in r:
        lines.append(f"  test      accuracy before {r['test_accuracy_before']:.4f}  after {r['test_accuracy']:.4f}")
    for b in r["per_block"][:20]:
        lines.append(f"  block {b['block_id']:>5}: true loss {b['true_loss_before']:.6f} -> "
                     f"{b['true_loss_with_step']:.6f}  {'injected' if not b['kept_current'] else 'kept'} "
                     f"({b['reason']})")
    if len(r["per_block"]) > 20:
        lines.append(f"  ... {len(r['per_block']) - 20} more")
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
@click.option("--build", "build_dir", type=click.Path(exists=True), default=None,
              help="The build folder (or its manifest.json) when it is no longer where solution.json says "
                   "[default: the path recorded, relative to SOLUTION_DIR].")
@click.option("--force", is_flag=True,
              help="Inject every block's best sample, even where it predicts no gain or raises the true loss.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache to read the build's features from [default: the one the build recorded].")
@device_option
@progress_option
@json_option
@handle_errors
def decode_command(solution_dir: str, out: str | None, build_dir: str | None, force: bool, cache_dir: str | None,
                   device: str, progress: bool, as_json: bool) -> None:
    """Turn the best samples of SOLUTION_DIR into a new head and report its true loss and
    accuracy (on the features the build used) beside the predicted loss.

    Blocks are injected one after the other, each only if its step lowers the true loss of
    the head so far by more than 1e-6 nats (the one step policy the hybrid uses too); --force
    injects them all. An --out that is one of the inputs (the build's head.pt, its manifest,
    a block file, solution.json, a samples file) is refused: exit 2, nothing written.

    \b
    Example:
      qubo-nn decode sol/ --out head-qubo.pt
    """
    base = Path(solution_dir)
    target = Path(out) if out else (base if base.is_dir() else base.parent) / "head.pt"
    check_writable(target, "--out", kind="file")
    from qubo_nn.workflows.decode import decode

    report = decode(solution_dir, out=target, device=device, progress=progress and not as_json, build=build_dir,
                    force=force, cache_dir=cache_dir)
    emit(report, as_json, _decode_text(report))


def _plain_doc(text: str) -> str:
    """A docstring line without reST markup: ``code`` -> code, :class:`~a.b.C` -> C."""
    import re

    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text or "")
    return re.sub(r"``([^`]*)``", r"\1", text).replace("`", "")


@click.command()
@json_option
@handle_errors
def samplers_command(as_json: bool) -> None:
    """List the samplers: name, available or not (and why), the options -m accepts.

    \b
    Example:
      qubo-nn samplers --json
    """
    from qubo_nn.samplers import describe

    rows = describe()
    for r in rows:   # seed, initial_states (--seed, --init) and the integer form (the build's files) are set by
        # qubo-nn, never through -m
        r["parameters"] = [p for p in r["parameters"] if p not in SAMPLER_OWN_ARGS and p != "integer_form"]
        r["summary"] = _plain_doc(r["summary"])
    lines = []
    for r in rows:
        state = "available" if r["available"] else "unavailable"
        lines.append(f"{r['name']:<9} {state:<12} {r['summary']}")
        if r["reason"]:
            lines.append(f"{'':<22}{r['reason']}")
        lines.append(f"{'':<22}options (-m): {', '.join(r['parameters']) or '-'}")
    emit({"samplers": rows}, as_json, "\n".join(lines))
