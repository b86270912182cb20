"""``qubo-nn quantize``: a low-bit FC head (or, with ``--scope network``, every layer) by RTN, GPTQ, CD or QUBO rounding."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qubo_nn.errors import QuboNNError
from qubo_nn.cli.common import (SCALE_RULES, LazyChoice, check_writable, damping_option, emit,
    encoding_option, executor_options, feature_config, feature_options, handle_errors, json_option,
    progress_option, sampler_options, sampler_params, seed_option, sgd_options)

QUANTIZE_DAMPING = 0.01   # QuantizeConfig.damping_rel (GPTQ's percdamp); checked by tests
QUANTIZE_NUM_READS = 4    # QuantizeConfig.num_reads


def _methods() -> tuple[str, ...]:
    from qubo_nn.workflows.head_quantize import METHODS

    return tuple(dict.fromkeys(METHODS + ("gptq", "cd")))


def get_features(cfg, progress: bool = False):
    """:func:`qubo_nn.data.features.get_features`, imported when called (a seam tests patch)."""
    from qubo_nn.data.features import get_features as _get

    return _get(cfg, progress=progress)


def versions() -> dict:
    """:func:`qubo_nn.runtime.versions`, imported when called (a seam tests patch)."""
    from qubo_nn.runtime import versions as _versions

    return _versions()


def load_head(path: str | Path):
    """A head from a torch state dict file ``{"weight": C × D, "bias": C}``."""
    from qubo_nn.io.heads import load_head_file

    return load_head_file(path)


def _table(rec: dict, method: str) -> str:
    ref = rec["reference"]
    lines = [f"{'method':<8} {'test acc %':>10} {'test loss':>10} {'train loss':>10} {'QUBO energy':>12}",
             f"{'fp32':<8} {ref['test_acc']:>10.2f} {ref['test_loss']:>10.4f} {ref['train_loss']:>10.4f} {'':>12}"]
    for name, m in rec["methods"].items():
        mark = " *" if name == method else ""
        lines.append(f"{name:<8} {m.get('test_acc', float('nan')):>10.2f} {m.get('test_loss', float('nan')):>10.4f} "
                     f"{m['train_loss']:>10.4f} {m['energy']:>12.6f}{mark}")
    return "\n".join(lines)


@click.command()
@click.option("--bits", type=int, default=4, show_default=True,
              help="Bits per weight (1–8, checked by the library); codes q ∈ [−2^(b−1), 2^(b−1)−1], w = s_row·q.")
@click.option("--method", type=LazyChoice(_methods), default="qubo", show_default=True,
              help="Rounding whose head is written: round-to-nearest, GPTQ in natural or act-order, coordinate "
                   "descent from GPTQ (cd), or the QUBO pipeline (best classical start, annealed level windows, "
                   "CD polish). Every method but qubo is always computed and recorded beside it.")
@sampler_options
@encoding_option
@click.option("--scale", "scale_rule", type=click.Choice(SCALE_RULES), default="mse", show_default=True,
              help="Per-row scale: max-abs, or the MSE-optimal clipping ratio.")
@click.option("--window-bits", type=click.IntRange(min=1), default=1, show_default=True,
              help="QUBO bits per weight: a window of 2^k grid levels (1 = round up or down, AdaRound).")
@damping_option(QUANTIZE_DAMPING)
@click.option("--grad/--no-grad", "use_grad", default=False, show_default=True,
              help="Include the gradient term gᵀΔ in the rounding objective (greedy and QUBO).")
@click.option("--refine-span", type=click.FloatRange(min=0), default=100.0, show_default=True,
              help="Samplers with a beta_range (neal), started from the greedy/RTN incumbents, anneal from "
                   "β_cold/SPAN to β_cold (a low-temperature refinement); 0 = the sampler's own schedule.")
@click.option("--refit-bias", is_flag=True, help="Re-fit the (full-precision) bias with the weights frozen (L-BFGS).")
@click.option("--l2", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="L2 term (l2/2)·‖W‖² of the loss the Hessian blocks come from.")
@click.option("--subsample", type=click.IntRange(min=1), default=None,
              help="Hessian blocks from a seeded random subset of this many training samples.")
@click.option("--head", "head_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Head to quantize (torch state dict: weight, bias) [default: the --fp32-head fit].")
@click.option("--fp32-head", "fp32_head", type=click.Choice(["reference", "sgd"]), default="reference",
              show_default=True,
              help="Without --head: reference = the L2-regularised convex optimum, L2 chosen on a held-out 20 %% "
                   "of train (stable under feature jitter); sgd = the SGD baseline with the SGD options below.")
@sgd_options
@click.option("--scope", type=click.Choice(["head", "network"]), default="head", show_default=True,
              help="head: the FC head on cached features; network: every conv and linear layer of the ResNet "
                   "(BN folded, layer by layer; methods rtn|gptq|cd|qubo).")
@click.option("--first-last-bits", type=click.IntRange(1, 8), default=None,
              help="[network] Bits of the first conv and the fc [default: 8].")
@click.option("--calib", type=click.IntRange(min=1), default=None,
              help="[network] Calibration images from the train split (seeded by --seed) [default: 256].")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="[network] Whole-model checkpoint [default: the cached `qubo-nn pretrain` of --dataset].")
@click.option("--group-size", type=click.IntRange(min=1), default=None,
              help="[network] Columns per integer problem; longer rows are split with error feedback [default: 64].")
@click.option("--solve-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="[network] Seconds of cd/qubo solving for the whole network, shared by size; rows past it "
                   "keep GPTQ's levels [default: 1200].")
@click.option("--bn-correct", is_flag=True, default=None,
              help="[network] After rounding, match each quantized conv's output mean and spread to the fp32 "
                   "network's on the calibration images (BatchNorm re-estimation for folded BN; levels unchanged).")
@executor_options("the row problems are solved (the levels do not depend on it)")
@feature_options
@seed_option
@click.option("--out", type=click.Path(dir_okay=False), default="head-quantized.pt", show_default=True,
              help="Where to write the quantized head (torch state dict: weight, bias, scale, codes).")
@click.option("--record", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON record [default: --out with suffix .json].")
@progress_option
@json_option
@handle_errors
def quantize_command(bits: int, method: str, scale_rule: str, window_bits: int, damping: float, use_grad: bool,
                     encoding: str, refine_span: float, refit_bias: bool, l2: float, subsample: int | None,
                     head_path: str | None, fp32_head: str, epochs: int, lr: float, momentum: float,
                     sgd_batch_size: int,
                     weight_decay: float, seed: int, out: str, record: str | None, progress: bool, as_json: bool,
                     **opts: Any) -> None:
    """Quantize the FC head to --bits per weight (per-row symmetric grids, bias in full precision)
    and record accuracy, loss and every method's QUBO energy on the same per-row BQMs.

    \b
    Example:
      qubo-nn quantize --bits 2 --method qubo --sampler neal --head head.pt
    """
    progress = progress and not as_json   # --json: stdout and stderr carry nothing but the result
    num_reads = opts.pop("num_reads")
    opts["num_reads"] = None   # --num-reads is QuantizeConfig.num_reads here, not a -m key
    params = sampler_params(opts)
    sampler, polish = opts.pop("sampler"), opts.pop("polish")
    for key in ("sampler_params", "params_alias", "num_reads", "num_sweeps", "time_limit", "beta_range"):
        opts.pop(key)
    ex = {"executor": opts.pop("executor"), "workers": opts.pop("workers"), "ray_address": opts.pop("ray_address")}
    check_writable(out, "--out", kind="file")
    if record:
        check_writable(record, "--record", kind="file")
    if opts.pop("scope") == "network":
        from qubo_nn.cli.network_quantize import run_network_quantize

        return run_network_quantize(bits=bits, method=method, sampler=sampler, scale_rule=scale_rule,
                                    damping=damping, seed=seed, out=out, record=record, progress=progress,
                                    as_json=as_json, params=params, opts=opts, executor=ex)
    for name in ("first_last_bits", "calib", "checkpoint", "group_size", "solve_budget", "bn_correct"):
        if opts.pop(name) is not None:
            raise QuboNNError(f"--{name.replace('_', '-')} applies to --scope network only")
    import torch

    from qubo_nn.core.head import Head
    from qubo_nn.execution.executors import check_available
    from qubo_nn.workflows.head_quantize import QuantizeConfig, quantize_head
    from qubo_nn.runtime import atomic_path, atomic_write_json, tensor_digest
    from qubo_nn.runtime import machine_info, resolve_device
    from qubo_nn.train.sgd import SGDConfig, reference_head, train_sgd

    t0 = time.perf_counter()
    cfg = QuantizeConfig(bits=bits, method=method, scale=scale_rule, sampler=sampler, sampler_params=params,
                         encoding=encoding, num_reads=num_reads or QUANTIZE_NUM_READS, window_bits=window_bits,
                         damping_rel=damping, use_grad=use_grad, polish=polish, refine_span=refine_span or None,
                         refit_bias=refit_bias, l2=l2, subsample=subsample, device=opts["device"], seed=seed, **ex)
    cfg.validate()
    check_available(cfg.executor_config())   # e.g. --executor ray without Ray: fail before the features
    sgd = SGDConfig(epochs=epochs, lr=lr, momentum=momentum, batch_size=sgd_batch_size, weight_decay=weight_decay,
                    seed=seed)
    sgd.validate()
    head = load_head(head_path) if head_path else None  # before the features: fail fast on a bad file
    fcfg = feature_config(opts)
    feats = get_features(fcfg, progress=progress)
    source: dict[str, Any] = {"features": fcfg.__dict__, "features_path": feats.path}
    if head is None and fp32_head == "reference":
        head, hinfo = reference_head(feats.train, seed=seed, device=opts["device"])
        source["head"] = {"reference": {k: v for k, v in hinfo.items() if k != "fit"},
                          "lbfgs": hinfo["fit"]}
    elif head is None:
        head0 = Head.init_like_linear(feats.train.num_classes, feats.train.dim, seed=seed)
        head, _ = train_sgd(head0, feats.train, feats.test, sgd, device=opts["device"])
        source["head"] = {"sgd": vars(sgd)}
    else:
        source["head"] = {"path": str(head_path)}
    head = head.to("cpu")
    source["head_digest"] = tensor_digest(head.W, head.b)
    source["features_digest"] = tensor_digest(feats.train.X, feats.train.y, feats.test.X, feats.test.y)
    source["machine"] = machine_info(resolve_device(opts["device"]))
    res = quantize_head(head, feats.train, feats.test, cfg, progress=progress)
    chosen = res.methods[method]
    with atomic_path(out) as tmp:
        torch.save({**res.head.state_dict(), "scale": res.scale, "codes": chosen.codes, "bits": bits,
                    "method": method}, tmp)
    rec = {**res.record(), "source": source, "out": str(out), "versions": versions(),
           "seconds": time.perf_counter() - t0}
    record_path = Path(record) if record else Path(out).with_suffix(".json")
    atomic_write_json(record_path, rec)
    emit({**rec, "record": str(record_path)}, as_json,
         _table(rec, method) + f"\n{bits}-bit {method} head written to {out}; record {record_path}")
