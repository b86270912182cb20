"""``qubo-nn build``: the QUBO models of a head's loss, one file per block, with a manifest."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import click
import torch

from ..errors import QuboNNError
from ..features import config_dict, get_features
from ..formats import FORMATS, build_to_dir, read_manifest
from ..head import Head, check_compatible
from ..quadratic import BLOCK_KINDS, SALIENCIES
from ..qubo import DEFAULT_MAX_QUBO_BYTES, BuildConfig
from .common import emit, handle_errors, json_option, seed_option
from .features_cmd import feature_config, feature_options


def load_head(path: str) -> Head:
    """A head from a ``torch.save``'d ``{"weight", "bias"}`` state dict."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise QuboNNError(f"head file {path!r} does not exist") from exc
    except Exception as exc:  # pickle/zip errors of a damaged or foreign file
        raise QuboNNError(f"head file {path!r} is not a torch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(sd, dict):
        raise QuboNNError(f"head file {path!r} must hold a dict with 'weight' and 'bias', got {type(sd).__name__}")
    return Head.from_state_dict(sd)


def _summary(man: dict[str, Any], out: Path, seconds: float) -> str:
    t = man["totals"]
    return (f"built {t['blocks']} blocks ({man['file_format']}) in {seconds:.2f} s "
            f"(Hessian {t['hessian_s']:.2f} s, QUBO {t['qubo_s']:.2f} s, write {t['write_s']:.2f} s)\n"
            f"  {t['variables']} variables, {t['interactions']} couplers, "
            f"{t['bytes'] / 2**20:.1f} MiB on disk\n"
            f"  loss at the head L0 = {man['L0']:.6f}\n"
            f"  manifest: {out / 'manifest.json'}")


@click.command()
@feature_options
@click.option("--n-train", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Training samples of --dataset synthetic-features.")
@click.option("--n-test", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Test samples of --dataset synthetic-features.")
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default=None,
              help="Head to build around: a torch.save'd {'weight', 'bias'} state dict "
                   "[default: a fresh fc layer (seeded) trained --warmup-epochs epochs with SGD].")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True,
              help="SGD epochs of the default head (ignored with --head).")
@click.option("--blocks", type=click.Choice(BLOCK_KINDS), default="rows", show_default=True,
              help="Block selection: class rows (with bias), feature columns, top-k salient weights, random.")
@click.option("--per-block", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows or columns per block (rows > 1 include the cross-class terms).")
@click.option("--size", type=click.IntRange(min=1), default=None, help="Weights per block (topk, random).")
@click.option("--num-blocks", type=click.IntRange(min=1), default=None,
              help="Number of top-k blocks [default: 1].")
@click.option("--saliency", type=click.Choice(SALIENCIES), default="grad", show_default=True,
              help="Top-k score: |g| (grad) or g²/H_ii (obd).")
@click.option("--bits", type=click.IntRange(1, 16), default=4, show_default=True, help="Bits per weight.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Downhill end of the window, in diagonal Newton steps (step rule curvature).")
@click.option("--step-rule", type=click.Choice(["curvature", "fixed"]), default="curvature", show_default=True,
              help="Grid step per weight: from |g|/H_ii (curvature) or --step for all (fixed).")
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Grid step of --step-rule fixed.")
@click.option("--damping-rel", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Damping μ as a fraction of the block's mean Hessian diagonal.")
@click.option("--damping", "damping_abs", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Absolute damping added to μ (trust region μ/2‖Δ‖²).")
@click.option("--l2", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="L2 penalty (l2/2)‖W‖² in the loss (not on the bias).")
@click.option("--subsample", type=click.IntRange(min=1), default=None,
              help="Samples for the Hessian (seeded) [default: all].")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Precision of the Hessian computation.")
@click.option("--bqm-dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True,
              help="Precision of the stored QUBOs.")
@click.option("--chunk", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Samples per Hessian chunk (memory O(chunk·D)).")
@click.option("--max-qubo-gib", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_MAX_QUBO_BYTES / 2**30, show_default=True,
              help="Refuse blocks whose dense QUBO would need more memory than this.")
@seed_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="dimod", show_default=True,
              help="File format: dimod's native .bqm (exact, fastest), COO text .coo, qbsolv .qubo.")
@click.option("--out", type=click.Path(file_okay=False), default="qubos", show_default=True,
              help="Output directory (head.pt, block files + sidecars, manifest.json).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars (stderr).")
@json_option
@handle_errors
def build_command(n_train: int, n_test: int, head_path: str | None, warmup_epochs: int, blocks: str,
                  per_block: int, size: int | None, num_blocks: int | None, saliency: str, bits: int, window: float,
                  step_rule: str, step: float | None, damping_rel: float, damping_abs: float, l2: float,
                  subsample: int | None, dtype: str, bqm_dtype: str, chunk: int, max_qubo_gib: float, seed: int,
                  fmt: str, out: str, progress: bool, as_json: bool, **opts: Any) -> None:
    """Build the QUBO models of the FC head's loss (one per block of weights) into --out.

    Each block's BQM energy is the predicted loss (nats per sample) of the head with that
    block's weights moved on a grid of 2^bits values around their current values.
    """
    t0 = time.perf_counter()
    cfg = BuildConfig(blocks=blocks, per_block=per_block, size=size, num_blocks=num_blocks, saliency=saliency,
                      bits=bits, window=window, step_rule=step_rule, step=step, damping_rel=damping_rel,
                      damping_abs=damping_abs, l2=l2, subsample=subsample, dtype=dtype, bqm_dtype=bqm_dtype,
                      device=opts["device"], chunk=chunk, seed=seed,
                      max_qubo_bytes=int(max_qubo_gib * 2**30))
    cfg.validate()
    head = load_head(head_path) if head_path is not None else None
    fcfg = dataclasses.replace(feature_config(opts), n_train=n_train, n_test=n_test)
    res = get_features(fcfg, progress=progress)
    history: list[dict] = []
    if head is None:
        from ..train import SGDConfig, train_sgd

        head = Head.init_like_linear(res.train.num_classes, res.train.dim, seed=seed)
        if warmup_epochs:
            head, history = train_sgd(head, res.train, None, SGDConfig(epochs=warmup_epochs, seed=seed),
                                      device=opts["device"])
    check_compatible(head, res.train)
    manifest_path = build_to_dir(head, res.train, cfg, out, fmt, features_ref=config_dict(fcfg), progress=progress)
    man = read_manifest(manifest_path)
    seconds = time.perf_counter() - t0
    emit({"manifest": manifest_path, "totals": man["totals"], "L0": man["L0"], "config": cfg.to_dict(),
          "features": config_dict(fcfg), "head": head_path or "default", "warmup": history, "seconds": seconds},
         as_json, _summary(man, Path(out), seconds))
