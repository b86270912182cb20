"""Cached backbone features: the one input every head optimizer works on.

A :class:`FeatureSet` is ``X`` (N × D, float32, post-ReLU features) and ``y`` (N, int64 in
[0, C)). The backbone is run once (``qubo_nn.data.features``); everything after reads these.

Two generated sets need no backbone: :func:`realistic_features` ("synthetic-features":
CIFAR-100-shaped, not separable, calibrated like a linear probe of real features) and
:func:`separable_features` ("synthetic-separable", the old set: fast, but every class is
linearly separable).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from qubo_nn.errors import QuboNNError


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


@dataclass(frozen=True)
class RealisticSpec:
    """Knobs of :func:`realistic_features` (defaults calibrated, see its docstring).

    ``latent_dim`` k: dimension of the class subspace; ``group_size``: classes per superclass
    (CIFAR-100: 20 superclasses of 5); ``superclass_spread`` / ``class_spread``: std of the
    superclass centers / of a class center around its superclass center (latent units);
    ``within_class``: std of a sample around its class center in the latent subspace (sets the
    overlap, hence the accuracy); ``noise``: scale of the full-dimensional noise, whose spectrum
    decays as (i+1)^-``noise_decay``; ``offset_std``: std of the per-feature offset before the
    ReLU; ``contrast``: std of the per-sample log-scale; ``grid``: features are rounded to
    multiples of 1/``grid`` (so the float64 → float32 result is the same on every machine).
    """

    latent_dim: int = 48
    group_size: int = 5
    superclass_spread: float = 1.0
    class_spread: float = 0.6
    within_class: float = 2.2
    noise: float = 0.35
    noise_decay: float = 1.0
    offset_std: float = 0.3
    contrast: float = 0.25
    grid: int = 1024


def realistic_features(
    n_train: int = 50_000,
    n_test: int = 10_000,
    dim: int = 512,
    num_classes: int = 100,
    seed: int = 0,
    *,
    spec: RealisticSpec | None = None,
) -> tuple[FeatureSet, FeatureSet]:
    """A CIFAR-100-shaped, NOT separable, post-ReLU-like feature set (default 50,000 / 10,000 × 512, 100 classes).

    Generative model (NumPy PCG64 streams from ``SeedSequence(seed)``: one for the structure,
    one per split, so the test set does not depend on ``n_train``):

    - class centers in a k-dimensional latent space (k = min(latent_dim, D)): superclass center
      ~ N(0, a²I) plus a class offset ~ N(0, b²I) (classes of one superclass are confusable);
    - a sample of class c: z = m_c + σ·N(0, I_k) (σ = ``within_class``: class overlap),
      h = z P + e A + β, with P (k × D) random, e A full-dimensional noise of covariance
      A^T A = ``noise``²·Q diag(λ) Qᵀ, λ_i ∝ (i+1)^-``noise_decay`` (Q random orthogonal,
      mean λ = 1), β a per-feature offset;
    - x = round(ReLU(s · h) · grid) / grid with a per-sample contrast s = exp(``contrast``·N(0,1)).

    Labels are balanced (N/C per class, shuffled). About half the entries are 0, the mean is
    about 1. Calibration (defaults, seed 0):
    the L2-regularised convex optimum (l2 = 0.01 chosen by validation) scores 63.0 % test accuracy with a training
    cross-entropy of 1.07 nats (train acc 70.8 %), like a linear probe of ImageNet ResNet-18 features on
    CIFAR-100 (results/bench_features-calibration.json).
    Computed in float64, returned float32; a few seconds at the default size.
    """
    spec = spec or RealisticSpec()
    for name, v in (("n_train", n_train), ("n_test", n_test), ("dim", dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise QuboNNError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise QuboNNError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    s_struct, s_train, s_test = np.random.SeedSequence(int(seed)).spawn(3)
    rng = np.random.default_rng(s_struct)
    k = min(spec.latent_dim, dim)
    groups = math.ceil(num_classes / spec.group_size)
    centers = rng.standard_normal((groups, k)) * spec.superclass_spread
    means = centers[np.arange(num_classes) // spec.group_size] + spec.class_spread * rng.standard_normal((num_classes, k))
    P = rng.standard_normal((k, dim)) / math.sqrt(k)
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    lam = (1.0 + np.arange(dim)) ** (-spec.noise_decay)
    lam *= dim / lam.sum()
    A = (np.sqrt(lam)[:, None] * Q.T) * spec.noise            # D × D: noise e A has covariance noise² Q diag(λ) Qᵀ
    offset = spec.offset_std * rng.standard_normal(dim)

    def draw(ss: np.random.SeedSequence, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = np.random.default_rng(ss)
        y = r.permutation(np.arange(n) % num_classes)
        z = means[y] + spec.within_class * r.standard_normal((n, k))
        h = z @ P + r.standard_normal((n, dim)) @ A + offset
        h *= np.exp(spec.contrast * r.standard_normal((n, 1)))
        X = np.round(np.maximum(h, 0.0) * spec.grid) / spec.grid
        return torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    Xtr, ytr = draw(s_train, n_train)
    Xte, yte = draw(s_test, n_test)
    meta = {"dataset": "synthetic-features", "generator": "realistic_features", "seed": int(seed),
            "spec": asdict(spec)}
    return (FeatureSet(Xtr, ytr, num_classes, {**meta, "split": "train"}),
            FeatureSet(Xte, yte, num_classes, {**meta, "split": "test"}))


def separable_features(
    n: int = 50_000,
    dim: int = 512,
    num_classes: int = 100,
    seed: int = 0,
    n_test: int = 10_000,
    separation: float = 1.0,
) -> tuple[FeatureSet, FeatureSet]:
    """The old, SEPARABLE CIFAR-100-shaped set (default 50,000 × 512, 100 classes): for speed only.

    Class means are random non-negative directions; samples are ReLU(mean + noise). At the
    default size the classes are linearly separable (one SGD epoch reaches 100 % test
    accuracy, training loss near 0): no accuracy claim should rest on it. Use
    :func:`realistic_features` for comparisons. ``separation`` scales the means.
    """
    g = torch.Generator().manual_seed(int(seed))
    means = torch.randn(num_classes, dim, generator=g).abs() * separation * (torch.rand(num_classes, dim, generator=g) < 0.3)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (m,), generator=g)
        X = torch.relu(means[y] + torch.randn(m, dim, generator=g))
        return X.float(), y.long()

    Xtr, ytr = draw(n)
    Xte, yte = draw(n_test)
    meta = {"dataset": "synthetic-separable", "generator": "separable_features", "seed": seed,
            "separation": separation}
    return (FeatureSet(Xtr, ytr, num_classes, {**meta, "split": "train"}),
            FeatureSet(Xte, yte, num_classes, {**meta, "split": "test"}))


synthetic_features = separable_features
"""The old name of :func:`separable_features` (existing callers: tiny, fast test sets)."""

SYNTHETIC_GENERATORS = {"synthetic-features": "realistic", "synthetic-separable": "separable"}
"""Feature-set names that need no backbone: the realistic (default) and the separable generator."""


def synthetic_by_name(name: str, n_train: int, n_test: int, dim: int, num_classes: int,
                      seed: int) -> tuple[FeatureSet, FeatureSet]:
    """Train/test sets of the synthetic dataset ``name`` ('synthetic-features' | 'synthetic-separable')."""
    if name == "synthetic-features":
        return realistic_features(n_train=n_train, n_test=n_test, dim=dim, num_classes=num_classes, seed=seed)
    if name == "synthetic-separable":
        return separable_features(n=n_train, dim=dim, num_classes=num_classes, seed=seed, n_test=n_test)
    raise QuboNNError(f"synthetic dataset must be one of {tuple(SYNTHETIC_GENERATORS)}, got {name!r}")
