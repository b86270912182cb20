"""BatchNorm folding: conv → BN (eval statistics) becomes one conv with a bias.

For a BatchNorm with running mean μ, variance σ², eps ε, affine γ, β following a convolution
y = W ∗ x + b (b = 0 when absent), in eval mode

    BN(y) = γ (y − μ) / √(σ² + ε) + β = W' ∗ x + b',   W' = W · γ/√(σ² + ε) (per output channel),
                                                         b' = (b − μ) · γ/√(σ² + ε) + β,

computed by ``torch.nn.utils.fusion.fuse_conv_bn_eval``. The pairs are found by tracing the
model with ``torch.fx`` (a BN whose input is a conv's output, that output used by nothing
else), so the rule is not tied to torchvision's attribute names.

:func:`unfold_batchnorm` goes back to the original architecture without losing the folded
weights: each folded BN becomes an identity with a shift (γ = 1, β = b', μ = 0,
σ² = 1 − ε) and the conv loses its bias. That state dict loads into the unmodified
architecture, so a folded (and then quantized) network is a checkpoint ``--weights PATH``
accepts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from qubo_nn.errors import QuboNNError


@dataclass(frozen=True)
class FoldedPair:
    """A convolution ``conv`` (module name) and the BatchNorm ``bn`` folded into it."""

    conv: str
    bn: str


def find_conv_bn_pairs(model: nn.Module) -> list[FoldedPair]:
    """(conv, bn) module names where the BN reads the conv's output and nothing else does."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types on untraceable control flow
        raise QuboNNError(f"cannot trace {type(model).__name__} with torch.fx to find conv → BN pairs "
                          f"({type(exc).__name__}: {exc})") from exc
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1):
            pairs.append(FoldedPair(conv=str(src.target), bn=str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[FoldedPair]]:
    """A copy of ``model`` in eval mode with every conv → BN pair folded (BN → ``nn.Identity``).

    The input is not modified. Outputs agree with ``model.eval()`` up to float rounding.
    """
    folded = copy.deepcopy(model).eval()
    pairs = find_conv_bn_pairs(folded)
    for pair in pairs:
        conv, bn = folded.get_submodule(pair.conv), folded.get_submodule(pair.bn)
        if not bn.track_running_stats or bn.running_mean is None:
            raise QuboNNError(f"BatchNorm {pair.bn!r} has no running statistics to fold")
        _set_submodule(folded, pair.conv, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
        _set_submodule(folded, pair.bn, nn.Identity())
    return folded, pairs


def unfold_batchnorm(folded: nn.Module, original: nn.Module, pairs: list[FoldedPair]) -> dict[str, torch.Tensor]:
    """State dict of ``original``'s architecture that computes what ``folded`` computes.

    Folded convs give their weight to the conv and their bias to the BN's β; the BN becomes
    an identity (γ = 1, μ = 0, σ² = 1 − ε). Every other entry comes from ``folded``.
    """
    fsd = folded.state_dict()
    out = {}
    for k, v in original.state_dict().items():
        out[k] = fsd[k].clone() if k in fsd else v.clone()
    for pair in pairs:
        bn = original.get_submodule(pair.bn)
        w = fsd[f"{pair.conv}.weight"]
        bias = fsd.get(f"{pair.conv}.bias")
        out[f"{pair.conv}.weight"] = w.clone()
        if f"{pair.conv}.bias" in out:  # the original conv had a bias of its own: keep it in the BN
            out[f"{pair.conv}.bias"] = torch.zeros_like(out[f"{pair.conv}.bias"])
        out[f"{pair.bn}.weight"] = torch.ones_like(out[f"{pair.bn}.weight"])
        out[f"{pair.bn}.bias"] = bias.clone() if bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        out[f"{pair.bn}.running_mean"] = torch.zeros_like(out[f"{pair.bn}.running_mean"])
        out[f"{pair.bn}.running_var"] = torch.full_like(out[f"{pair.bn}.running_var"], 1.0 - bn.eps)
    return out


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
