"""``qubo-nn quantize --scope network``: the body behind the option (``quantize_cmd`` dispatches here).

Kept apart so the head command's module stays as it is; heavy imports happen inside the call.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qubo_nn.cli.common import emit

NETWORK_OPTION_DEFAULTS = {"first_last_bits": 8, "calib": 256, "group_size": 64, "solve_budget": 1200.0,
                           "bn_correct": False}


def run_network_quantize(*, bits: int, method: str, sampler: str, scale_rule: str, damping: float, seed: int,
                         out: str, record: str | None, progress: bool, as_json: bool, params: dict,
                         opts: dict[str, Any], executor: dict[str, Any] | None = None) -> None:
    """Quantize every conv/linear layer of the checkpoint (``--checkpoint``, else the cached
    ``qubo-nn pretrain`` default of --dataset/--arch/--image-size) and write checkpoint + record."""

    from qubo_nn.train.pretrain import PretrainConfig, load_split, materialize, pretrain
    from qubo_nn.nets.backbones import build_model
    from qubo_nn.data import datasets as data
    from qubo_nn.runtime import atomic_write_json, portable_path
    from qubo_nn.workflows.network_quantize import (NetworkQuantizeConfig, calibration_indices,
        quantize_network)

    t0 = time.perf_counter()
    g = {k: (opts.get(k) if opts.get(k) is not None else v) for k, v in NETWORK_OPTION_DEFAULTS.items()}
    cfg = NetworkQuantizeConfig(bits=bits, method=method, first_last_bits=g["first_last_bits"], calib=g["calib"],
                                group_size=g["group_size"], damping=damping, scale=scale_rule, sampler=sampler,
                                sampler_params=params, solve_budget_s=float(g["solve_budget"]), seed=seed,
                                bn_correct=bool(g["bn_correct"]),
                                device=opts["device"], **(executor or {}))
    cfg.validate()
    from qubo_nn.execution.executors import check_available

    check_available(cfg.executor_config())   # fail before pretraining or loading data
    pcfg = PretrainConfig(dataset=opts["dataset"], arch=opts["arch"], image_size=opts["image_size"],
                          data_root=opts["data_root"], download=opts["download"], device=opts["device"])
    checkpoint = opts.get("checkpoint")
    if checkpoint is None:
        checkpoint = str(pretrain(pcfg, progress=progress).path)
    model = build_model(pcfg.arch, checkpoint, num_classes=data.num_classes(pcfg.dataset, pcfg.data_root))
    train_ds, test_ds = load_split(pcfg, "train"), load_split(pcfg, "test")
    calib, _ = materialize(train_ds, calibration_indices(len(train_ds), cfg.calib, seed))
    X_test, y_test = materialize(test_ds)
    res = quantize_network(model, calib, X_test, y_test, cfg, progress=progress)
    if out == "head-quantized.pt":
        out = "network-quantized.pt"
    exported = res.save(out)     # a .safetensors --out: packed codes + scales, returns bytes and bits per weight
    rec = {**res.record, **({"export": exported} if exported else {}), "checkpoint": portable_path(checkpoint), "dataset": pcfg.dataset, "arch": pcfg.arch,
           "image_size": pcfg.image_size, "out": portable_path(out), "seconds_total": time.perf_counter() - t0}
    record_path = Path(record) if record else Path(out).with_suffix(".json")
    atomic_write_json(record_path, rec)
    lines = [f"{'layer':<24} {'bits':>4} {'D':>5} {'groups':>6} {'rel error':>10} {'solve s':>8}"]
    for L in rec["layers"]:
        lines.append(f"{L['layer']:<24} {L['bits']:>4} {L['dim']:>5} {L['groups']:>6} {L['rel_error']:>10.3e} "
                     f"{L['solve_s']:>8.2f}")
    ref, q = rec["reference"], rec["quantized"]
    lines.append(f"fp32: test loss {ref['test_loss']:.4f}, acc {ref['test_acc']:.2f} %   "
                 f"{method} W{bits}: test loss {q['test_loss']:.4f}, acc {q['test_acc']:.2f} %")
    if "bn_correct" in rec:
        b = rec["bn_correct"]["before"]
        lines.append(f"(before the statistics correction: test loss {b['test_loss']:.4f}, acc {b['test_acc']:.2f} %)")
    lines.append(f"quantized network written to {out} (loads with --weights {out}); record {record_path}")
    emit({**rec, "record": str(record_path)}, as_json, "\n".join(lines))
