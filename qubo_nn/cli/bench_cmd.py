"""``qubo-nn bench``: the nnqubo suite (generate, verify) and the harness that runs any sampler over it.

    qubo-nn bench SUITE_DIR --sampler NAME [-m JSON] --time-limit S --repeats R [--filter PAT] [--out DIR]
    qubo-nn bench generate --out DIR [--size small|full] [--formats dimod,qubo,coo,ommx]
    qubo-nn bench verify DIR [--regenerate]
    qubo-nn bench profile RESULT.json ... --out PLOT.png
    qubo-nn bench bqp FOLDER --out DIR          (OR-Library bqp files as a control suite)
"""
from __future__ import annotations

from pathlib import Path

import click

from qubo_nn.cli.common import emit, handle_errors, json_option, parse_json_object, progress_option

SUBCOMMANDS = ("run", "generate", "verify", "profile", "bqp")


class BenchGroup(click.Group):
    """``qubo-nn bench SUITE_DIR ...`` means ``qubo-nn bench run SUITE_DIR ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=BenchGroup)
def bench_command() -> None:
    """The nnqubo-v1 benchmark suite of neural-network QUBOs and its harness.

    \b
      qubo-nn bench generate --out nnqubo-v1            # the suite, with baselines, best known, bounds
      qubo-nn bench verify nnqubo-v1                    # sha256 of every file, digests vs the committed ones
      qubo-nn bench nnqubo-v1 --sampler tabu --time-limit 0.2 --repeats 3 --out runs/
      qubo-nn bench profile runs/*.json --out profile.png
    """


def _progress(on: bool):
    return (lambda s: click.echo(s, err=True)) if on else None


@bench_command.command("run")
@click.argument("suite_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--sampler", default="neal", show_default=True,
              help="A registry name (`qubo-nn samplers`), 'external' (a program, -m '{\"command\": ...}'), "
                   "or module:Class of any dimod sampler.")
@click.option("-m", "--sampler-params", default=None, metavar="JSON", help="Sampler options as a JSON object.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per repeat, passed as the sampler's time_limit (pipeline: time_budget_s) when it takes one.")
@click.option("--repeats", "-r", type=click.IntRange(min=1), default=3, show_default=True,
              help="Independent runs per instance (seeds derived from --seed).")
@click.option("--filter", "pattern", default=None, help="Instances whose name or family matches (fnmatch or substring).")
@click.option("--tol", type=click.FloatRange(min=0), default=1e-6, show_default=True,
              help="Success: energy <= E* + tol·|E*|.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench-results", show_default=True,
              help="Directory for SAMPLER.json and SAMPLER.csv.")
@click.option("--name", default=None, help="File stem of the results [default: the sampler name].")
@progress_option
@json_option
@handle_errors
def run_command(suite_dir: str, sampler: str, sampler_params: str | None, time_limit: float | None, repeats: int,
                pattern: str | None, tol: float, seed: int, out: str, name: str | None, progress: bool,
                as_json: bool) -> None:
    """Run a sampler over the suite in SUITE_DIR (or an OR-Library control suite from `bench bqp`)."""
    import torch

    from qubo_nn.suite.harness import run_bench, write_results

    torch.set_num_threads(1)
    params = parse_json_object(sampler_params)
    res = run_bench(suite_dir, sampler, params, time_limit=time_limit, repeats=repeats, pattern=pattern,
                    seed=seed, tol=tol, progress=_progress(progress and not as_json))
    files = write_results(res, out, name)
    rows = [r for r in res["instances"] if not r.get("skipped")]
    solved = sum(1 for r in rows if r.get("success_probability"))
    summary = {"sampler": sampler, "instances": len(res["instances"]), "run": len(rows), "reached_best": solved,
               "files": {k: str(v) for k, v in files.items()}, "wall_time_s": res["wall_time_s"]}
    emit(summary, as_json, f"{sampler}: reached the best known on {solved}/{len(rows)} instances "
                           f"({len(res['instances']) - len(rows)} skipped) in {res['wall_time_s']:.1f} s; "
                           f"{files['json']}, {files['csv']}")


@bench_command.command("generate")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Suite directory to write.")
@click.option("--size", type=click.Choice(("small", "full")), default="full", show_default=True,
              help="small: the few instances `make test` regenerates.")
@click.option("--formats", default="dimod,qubo,coo,ommx", show_default=True, help="Comma list of file formats.")
@click.option("--no-reference", is_flag=True, help="Skip baselines, best known and bounds (instances only).")
@click.option("--tabu-s", type=click.FloatRange(min=0, min_open=True), default=0.3, show_default=True,
              help="Tabu's seconds (baseline) per instance.")
@click.option("--lns-tries", type=click.IntRange(min=0), default=100, show_default=True,
              help="Exact sub-solves of the best-known search per instance.")
@click.option("--filter", "only", default=None, help="Only recipes whose name contains this.")
@progress_option
@json_option
@handle_errors
def generate_command(out: str, size: str, formats: str, no_reference: bool, tabu_s: float, lns_tries: int,
                     only: str | None, progress: bool, as_json: bool) -> None:
    """Generate the suite (seeded; content digests must equal the committed ones: `bench verify`)."""
    import torch

    from qubo_nn.suite.generate import generate_suite, verify_suite

    torch.set_num_threads(1)
    man = generate_suite(out, size, [f for f in formats.split(",") if f], reference=not no_reference,
                         tabu_s=tabu_s, lns_tries=lns_tries, only=only, progress=_progress(progress and not as_json))
    check = verify_suite(out)
    emit({"instances": len(man["instances"]), "out": out, "verify": check}, as_json,
         f"{len(man['instances'])} instances in {out} ({man['wall_time_s']:.0f} s); digests vs the committed "
         f"manifest: {'ok' if check['ok'] else check['problems']}")


@bench_command.command("verify")
@click.argument("suite_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--regenerate", is_flag=True, help="Also rebuild every instance and compare its content digest.")
@json_option
@handle_errors
def verify_command(suite_dir: str, regenerate: bool, as_json: bool) -> None:
    """Check every file of SUITE_DIR against its manifest and the committed digests."""
    import torch

    from qubo_nn.errors import QuboNNError
    from qubo_nn.suite.generate import verify_suite

    torch.set_num_threads(1)
    res = verify_suite(suite_dir, regenerate=regenerate)
    if not res["ok"]:
        raise QuboNNError(f"suite {suite_dir!r} differs from its manifest: expected matching digests, got "
                          + "; ".join(res["problems"][:10]))
    emit(res, as_json, f"ok: {res['checked']} checks on {res['instances']} instances")


@bench_command.command("profile")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG of the performance profiles.")
@click.option("--summary", type=click.Path(dir_okay=False), default=None,
              help="Also write a text report (bound certification by family, each run's hits and excess).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The suite's manifest.json for --summary [default: the committed nnqubo-v1.json].")
@json_option
@handle_errors
def profile_command(results: tuple[str, ...], out: str, summary: str | None, manifest: str | None,
                    as_json: bool) -> None:
    """Dolan–Moré performance profiles (TTS99 and excess) of several `bench` result files."""
    import json

    from qubo_nn.runtime import atomic_write_text
    from qubo_nn.suite.generate import COMMITTED_MANIFEST
    from qubo_nn.suite.harness import plot_profiles, summary_text

    runs = [json.loads(Path(p).read_text()) for p in results]
    prof = plot_profiles(runs, out)
    if summary:
        man = json.loads(Path(manifest or COMMITTED_MANIFEST).read_text())
        atomic_write_text(summary, summary_text(man, runs) + "\n## Dolan–Moré ρ at ratios 1, 2, 10\n\n```\n"
                          + json.dumps(prof, indent=1) + "\n```\n")
    summary = prof
    emit({"out": out, "profile": summary}, as_json, f"{out}: " + json.dumps(summary))


@bench_command.command("bqp")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Control-suite directory to write.")
@click.option("--best-known", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON {name: the literature's maximum} (names FILESTEM-T); else tabu/neal set E*.")
@json_option
@handle_errors
def bqp_command(folder: str, out: str, best_known: str | None, as_json: bool) -> None:
    """OR-Library bqp files in FOLDER as a control suite for `qubo-nn bench`."""
    import json

    from qubo_nn.suite.bqp import bqp_suite

    bk = json.loads(Path(best_known).read_text()) if best_known else None
    man = bqp_suite(folder, out, bk)
    emit({"instances": len(man["instances"]), "out": out}, as_json, f"{len(man['instances'])} bqp instances in {out}")
