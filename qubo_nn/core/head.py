"""The FC head (W, b) and its true loss/accuracy on cached features.

Logits z = W f + b, loss L = mean_n CE(z_n, y_n) + (l2/2)·‖W‖². Evaluation is chunked over
samples so memory stays O(chunk × C).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import FeatureSet


@dataclass
class Head:
    """FC head weights ``W`` (C × D) and bias ``b`` (C,)."""

    W: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        if self.W.ndim != 2 or self.b.ndim != 1 or self.b.shape[0] != self.W.shape[0]:
            raise QuboNNError(
                f"head must be W (C × D) and b (C,), got W {tuple(self.W.shape)} and b {tuple(self.b.shape)}")
        if not (torch.isfinite(self.W).all() and torch.isfinite(self.b).all()):
            raise QuboNNError("head weights contain NaN/Inf")

    @property
    def num_classes(self) -> int:
        return int(self.W.shape[0])

    @property
    def dim(self) -> int:
        return int(self.W.shape[1])

    def clone(self) -> "Head":
        return Head(self.W.detach().clone(), self.b.detach().clone())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Head":
        return Head(self.W.to(device=device, dtype=dtype or self.W.dtype),
                    self.b.to(device=device, dtype=dtype or self.b.dtype))

    @classmethod
    def from_linear(cls, fc: torch.nn.Linear) -> "Head":
        return cls(fc.weight.detach().clone(), fc.bias.detach().clone())

    @classmethod
    def zeros(cls, num_classes: int, dim: int, dtype: torch.dtype = torch.float32) -> "Head":
        return cls(torch.zeros(num_classes, dim, dtype=dtype), torch.zeros(num_classes, dtype=dtype))

    @classmethod
    def init_like_linear(cls, num_classes: int, dim: int, seed: int = 0) -> "Head":
        """torch.nn.Linear's default initialization, seeded."""
        with torch.random.fork_rng(devices=[]):  # nn.Linear has no generator; keep the caller's RNG
            torch.manual_seed(seed)
            fc = torch.nn.Linear(dim, num_classes)
        return cls.from_linear(fc)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.W.detach().cpu(), "bias": self.b.detach().cpu()}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "Head":
        for key in ("weight", "bias"):
            if key not in sd:
                raise QuboNNError(f"head checkpoint must hold 'weight' and 'bias', got keys {sorted(sd)}")
        return cls(sd["weight"], sd["bias"])


def check_compatible(head: Head, feats: FeatureSet) -> None:
    """Raise unless the head's (C, D) matches the feature set's classes and dimension."""
    if head.dim != feats.dim or head.num_classes != feats.num_classes:
        raise QuboNNError(
            f"head is {head.num_classes} classes × {head.dim} features but the feature set has "
            f"{feats.num_classes} classes × {feats.dim} features")


@torch.no_grad()
def evaluate(head: Head, feats: FeatureSet, l2: float = 0.0, chunk: int = 8192) -> tuple[float, float]:
    """True (mean cross-entropy [+ (l2/2)‖W‖²], accuracy in [0, 1]) of ``head`` on ``feats``.

    Computed on the head's device and dtype, in chunks of ``chunk`` samples.
    """
    check_compatible(head, feats)
    W, b = head.W, head.b
    total, correct = 0.0, 0
    for s in range(0, feats.n, chunk):
        X = feats.X[s:s + chunk].to(device=W.device, dtype=W.dtype)
        y = feats.y[s:s + chunk].to(W.device)
        z = torch.addmm(b, X, W.T)
        total += float(F.cross_entropy(z, y, reduction="sum"))
        correct += int((z.argmax(1) == y).sum())
    loss = total / feats.n
    if l2:
        loss += 0.5 * l2 * float((W * W).sum())
    return loss, correct / feats.n
