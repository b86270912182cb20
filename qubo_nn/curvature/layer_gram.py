"""A layer's reconstruction Gram from its inputs (as in AdaRound/GPTQ).

A weight layer computes Y = W X (+ b) with W the C_out × D weight matrix (for a conv, the
kernel flattened per output channel: D = C_in · kh · kw, column index (c_in, i, j) row-major,
as ``weight.reshape(C_out, -1)``) and X the D × P matrix of its input columns (for a conv,
im2col of the input by ``torch.nn.functional.unfold`` with the conv's kernel, stride, padding
and dilation; P = N · output positions; for a linear layer the N inputs). The reconstruction
loss of a changed weight Ŵ is

    L(Ŵ) = ‖(Ŵ − W) X‖²_F = Σ_rows (ŵ_r − w_r)ᵀ (X Xᵀ) (ŵ_r − w_r),

so every output row has the same Hessian H = 2 X Xᵀ (D × D). :class:`GramAccumulator`
sums X Xᵀ over chunks of inputs: memory is O(D²) plus one chunk's columns, never N·D².
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.nets.layers import StopForward, run_hooked

CHUNK_ELEMENTS = 1 << 23      # im2col entries per chunk (8 M floats = 32 MB in float32)


def layer_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input columns of ``layer`` for input ``x``, as a P × D matrix (one column of X per row).

    Conv2d: ``x`` N × C_in × H × W -> (N·L) × (C_in·kh·kw) by ``F.unfold`` (zero padding,
    groups = 1). Linear: ``x`` (…, D) -> (numel/D) × D.
    """
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise QuboNNError(f"expected a conv with groups=1, zero padding given as numbers, got groups="
                              f"{layer.groups}, padding_mode={layer.padding_mode!r}, padding={layer.padding!r}")
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    raise QuboNNError(f"expected an nn.Conv2d or nn.Linear layer, got {type(layer).__name__}")


def layer_dim(layer: nn.Module) -> int:
    """D: the number of weights per output row (C_in·kh·kw or in_features)."""
    return int(layer.weight[0].numel())


class GramAccumulator:
    """Running Σ X Xᵀ (D × D, ``dtype``, default float64) and the column count P of one layer.

    Each chunk's X Xᵀ is computed in the input's dtype and added in ``dtype``.
    """

    def __init__(self, layer: nn.Module, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"):
        self.layer = layer
        self.dim = layer_dim(layer)
        self.gram = torch.zeros(self.dim, self.dim, dtype=dtype, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add the columns of input batch ``x``, a few images at a time (bounded memory)."""
        per_item = max(1, layer_columns(self.layer, x[:1]).numel())
        step = max(1, CHUNK_ELEMENTS // per_item)
        for i in range(0, x.shape[0], step):
            # the chunk's product in the input's precision (float32 halves the time of the big
            # early-layer Grams), summed over chunks in the accumulator's (float64)
            cols = layer_columns(self.layer, x[i:i + step]).to(self.gram.device)
            self.gram += (cols.T @ cols).to(self.gram.dtype)
            self.count += cols.shape[0]

    def hessian(self) -> torch.Tensor:
        """H = 2 Σ X Xᵀ: the Hessian of ‖(Ŵ − W) X‖² with respect to each output row."""
        return 2.0 * self.gram


def capture_gram(model: nn.Module, layer_name: str, batches, *, dtype: torch.dtype = torch.float64,
                 stop_after: bool = True) -> GramAccumulator:
    """Gram of the inputs that ``layer_name`` receives when ``model`` runs on ``batches``
    (an iterable of input tensors), with a forward hook; ``stop_after`` ends each forward pass
    once the layer has been reached (the rest of the network is not needed)."""
    layer = model.get_submodule(layer_name)
    acc = GramAccumulator(layer, dtype=dtype)

    def hook(module, args):
        acc.add(args[0].detach())
        if stop_after:
            raise StopForward

    run_hooked(model, batches, [layer.register_forward_pre_hook(hook)])
    if acc.count == 0:
        raise QuboNNError(f"layer {layer_name!r} received no input on the calibration data")
    return acc

