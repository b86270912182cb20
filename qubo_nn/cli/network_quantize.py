"""``qubo-nn quantize network``: every conv and linear layer of the ResNet (BN folded, layer by
layer), by RTN, GPTQ, CD or QUBO rounding; a checkpoint that ``--weights PATH`` loads, and a record.

Heavy imports happen inside the command body.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qubo_nn.cli.common import (
    LEVEL_SAMPLER,
    emit,
    executor_options,
    feature_options_except,
    handle_errors,
    options,
    pretrain_note,
    sampler_options_except,
)
from qubo_nn.cli.quantize_cmd import (
    QuantizeCommand,
    check_outputs,
    executor,
    shared_options,
    split_sampler_options,
)

# literal copies keep `--help` free of torch imports; tests/test_cli_vocabulary.py checks them
NETWORK_METHODS = ("rtn", "gptq", "cd", "qubo")             # workflows.network_quantize.NETWORK_METHODS
PRETRAIN_DATASETS = ("digits", "cifar100", "synthetic", "imagefolder")  # data.datasets.DATASETS (pretrain's)
#: NetworkQuantizeConfig's defaults of the network-only options (checked by the vocabulary test)
NETWORK_DEFAULTS = {"first_last_bits": 8, "calib": 256, "group_size": 64, "solve_budget_s": 1200.0,
                    "bn_correct": False}

network_options = options(
    click.option("--first-last-bits", type=click.IntRange(1, 8), default=NETWORK_DEFAULTS["first_last_bits"],
                 show_default=True, help="Bits of the first conv and the fc."),
    click.option("--calib", type=click.IntRange(min=1), default=NETWORK_DEFAULTS["calib"], show_default=True,
                 help="Calibration images from the train split (seeded by --seed)."),
    click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Whole-model checkpoint [default: the cached `qubo-nn pretrain` of --dataset, trained when "
                      "missing]."),
    click.option("--group-size", type=click.IntRange(min=1), default=NETWORK_DEFAULTS["group_size"],
                 show_default=True, help="Columns per integer problem; longer rows are split with error feedback."),
    click.option("--solve-budget", "solve_budget_s", type=click.FloatRange(min=0, min_open=True),
                 default=NETWORK_DEFAULTS["solve_budget_s"], show_default=True,
                 help="Seconds of cd/qubo solving for the whole network, shared by size; rows past it keep "
                      "GPTQ's levels."),
    click.option("--bn-correct", is_flag=True, default=NETWORK_DEFAULTS["bn_correct"],
                 help="After rounding, match each quantized conv's output mean and spread to the fp32 network's "
                      "on the calibration images (BatchNorm re-estimation for folded BN; levels unchanged)."),
    click.option("--dataset", type=click.Choice(PRETRAIN_DATASETS), default="digits", show_default=True,
                 help="Images of the calibration set, the test metrics and the default checkpoint (digits: "
                      "bundled with scikit-learn, no download)."),
    click.option("--arch", default="resnet18", show_default=True, metavar="NAME",
                 help="Any torchvision classification model of the checkpoint (resnet18, mobilenet_v2, ...; "
                      "checked by the library)."),
)


@click.command(cls=QuantizeCommand)
@shared_options(click.Choice(NETWORK_METHODS),
                "Rounding of every layer: round-to-nearest, GPTQ (act-order, grouped with error feedback), "
                "coordinate descent from GPTQ (cd), or QUBO windows annealed from GPTQ (qubo); cd and qubo "
                "re-solve row groups within --solve-budget.",
                "network-quantized.pt", "Where to write the quantized network: a .pt float checkpoint, or a .safetensors "
                "file of packed integer codes + row scales (both load with --weights PATH).")
@sampler_options_except("polish", default=LEVEL_SAMPLER)
@network_options
@executor_options("the row problems are solved (the levels do not depend on it)")
@feature_options_except("dataset", "arch", "weights", "cache_dir", "batch_size", "feature_seed", "limit", "n_train",
                        "n_test")
@handle_errors
def network_command(bits: int, method: str, grid: str, scale_rule: str, damping: float, seed: int, out: str,
                    record: str | None, progress: bool, as_json: bool, checkpoint: str | None,
                    **opts: Any) -> None:
    """Quantize every conv and linear layer of a ResNet checkpoint (BN folded; layer by layer on
    the inputs of the already-quantized network) and write the checkpoint and a JSON record.

    \b
    Example:
      qubo-nn quantize network --bits 2 --method gptq --calib 128 --bn-correct
    """
    progress = progress and not as_json
    sampler, params, _ = split_sampler_options(opts, keep_num_reads=True)   # --num-reads: a sampler parameter
    record_path = check_outputs(out, record, {"--checkpoint": checkpoint})
    from qubo_nn.execution.executors import check_available
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig

    cfg = NetworkQuantizeConfig(bits=bits, method=method, damping=damping, scale=scale_rule, sampler=sampler,
                                sampler_params=params, seed=seed, grid=grid, device=opts["device"],
                                **{k: opts.pop(k) for k in NETWORK_DEFAULTS}, **executor(opts))
    cfg.validate()
    check_available(cfg.executor_config())   # fail before pretraining or loading data
    if checkpoint is None:
        pretrain_note(opts["dataset"], opts["arch"], opts["image_size"], quiet=not progress)
    run_network(cfg, checkpoint, opts, out, record_path, progress, as_json)


def run_network(cfg, checkpoint: str | None, opts: dict[str, Any], out: str, record_path: Path, progress: bool,
                as_json: bool) -> None:
    """Checkpoint (``--checkpoint``, else the cached ``qubo-nn pretrain`` default), calibration
    and test images, :func:`~qubo_nn.workflows.network_quantize.quantize_network`; writes both files."""
    from qubo_nn.data import datasets as data
    from qubo_nn.nets.backbones import build_model
    from qubo_nn.runtime import atomic_write_json, portable_path
    from qubo_nn.train.pretrain import PretrainConfig, load_split, materialize, pretrain
    from qubo_nn.workflows.network_quantize import calibration_indices, quantize_network

    t0 = time.perf_counter()
    pcfg = PretrainConfig(dataset=opts["dataset"], arch=opts["arch"], image_size=opts["image_size"],
                          data_root=opts["data_root"], download=opts["download"], device=opts["device"])
    if checkpoint is None:
        checkpoint = str(pretrain(pcfg, progress=progress).path)
    model = build_model(pcfg.arch, checkpoint, num_classes=data.num_classes(pcfg.dataset, pcfg.data_root))
    train_ds, test_ds = load_split(pcfg, "train"), load_split(pcfg, "test")
    calib, _ = materialize(train_ds, calibration_indices(len(train_ds), cfg.calib, cfg.seed))
    X_test, y_test = materialize(test_ds)
    res = quantize_network(model, calib, X_test, y_test, cfg, progress=progress)
    exported = res.save(out)     # a .safetensors --out: packed codes + scales; returns bytes and bits per weight
    rec = {**res.record, **({"export": exported} if exported else {}), "checkpoint": portable_path(checkpoint), "dataset": pcfg.dataset, "arch": pcfg.arch,
           "image_size": pcfg.image_size, "out": portable_path(out), "seconds_total": time.perf_counter() - t0}
    atomic_write_json(record_path, rec)
    emit({**rec, "record": str(record_path)}, as_json, _table(rec, cfg, out, record_path))


def _table(rec: dict, cfg, out: str, record_path: Path) -> str:
    lines = [f"{'layer':<24} {'bits':>4} {'D':>5} {'groups':>6} {'rel error':>10} {'solve s':>8}"]
    for L in rec["layers"]:
        lines.append(f"{L['layer']:<24} {L['bits']:>4} {L['dim']:>5} {L['groups']:>6} {L['rel_error']:>10.3e} "
                     f"{L['solve_s']:>8.2f}")
    ref, q = rec["reference"], rec["quantized"]
    lines.append(f"fp32: test loss {ref['test_loss']:.4f}, acc {ref['test_acc']:.2f} %   "
                 f"{cfg.method} W{cfg.bits}: test loss {q['test_loss']:.4f}, acc {q['test_acc']:.2f} %")
    if "bn_correct" in rec:
        b = rec["bn_correct"]["before"]
        lines.append(f"(before the statistics correction: test loss {b['test_loss']:.4f}, acc {b['test_acc']:.2f} %)")
    lines.append(f"quantized network written to {out} (loads with --weights {out}); record {record_path}")
    return "\n".join(lines)
