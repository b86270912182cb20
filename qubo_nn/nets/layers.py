"""The weight layers of a network (every ``Conv2d`` and ``Linear``) in forward order."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import QuboNNError

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
