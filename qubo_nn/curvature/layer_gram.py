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

A grouped convolution (``groups = G > 1``; depthwise: G = C_in) is G independent convolutions:
output channel r of group g = r // (C_out / G) reads only input channels
[g·C_in/G, (g+1)·C_in/G). Its rows have D = (C_in/G)·kh·kw weights and the Hessian of group g,
H_g = 2 X_g X_gᵀ, with X_g the im2col columns of that group's input channels
(:func:`group_columns`); the accumulator then holds G × D × D.
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


def group_columns(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Input columns of each group of a (grouped) conv, G × P × D (D = C_in/G · kh · kw, P = N·L).

    Group g's columns are the rows g·D … (g+1)·D − 1 of ``F.unfold`` of the whole input (unfold
    orders entries channel-major, and a group's channels are contiguous).
    """
    if not isinstance(layer, nn.Conv2d) or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise QuboNNError(f"expected an nn.Conv2d with zero padding given as numbers, got {type(layer).__name__}"
                          f"{'' if not isinstance(layer, nn.Conv2d) else f' padding_mode={layer.padding_mode!r}, padding={layer.padding!r}'}")
    G = layer.groups
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    N, GD, L = cols.shape
    return cols.reshape(N, G, GD // G, L).permute(1, 0, 3, 2).reshape(G, N * L, GD // G)


def layer_dim(layer: nn.Module) -> int:
    """D: the number of weights per output row (C_in·kh·kw or in_features)."""
    return int(layer.weight[0].numel())


class GramAccumulator:
    """Running Σ X Xᵀ (D × D, ``dtype``, default float64) and the column count P of one layer;
    for a grouped conv (``groups`` G > 1) one Gram per group: G × D × D (``grouped`` is True).

    Each chunk's X Xᵀ is computed in the input's dtype and added in ``dtype``.
    """

    def __init__(self, layer: nn.Module, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"):
        self.layer = layer
        self.dim = layer_dim(layer)
        self.groups = int(getattr(layer, "groups", 1)) if isinstance(layer, nn.Conv2d) else 1
        self.grouped = self.groups > 1
        shape = (self.groups, self.dim, self.dim) if self.grouped else (self.dim, self.dim)
        self.gram = torch.zeros(*shape, dtype=dtype, device=device)
        self.count = 0

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        return group_columns(self.layer, x) if self.grouped else layer_columns(self.layer, x)

    def add(self, x: torch.Tensor) -> None:
        """Add the columns of input batch ``x``, a few images at a time (bounded memory)."""
        per_item = max(1, self._columns(x[:1]).numel())
        step = max(1, CHUNK_ELEMENTS // per_item)
        for i in range(0, x.shape[0], step):
            # the chunk's product in the input's precision (float32 halves the time of the big
            # early-layer Grams), summed over chunks in the accumulator's (float64)
            cols = self._columns(x[i:i + step]).to(self.gram.device)
            self.gram += (cols.transpose(-1, -2) @ cols).to(self.gram.dtype)
            self.count += cols.shape[-2]

    def hessian(self) -> torch.Tensor:
        """H = 2 Σ X Xᵀ: the Hessian of ‖(Ŵ − W) X‖² with respect to each output row
        (G × D × D for a grouped conv: H[g] is the Hessian of the rows of group g)."""
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

