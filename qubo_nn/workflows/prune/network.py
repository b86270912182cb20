"""Pruning the input channels of ResNet layers: which layers, capture, masks, refit, BatchNorm.

A layer can lose input channel i only if channel i can vanish from the network: inside a
torchvision residual block the input of ``conv2`` is ``relu(bn1(conv1(x)))``, private to the
block, so pruning it removes filter i of ``conv1`` (and entry i of ``bn1``) and input i of
``conv2`` (He et al. 2017, Li et al. 2017 prune the same places). Bottleneck blocks add
``conv3`` (reading ``relu(bn2(conv2(·)))``). The residual stream is not pruned.

Pruned channels are zeroed, not cut out: the producing filter, its BN's γ and β and the
consumer's input slice become 0 (the BN's running mean 0 and variance 1), so the output of a
pruned channel is exactly 0 and the checkpoint keeps the architecture that ``--weights PATH``
loads everywhere. :func:`conv_macs` counts the multiply-adds of the nonzero channels (what a
slimmed network would run).

:func:`prune_network` prunes layers in forward order; each layer's inputs come from the network
pruned so far and its target is the ORIGINAL network's output of that layer (the sequential
scheme of channel pruning and GPTQ), with the error weighted per output channel by the
following BatchNorm's γ/σ (the error after BN). Kept weights are refit by least squares; then
:func:`reestimate_batchnorm` recomputes every BN's running statistics on the calibration images.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import to_jsonable
from qubo_nn.workflows.prune.objective import (ChannelStats, channel_stats, pruning_problem, refit_error,
    refit_weights)
from qubo_nn.workflows.prune.select import (METHODS, keep_count, select_greedy, select_l1, select_lasso,
    select_qubo)


@dataclass(frozen=True)
class PrunableLayer:
    """``consumer`` reads channels produced by ``producer`` → ``producer_bn`` → ReLU;
    ``consumer_bn`` follows the consumer (its γ/σ weights the reconstruction error)."""

    consumer: str
    producer: str
    producer_bn: str
    consumer_bn: str
    channels: int


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The prunable layers of a torchvision ResNet, in forward order."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    out = []
    for name, mod in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(mod, BasicBlock):
            out.append(PrunableLayer(pre + "conv2", pre + "conv1", pre + "bn1", pre + "bn2", mod.conv2.in_channels))
        elif isinstance(mod, Bottleneck):
            out.append(PrunableLayer(pre + "conv2", pre + "conv1", pre + "bn1", pre + "bn2", mod.conv2.in_channels))
            out.append(PrunableLayer(pre + "conv3", pre + "conv2", pre + "bn2", pre + "bn3", mod.conv3.in_channels))
    if not out:
        raise QuboNNError(f"expected a torchvision ResNet (BasicBlock/Bottleneck blocks), got {type(model).__name__} "
                          "with none: pruning supports only the pattern it can prove safe, conv → BN → ReLU → conv "
                          "private to a ResNet block; other patterns (inverted residuals with depthwise convs, "
                          "squeeze-excitation, plain VGG stacks, grouped convs) are refused")
    return out


def resolve_layers(model: nn.Module, layer: str) -> list[PrunableLayer]:
    """``"all"`` or a comma-separated list of consumer names (e.g. ``layer1.0.conv2``)."""
    layers = prunable_layers(model)
    if layer == "all":
        return layers
    by_name = {pl.consumer: pl for pl in layers}
    wanted = [w.strip() for w in layer.split(",") if w.strip()]
    bad = [w for w in wanted if w not in by_name]
    if bad or not wanted:
        raise QuboNNError(f"expected 'all' or layer names among {', '.join(by_name)}, got {layer!r}")
    return [by_name[w] for w in wanted]


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """γ / sqrt(running_var + eps) (C,): how much a BN in eval mode scales each channel."""
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()


def layer_io(model: nn.Module, name: str, images: torch.Tensor, batch_size: int = 64,
             want_input: bool = True, want_output: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(inputs, outputs) of module ``name`` over ``images`` (eval mode, no grad), concatenated.

    Unlike :func:`qubo_nn.curvature.layer_gram.capture_gram` (a Gram only), pruning needs the raw
    inputs of the pruned network and the outputs of the original one (the cross terms R = X Yᵀ).
    """
    mod = model.get_submodule(name)
    ins, outs = [], []

    def hook(m, args, out):      # clones: ResNet blocks modify tensors in place later (out += identity)
        if want_input:
            ins.append(args[0].detach().clone())
        if want_output:
            outs.append(out.detach().clone())

    h = mod.register_forward_hook(hook)
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                model(images[i:i + batch_size])
    finally:
        h.remove()
    return (torch.cat(ins) if want_input else None), (torch.cat(outs) if want_output else None)


def l1_scores(model: nn.Module, pl: PrunableLayer) -> np.ndarray:
    """Li et al.'s filter norms: ‖producer filter i‖₁ · |γ_i| / σ_i (the BN-folded filter)."""
    w = model.get_submodule(pl.producer).weight.detach()
    norms = w.abs().reshape(w.shape[0], -1).sum(1)
    return (norms * bn_scale(model.get_submodule(pl.producer_bn)).abs()).double().numpy()


@torch.no_grad()
def apply_mask(model: nn.Module, pl: PrunableLayer, mask: np.ndarray, new_weight: torch.Tensor | None = None) -> None:
    """In place: zero the pruned channels (producer filters, their BN entries, consumer inputs);
    ``new_weight`` (the refit consumer weight) replaces the consumer's weight when given."""
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))
    if mask.shape[0] != pl.channels:
        raise QuboNNError(f"expected a mask of length {pl.channels} for {pl.consumer}, got {mask.shape[0]}")
    drop = ~mask
    prod, bn, cons = (model.get_submodule(n) for n in (pl.producer, pl.producer_bn, pl.consumer))
    prod.weight[drop] = 0
    if prod.bias is not None:
        prod.bias[drop] = 0
    bn.weight[drop] = 0
    bn.bias[drop] = 0
    bn.running_mean[drop] = 0
    bn.running_var[drop] = 1
    if new_weight is not None:
        cons.weight.copy_(new_weight)
    cons.weight[:, drop] = 0


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> int:
    """Recompute every BatchNorm's running mean/variance on ``images`` (reset, then a cumulative
    average over the batches: momentum None, train mode for the BNs only); returns the BN count.

    Usable after pruning or quantization. Channels with γ = β = 0 (pruned) stay exactly zero.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i in range(0, images.shape[0], batch_size):
            model(images[i:i + batch_size])
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
        model.train(was_training)
    return len(bns)


def conv_macs(model: nn.Module, image_size: int = 64) -> int:
    """Multiply-adds of one image through every Conv2d/Linear, counting only channels with a
    nonzero weight (input channels of the consumer, output channels of the producer)."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        w = m.weight.detach()
        w2 = w.reshape(w.shape[0], w.shape[1], -1).abs().sum(2)     # (C_out, C_in)
        c_out = int((w2.sum(1) > 0).sum())
        c_in = int((w2.sum(0) > 0).sum())
        k = w.shape[2] * w.shape[3] if w.dim() == 4 else 1
        pos = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
        total += c_out * c_in * k * pos

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hs:
            h.remove()
    return total


@dataclass
class PruneConfig:
    """What :func:`prune_network` does. ``qubo_*``: the QUBO selector (started from the best
    baseline mask); ``refit``: least-squares refit of kept weights, ridge-damped by
    ``refit_damping`` × mean diag of the kept Gram (deep layers see few positions per image:
    layer4 of a 64 px ResNet-18 has 4); ``reestimate_bn``: BN statistics recomputed on the
    calibration images afterwards."""

    layer: str = "all"
    keep: float = 0.5
    method: str = "qubo"
    sampler: str = "tabu"
    sampler_params: dict[str, Any] = field(default_factory=lambda: {"num_reads": 4, "timeout": 1000})
    penalty_mode: str = "penalty"
    penalty: float | str = "safe"
    refit: bool = True
    refit_damping: float = 0.01
    reestimate_bn: bool = True
    batch_size: int = 64
    chunk: int = 16
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise QuboNNError(f"expected method in {METHODS}, got {self.method!r}")
        keep_count(2, self.keep)


def select_mask(problem, k: int, method: str, l1: np.ndarray, cfg: PruneConfig, seed: int = 0
                ) -> tuple[np.ndarray, dict, dict[str, dict]]:
    """Mask of ``method`` and its info; for ``qubo`` the baselines run first (their masks are the
    initial states) and are returned too, as {name: {"mask", "error", "wall_time_s"}}."""
    if method == "l1":
        m, info = select_l1(l1, k)
        return m, info, {}
    if method == "greedy":
        m, info = select_greedy(problem, k)
        return m, info, {}
    if method == "lasso":
        m, info = select_lasso(problem, k)
        return m, info, {}
    base = {}
    for name, fn in (("l1", lambda: select_l1(l1, k)), ("greedy", lambda: select_greedy(problem, k)),
                     ("lasso", lambda: select_lasso(problem, k))):
        m, info = fn()
        base[name] = {"mask": m, "error": problem.error(m), "wall_time_s": info["wall_time_s"]}
    order = sorted(base, key=lambda n: base[n]["error"])
    m, info = select_qubo(problem, k, sampler=cfg.sampler, mode=cfg.penalty_mode, penalty=cfg.penalty,
                          initial=[base[n]["mask"] for n in order], seed=seed, params=cfg.sampler_params)
    info["started_from"] = order[0]
    info["baselines_wall_time_s"] = sum(b["wall_time_s"] for b in base.values())
    return m, info, base


def prune_network(model: nn.Module, calib: torch.Tensor, cfg: PruneConfig, progress: bool = False,
                  reference: nn.Module | None = None, on_problem=None,
                  stats: dict[str, tuple[ChannelStats, torch.Tensor]] | None = None) -> tuple[nn.Module, dict]:
    """A pruned copy of ``model`` and a report (per layer: n, k, mask, errors, times).

    Args:
        model: a torchvision ResNet (eval mode; not modified).
        calib: calibration images (N × 3 × S × S).
        reference: the network whose layer outputs are the targets (default ``model``).
        on_problem: called as ``on_problem(layer, problem, k)`` once each layer's problem is built
            (e.g. to export its QUBO).
        stats: precomputed {consumer: (ChannelStats, out_scale)} (:func:`stats_for` on the original
            network): layers found there skip the capture (the "parallel" scheme: every layer's
            inputs from the original network, so several methods can share one pass).

    Per-layer report: ``error_before_refit`` = E(mask)/‖Y‖² (the QUBO objective, BN-weighted),
    ``error_after_refit`` (same units, after the least-squares refit), ``select_s``, ``stats_s``.
    """
    from tqdm.auto import tqdm

    cfg.validate()
    reference = model if reference is None else reference
    pruned = copy.deepcopy(model).eval()
    layers = resolve_layers(pruned, cfg.layer)
    rows = []
    t_all = time.perf_counter()
    for j, pl in enumerate(tqdm(layers, desc="prune", disable=not progress)):
        t0 = time.perf_counter()
        cons = pruned.get_submodule(pl.consumer)
        W = cons.weight.detach()
        if stats is not None and pl.consumer in stats:
            st, scale = stats[pl.consumer]
        else:
            X, _ = layer_io(pruned, pl.consumer, calib, cfg.batch_size, want_output=False)
            _, Y = layer_io(reference, pl.consumer, calib, cfg.batch_size, want_input=False)
            if reference.get_submodule(pl.consumer).bias is not None:
                Y = Y - reference.get_submodule(pl.consumer).bias.detach().reshape(1, -1, 1, 1)
            st = channel_stats(X, cons, target=Y, chunk=cfg.chunk)
            del X, Y
            scale = bn_scale(pruned.get_submodule(pl.consumer_bn))
        problem = pruning_problem(st, W, out_scale=scale)
        t_stats = time.perf_counter() - t0
        k = keep_count(pl.channels, cfg.keep)
        if on_problem is not None:
            on_problem(pl, problem, k)
        mask, info, base = select_mask(problem, k, cfg.method, l1_scores(pruned, pl), cfg, seed=cfg.seed + j)
        new_w = refit_weights(st, W, mask, damping=cfg.refit_damping) if cfg.refit else None
        after = refit_error(st, new_w if new_w is not None else W * torch.as_tensor(mask).reshape(1, -1, 1, 1),
                            out_scale=scale)
        apply_mask(pruned, pl, mask, new_w)
        row = {"layer": pl.consumer, "producer": pl.producer, "n": pl.channels, "k": int(k),
               "mask": np.nonzero(mask)[0].tolist(), "yy": problem.yy,
               "error_before_refit": problem.relative_error(mask), "error_after_refit": after / problem.yy,
               "stats_s": t_stats, "select_s": info["wall_time_s"], "select": to_jsonable(info),
               "baselines": {n: {"error_before_refit": b["error"] / problem.yy, "wall_time_s": b["wall_time_s"]}
                             for n, b in base.items()}}
        rows.append(row)
    bn_count = reestimate_batchnorm(pruned, calib, cfg.batch_size) if cfg.reestimate_bn else 0
    report = {"config": asdict(cfg), "layers": rows, "bn_reestimated": bn_count,
              "calibration_images": int(calib.shape[0]), "wall_time_s": time.perf_counter() - t_all}
    return pruned, report


def stats_for(model: nn.Module, pl: PrunableLayer, calib: torch.Tensor, batch_size: int = 64, chunk: int = 16
              ) -> tuple[ChannelStats, torch.Tensor]:
    """Statistics of one layer on ``calib`` with its own output as target (single-layer pruning)."""
    cons = model.get_submodule(pl.consumer)
    X, _ = layer_io(model, pl.consumer, calib, batch_size, want_output=False)
    W = cons.weight.detach()
    return channel_stats(X, cons, chunk=chunk), bn_scale(model.get_submodule(pl.consumer_bn))
