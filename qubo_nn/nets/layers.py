"""The weight layers of a network (every ``Conv2d`` and ``Linear``) in forward order."""
from __future__ import annotations

import torch
from torch import nn

from qubo_nn.errors import QuboNNError

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear modules of ``model`` in the order one forward pass of
    ``example`` calls them (each once; a module called twice is refused: its inputs would mix)."""
    order: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, WEIGHT_LAYERS):
            handles.append(mod.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    twice = sorted({n for n in order if order.count(n) > 1})
    if twice:
        raise QuboNNError(f"expected every weight layer to run once per forward pass, got {twice} more often")
    return order


class StopForward(Exception):
    """Raised by a forward hook to end a pass once the hook has seen what it needs."""


def run_hooked(model: nn.Module, batches, handles: list) -> None:
    """Run every batch of ``batches`` through ``model`` without gradients; a hook that raises
    :class:`StopForward` ends that batch's pass early. The hook ``handles`` are removed at the
    end, also on error (capture passes of the layer Gram, BN statistics, cached activations)."""
    try:
        with torch.no_grad():
            for xb in batches:
                try:
                    model(xb)
                except StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
