"""``qubo-nn build``: the QUBO models of a head's loss, one file per block, with a manifest."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qubo_nn.errors import QuboNNError
from qubo_nn.cli.common import (FORMATS, MAX_DISK_GIB, SALIENCIES, block_options, check_writable, emit,
    feature_config, feature_options, handle_errors, json_option, overwrite_option, progress_option,
    seed_option)


def load_head(path: str):
    """A head from a ``torch.save``'d ``{"weight", "bias"}`` state dict."""
    from qubo_nn.io.heads import load_head_file

    return load_head_file(path)


def _summary(man: dict[str, Any], out: Path, seconds: float) -> str:
    t = man["totals"]
    return (f"built {t['blocks']} blocks ({man['file_format']}) in {seconds:.2f} s "
            f"(Hessian {t['hessian_s']:.2f} s, QUBO {t['qubo_s']:.2f} s, write {t['write_s']:.2f} s)\n"
            f"  {t['variables']} variables, {t['interactions']} couplers, "
            f"{t.get('bytes_on_disk', t['bytes']) / 2**20:.1f} MiB on disk\n"
            f"  (all files but the manifest: block files {t['bytes'] / 2**20:.1f} MiB, the rest head, sidecars, "
            f"encodings and integer forms; estimated beforehand {t.get('estimated_bytes', 0) / 2**20:.1f} MiB)\n"
            f"  loss at the head L0 = {man['L0']:.6f}\n"
            f"  manifest: {out / 'manifest.json'}")


@click.command()
@feature_options
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default=None,
              help="Head to build around: a torch.save'd {'weight', 'bias'} state dict "
                   "[default: a fresh fc layer (seeded) trained --warmup-epochs epochs with SGD].")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True,
              help="SGD epochs of the default head (ignored with --head).")
@block_options
@click.option("--saliency", type=click.Choice(SALIENCIES), default="grad", show_default=True,
              help="Top-k score: |g| (grad) or g²/H_ii (obd).")
@click.option("--step-rule", type=click.Choice(["curvature", "fixed"]), default="curvature", show_default=True,
              help="Grid step per weight: from |g|/H_ii (curvature) or --step for all (fixed).")
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Grid step of --step-rule fixed.")
@click.option("--damping-abs", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Absolute damping added to μ (in loss units per weight², on top of --damping).")
@click.option("--l2", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="L2 penalty (l2/2)‖W‖² in the loss (not on the bias).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Precision of the Hessian computation.")
@click.option("--bqm-dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True,
              help="Precision of the stored QUBOs.")
@click.option("--chunk", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Samples per Hessian chunk (memory O(chunk·D)).")
@click.option("--max-qubo-gib", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Refuse blocks whose dense QUBO would need more memory than this.")
@click.option("--max-disk", "max_disk_gib", type=click.FloatRange(min=0, min_open=True), default=MAX_DISK_GIB,
              show_default=True, help="Refuse, before writing, a build larger than this many GiB on disk.")
@seed_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="dimod", show_default=True,
              help="File format: dimod's native .bqm (exact, fastest), COO text .coo, qbsolv .qubo.")
@click.option("--out", type=click.Path(file_okay=False), default="qubos", show_default=True,
              help="Output directory (head.pt, block files + sidecars, manifest.json).")
@overwrite_option
@progress_option
@json_option
@handle_errors
def build_command(head_path: str | None, warmup_epochs: int, bits: int, encoding: str, blocks: str, per_block: int,
                  block_size: int | None, num_blocks: int | None, window: float, damping: float,
                  subsample: int | None, saliency: str, step_rule: str, step: float | None, damping_abs: float,
                  l2: float, dtype: str, bqm_dtype: str, chunk: int, max_qubo_gib: float, max_disk_gib: float,
                  seed: int, fmt: str, out: str, overwrite: bool, progress: bool, as_json: bool,
                  **opts: Any) -> None:
    """Build the QUBO models of the FC head's loss (one per block of weights) into --out.

    Each block's BQM energy is the predicted loss (nats per sample) of the head with that
    block's weights moved on a grid of 2^bits values around their current values. The size on
    disk is printed (stderr) before anything is written.

    \b
    Example:
      qubo-nn build --head head.pt --bits 2 --out qubos/
    """
    check_writable(out)
    from qubo_nn.data.features import config_dict, default_cache_dir, get_features
    from qubo_nn.workflows.build import build_files, build_to_dir, estimate_build
    from qubo_nn.io.manifest import read_manifest
    from qubo_nn.core.head import Head, check_compatible
    from qubo_nn.workflows.build import BuildConfig
    from qubo_nn.runtime import portable_path

    t0 = time.perf_counter()
    cfg = BuildConfig(blocks=blocks, per_block=per_block, size=block_size, num_blocks=num_blocks, saliency=saliency,
                      bits=bits, encoding=encoding, window=window, step_rule=step_rule, step=step,
                      damping_rel=damping, damping_abs=damping_abs, l2=l2, subsample=subsample, dtype=dtype,
                      bqm_dtype=bqm_dtype, device=opts["device"], chunk=chunk, seed=seed,
                      max_qubo_bytes=int(max_qubo_gib * 2**30))
    cfg.validate()
    from qubo_nn.runtime import resolve_device

    resolve_device(cfg.device)   # a device that is not there: refused before the features are made
    if build_files(out) and not overwrite:
        raise QuboNNError(f"--out {out!r} already holds a build (manifest, blocks); pass --overwrite to replace "
                          f"it, or choose another folder")
    head = load_head(head_path) if head_path is not None else None
    fcfg = feature_config(opts)
    res = get_features(fcfg, progress=progress)
    history: list[dict] = []
    if head is None:
        from qubo_nn.train.sgd import SGDConfig, train_sgd

        head = Head.init_like_linear(res.train.num_classes, res.train.dim, seed=seed)
        if warmup_epochs:
            head, history = train_sgd(head, res.train, None, SGDConfig(epochs=warmup_epochs, seed=seed),
                                      device=opts["device"])
    check_compatible(head, res.train)
    est = estimate_build(head.num_classes, head.dim, cfg, fmt)
    click.echo(f"build: {est['blocks']} blocks, {est['variables']:,} variables, about "
               f"{est['bytes'] / 2**20:,.1f} MiB to write into {out}", err=True)
    # the manifest records the cache directory actually used, so decode finds the same features
    ref = dict(config_dict(fcfg), cache_dir=portable_path(fcfg.cache_dir or default_cache_dir()))
    manifest_path = build_to_dir(head, res.train, cfg, out, fmt, features_ref=ref, progress=progress,
                                 overwrite=overwrite, max_disk_bytes=int(max_disk_gib * 2**30))
    man = read_manifest(manifest_path)
    seconds = time.perf_counter() - t0
    emit({"manifest": manifest_path, "totals": man["totals"], "L0": man["L0"], "config": cfg.to_dict(),
          "estimate": est, "features": ref, "head": head_path or "default", "warmup": history, "seconds": seconds},
         as_json, _summary(man, Path(out), seconds))
