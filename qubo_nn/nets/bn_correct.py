"""Statistics correction of a quantized, BN-folded network (bias + variance correction).

After quantization a layer's output drifts: its per-channel mean and spread differ from what the
fp32 network produces on the same images (Nagel et al., "Data-free quantization", bias
correction; Finkelstein et al. and Banner et al. add the variance term). With BatchNorm folded
into the convolutions, re-estimating BN statistics is not available (the BNs are gone), so the
correction is applied to the folded layer itself, as a per-output-channel affine map of its
output:

    y'_c = a_c · y_c + b_c,   a_c = σ_ref,c / σ_q,c,   b_c = μ_ref,c − a_c · μ_q,c,

where μ, σ are the mean and standard deviation of output channel c over all calibration images
and positions (N·H·W values), ``ref`` in the fp32 folded network and ``q`` in the quantized one.
Afterwards the quantized layer's output has exactly the reference mean and standard deviation on
the calibration images. In weights: W'_c = a_c · W_c, bias'_c = a_c · bias_c + b_c.

Grid. A quantized row is W_c = s_c · k_c (integer levels k_c, per-row scale s_c); then
W'_c = (a_c s_c) · k_c: the integer levels are unchanged and the network stays on a per-row grid
whose scale is s'_c = a_c · s_c (``info[layer]["scale_factor"]`` is a). The bias is float, as a
folded BN's shift always is.

Sequential: layers are corrected in forward order; layer ℓ's quantized statistics are measured
with the layers before ℓ already corrected (so each correction sees the inputs the final network
gives it). The reference statistics come from one pass of the reference network.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.nets.layers import WEIGHT_LAYERS, StopForward, run_hooked, weight_layers


def correct_statistics(reference: nn.Module, quantized: nn.Module, images: torch.Tensor, batch_size: int = 64,
                       layers: list[str] | None = None, *, variance: bool = True,
                       min_std: float = 1e-8) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """A copy of ``quantized`` whose ``layers`` have their output statistics matched to ``reference``.

    Args:
        reference: the fp32 network with BN folded (eval mode is used; not modified).
        quantized: the quantized network, BN folded, with the same module names (not modified).
        images: calibration inputs (N × …), on the models' device.
        batch_size: images per forward pass.
        layers: names of Conv2d/Linear modules to correct, in any order (they are visited in
            forward order); default every Conv2d of ``quantized``.
        variance: also correct the spread (a_c = σ_ref/σ_q); False = bias correction only (a = 1).
        min_std: a channel whose quantized σ is below ``min_std`` · (σ_ref + min_std) keeps a = 1
            (a dead channel has no spread to rescale).

    Returns:
        (corrected copy, info): info[layer] = {"scale_factor" (C_out,) a, "bias_shift" (C_out,) b
        (float64 tensors), "mean_ref", "std_ref", "mean_q", "std_q" (C_out,) before correction,
        "mean_error_rel" = ‖μ_q − μ_ref‖/‖σ_ref‖ and "std_ratio_min"/"std_ratio_max" (floats),
        "positions" (values per channel)}.
    """
    if images.ndim < 2 or images.shape[0] == 0:
        raise QuboNNError(f"expected a non-empty batch of calibration images, got shape {tuple(images.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise QuboNNError(f"batch_size must be a positive integer, got {batch_size!r}")
    corrected = copy.deepcopy(quantized).eval()
    reference = reference.eval()
    order = weight_layers(corrected, images[:1])
    if layers is None:
        layers = [n for n in order if isinstance(corrected.get_submodule(n), nn.Conv2d)]
    unknown = sorted(set(layers) - set(order))
    if unknown:
        raise QuboNNError(f"expected names of Conv2d/Linear layers of the quantized network, got {unknown}")
    names = [n for n in order if n in set(layers)]
    if not names:
        return corrected, {}
    ref_mods = dict(reference.named_modules())
    for n in names:
        r, q = ref_mods.get(n), corrected.get_submodule(n)
        if not isinstance(r, WEIGHT_LAYERS) or r.weight.shape != q.weight.shape:
            raise QuboNNError(f"expected layer {n!r} in the reference with weight shape {tuple(q.weight.shape)}, "
                              f"got {None if r is None else tuple(getattr(r, 'weight', torch.empty(0)).shape)}")
    batches = [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    ref_stats = _output_stats(reference, names, batches, stop_at=names[-1])   # nothing after it is needed
    info: dict[str, dict[str, Any]] = {}
    for n in names:
        mu_q, sd_q, count = _output_stats(corrected, [n], batches, stop_at=n)[n]
        mu_r, sd_r, _ = ref_stats[n]
        a = torch.ones_like(sd_q)
        if variance:
            live = sd_q > min_std * (sd_r + min_std)
            a = torch.where(live, sd_r / torch.where(live, sd_q, torch.ones_like(sd_q)), a)
        b = mu_r - a * mu_q
        _apply_affine(corrected.get_submodule(n), a, b)
        ratio = sd_q / sd_r.clamp_min(1e-300)
        info[n] = {"scale_factor": a, "bias_shift": b, "mean_ref": mu_r, "std_ref": sd_r, "mean_q": mu_q,
                   "std_q": sd_q, "positions": count,
                   "mean_error_rel": float((mu_q - mu_r).norm() / sd_r.norm().clamp_min(1e-300)),
                   "std_ratio_min": float(ratio.min()), "std_ratio_max": float(ratio.max())}
    return corrected, info


def _apply_affine(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    """W_c ← a_c W_c, bias_c ← a_c bias_c + b_c (a bias is added when the layer has none)."""
    w = layer.weight
    shape = (-1,) + (1,) * (w.ndim - 1)
    with torch.no_grad():
        w.copy_((w.double() * a.to(w.device).reshape(shape)).to(w.dtype))
        old = layer.bias.double() if layer.bias is not None else torch.zeros_like(a).to(w.device)
        new = (a.to(w.device) * old + b.to(w.device)).to(w.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new)
        else:
            layer.bias.copy_(new)


def _output_stats(model: nn.Module, names: list[str], batches: list[torch.Tensor],
                  stop_at: str | None) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per output channel (dim 1) mean and population standard deviation (float64) of each layer's
    output over all images and positions; a pass stops after ``stop_at`` when given."""
    sums: dict[str, list] = {}
    handles = []

    def hook(name):
        def fn(module, args, out):
            y = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + y.sum(1)
            s[1] = s[1] + (y * y).sum(1)
            s[2] += y.shape[1]
            if name == stop_at:
                raise StopForward   # after the accumulation: this layer's output is counted
        return fn

    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(hook(n)))
    run_hooked(model, batches, handles)
    out = {}
    for n in names:
        if n not in sums:
            raise QuboNNError(f"layer {n!r} produced no output on the calibration images")
        s1, s2, cnt = sums[n]
        mean = s1 / cnt
        var = (s2 / cnt - mean * mean).clamp_min(0.0)
        out[n] = (mean.cpu(), var.sqrt().cpu(), cnt)
    return out

