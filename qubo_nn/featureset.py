"""Cached backbone features: the one input every head optimizer works on.

A :class:`FeatureSet` is ``X`` (N × D, float32, post-ReLU features) and ``y`` (N, int64 in
[0, C)). The backbone is run once (``qubo_nn.features``); everything after reads these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import QuboNNError


@dataclass
class FeatureSet:
    """Features ``X`` (N × D) and labels ``y`` (N,) with ``num_classes`` C and free metadata."""

    X: torch.Tensor
    y: torch.Tensor
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_features(self.X, self.y, self.num_classes)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "FeatureSet":
        X = self.X.to(device=device, dtype=dtype or self.X.dtype)
        return FeatureSet(X, self.y.to(device), self.num_classes, dict(self.meta))

    def subset(self, idx: torch.Tensor) -> "FeatureSet":
        return FeatureSet(self.X[idx], self.y[idx], self.num_classes, dict(self.meta))


def validate_features(X: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    """Raise :class:`QuboNNError` unless X is finite N × D float, y is N int labels in [0, C)."""
    if not isinstance(X, torch.Tensor) or X.ndim != 2:
        raise QuboNNError(f"features must be a 2-D tensor (N × D), got {_describe(X)}")
    if not X.is_floating_point():
        raise QuboNNError(f"features must be floating point, got dtype {X.dtype}")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise QuboNNError(f"labels must be a 1-D tensor of length N={X.shape[0]}, got {_describe(y)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise QuboNNError(f"labels must be integers, got dtype {y.dtype}")
    if X.shape[0] == 0:
        raise QuboNNError("feature set is empty (N = 0)")
    if num_classes < 2:
        raise QuboNNError(f"num_classes must be >= 2, got {num_classes}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise QuboNNError(f"labels must lie in [0, {num_classes}), got range [{lo}, {hi}]")
    if not torch.isfinite(X).all():
        bad = int((~torch.isfinite(X)).sum())
        raise QuboNNError(f"features contain {bad} NaN/Inf values")


def _describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return type(t).__name__


def synthetic_features(
    n: int = 50_000,
    dim: int = 512,
    num_classes: int = 100,
    seed: int = 0,
    n_test: int = 10_000,
    separation: float = 1.0,
) -> tuple[FeatureSet, FeatureSet]:
    """A CIFAR-100-shaped feature set (default 50,000 × 512, 100 classes) for benchmarks.

    Class means are random non-negative directions; samples are ReLU(mean + noise), so the
    features are non-negative and sparse like post-ReLU ResNet features, and the classes
    overlap (the convex optimum does not reach 100%). ``separation`` scales the means.
    """
    g = torch.Generator().manual_seed(int(seed))
    means = torch.randn(num_classes, dim, generator=g).abs() * separation * (torch.rand(num_classes, dim, generator=g) < 0.3)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (m,), generator=g)
        X = torch.relu(means[y] + torch.randn(m, dim, generator=g))
        return X.float(), y.long()

    Xtr, ytr = draw(n)
    Xte, yte = draw(n_test)
    meta = {"dataset": "synthetic-features", "seed": seed, "separation": separation}
    return (FeatureSet(Xtr, ytr, num_classes, {**meta, "split": "train"}),
            FeatureSet(Xte, yte, num_classes, {**meta, "split": "test"}))
