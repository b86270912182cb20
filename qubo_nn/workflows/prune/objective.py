"""The channel-pruning objective of one layer as an exact quadratic in the keep-mask.

A layer (convolution or linear) with weight ``W`` (C_out × n × kh × kw, or C_out × n) reads
n input channels. Its output is the sum of per-channel contributions ``Y_i = W_i * X_i``
(``*`` the convolution of channel i alone). Keeping the channels of a mask s ∈ {0,1}ⁿ, with the
kept weights unchanged (no refit), gives the reconstruction error against a target ``Y``
(the layer's own output without bias, or the output of the original network)::

    E(s) = ‖Σ_i s_i Y_i − Y‖² = sᵀ G s − 2 bᵀ s + ‖Y‖²,
    G_ij = ⟨Y_i, Y_j⟩,  b_i = ⟨Y_i, Y⟩,

summed over calibration samples, output channels and positions. Nothing of size
N · n · D is formed: with im2col columns x (n·K per output position, K = kh·kw, channel-major
as ``F.unfold`` orders them: :func:`qubo_nn.curvature.layer_gram.layer_columns`) the pass over the
calibration data accumulates

    H = Σ x xᵀ  (n·K × n·K, the layer Gram of GPTQ/AdaRound),  R = Σ x yᵀ  (n·K × C_out),
    yy_c = Σ y_c²  (per output channel),

one chunk of samples at a time, and then G_ij = Σ_{c,a,b} W[c,i,a] W[c,j,b] H[(i,a),(j,b)] and
b_i = Σ_{c,a} W[c,i,a] R[(i,a),c]. The same H and R give the least-squares refit of the kept
weights (:func:`refit_weights`). An optional per-output-channel scale (a following BatchNorm's
γ/σ) weights the error of each output channel; it changes G, b and ‖Y‖², not the refit.

All statistics are float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import dimod
import numpy as np
import torch
from torch import nn

from qubo_nn.curvature.layer_gram import layer_columns
from qubo_nn.core.model import damping_mu
from qubo_nn.errors import QuboNNError

PENALTY_MODES = ("penalty", "cqm")


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, n, kh, kw) or (C_out, n) -> (C_out, n·K)."""
    if weight.dim() not in (2, 4):
        raise QuboNNError(f"expected a weight of shape (C_out, n, kh, kw) or (C_out, n), got {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


@dataclass
class ChannelStats:
    """Accumulated H = Σ x xᵀ, R = Σ x yᵀ and yy_c = Σ y_c² of one layer (float64, on ``H.device``).

    ``n`` input channels, ``K`` kernel positions, ``positions`` = Σ over samples of output
    positions, ``samples`` = number of calibration samples seen.
    """

    H: torch.Tensor
    R: torch.Tensor
    yy: torch.Tensor
    n: int
    K: int
    positions: int = 0
    samples: int = 0

    @classmethod
    def zeros(cls, n: int, K: int, c_out: int, device: str | torch.device = "cpu") -> "ChannelStats":
        d = n * K
        f64 = torch.float64
        return cls(torch.zeros(d, d, dtype=f64, device=device), torch.zeros(d, c_out, dtype=f64, device=device),
                   torch.zeros(c_out, dtype=f64, device=device), n, K)

    def add(self, cols: torch.Tensor, Y: torch.Tensor, samples: int) -> None:
        """Add im2col columns (M, n·K) and their targets (M, C_out) (M output positions)."""
        cols = cols.to(self.H.device, torch.float64)
        Y = Y.to(self.H.device, torch.float64)
        if cols.shape[1] != self.H.shape[0] or Y.shape != (cols.shape[0], self.R.shape[1]):
            raise QuboNNError(f"expected columns (M, {self.H.shape[0]}) and targets (M, {self.R.shape[1]}), "
                              f"got {tuple(cols.shape)} and {tuple(Y.shape)}")
        self.H.addmm_(cols.T, cols)
        self.R.addmm_(cols.T, Y)
        self.yy += (Y * Y).sum(0)
        self.positions += int(cols.shape[0])
        self.samples += int(samples)


def channel_stats(X: torch.Tensor, layer: nn.Module, *, target: torch.Tensor | None = None, chunk: int = 32,
                  device: str | torch.device = "cpu", stats: ChannelStats | None = None) -> ChannelStats:
    """Accumulate :class:`ChannelStats` of ``layer`` over inputs ``X`` in chunks of ``chunk`` samples.

    Args:
        X: layer inputs (N, n, H, W) for a conv, (N, n) for a linear layer.
        layer: the ``nn.Conv2d`` (groups 1) or ``nn.Linear``; its im2col is
            :func:`qubo_nn.curvature.layer_gram.layer_columns` (the layer Gram's own columns).
        target: what the pruned layer should reproduce, (N, C_out, H', W') or (N, C_out), without
            bias; default the layer's own output W * X (without bias).
        stats: add to these (accumulation across calls), else start from zero.
    """
    weight = layer.weight.detach() if isinstance(layer, (nn.Conv2d, nn.Linear)) else None
    if weight is None:
        raise QuboNNError(f"expected an nn.Conv2d or nn.Linear layer, got {type(layer).__name__}")
    Wm = _as_matrix(weight).to(device, torch.float64)
    n = int(weight.shape[1])
    if X.shape[1] != n:
        raise QuboNNError(f"expected inputs with {n} channels (the weight's dim 1), got shape {tuple(X.shape)}")
    K = int(weight[0, 0].numel())
    if stats is None:
        stats = ChannelStats.zeros(n, K, Wm.shape[0], device)
    for lo in range(0, X.shape[0], chunk):
        xb = X[lo:lo + chunk]
        cols = layer_columns(layer, xb.to(weight.dtype)).to(device, torch.float64)
        if target is None:
            Y = cols @ Wm.T
        else:
            tb = target[lo:lo + chunk].to(device, torch.float64)
            Y = tb.reshape(tb.shape[0], tb.shape[1], -1).transpose(1, 2).reshape(-1, tb.shape[1])
        stats.add(cols, Y, samples=xb.shape[0])
    return stats


@dataclass
class PruneProblem:
    """E(s) = sᵀ G s − 2 bᵀ s + yy over keep-masks s ∈ {0,1}ⁿ (float64 NumPy)."""

    G: np.ndarray
    b: np.ndarray
    yy: float

    @property
    def n(self) -> int:
        return int(self.b.shape[0])

    def error(self, s: np.ndarray) -> float | np.ndarray:
        """E of one mask (n,) -> float, or of masks (S, n) -> (S,)."""
        s = np.asarray(s, dtype=np.float64)
        if s.shape[-1] != self.n or s.ndim not in (1, 2):
            raise QuboNNError(f"expected masks of shape ({self.n},) or (S, {self.n}), got {s.shape}")
        e = np.einsum("...i,ij,...j->...", s, self.G, s) - 2.0 * s @ self.b + self.yy
        return float(e) if s.ndim == 1 else e

    def relative_error(self, s: np.ndarray) -> float | np.ndarray:
        """E(s) / ‖Y‖² (0 = perfect, 1 = as bad as removing the whole output)."""
        return self.error(s) / self.yy if self.yy > 0 else self.error(s)


def pruning_problem(stats: ChannelStats, weight: torch.Tensor, out_scale: torch.Tensor | None = None,
                    block: int = 64) -> PruneProblem:
    """G, b, ‖Y‖² of the layer ``weight`` from its accumulated statistics.

    ``out_scale`` (C_out,): per-output-channel weights of the error (a following BatchNorm's
    γ / sqrt(var + eps)), i.e. E(s) = ‖diag(out_scale)(Σ s_i Y_i − Y)‖². The contraction runs
    over ``block`` input channels at a time (memory O(block · K · n · K)).
    """
    Wm = _as_matrix(weight).to(stats.H.device, torch.float64)
    n, K = stats.n, stats.K
    if Wm.shape != (stats.R.shape[1], n * K):
        raise QuboNNError(f"expected a weight with {stats.R.shape[1]} outputs and {n} × {K} inputs per output, "
                          f"got shape {tuple(weight.shape)}")
    R, yy = stats.R, stats.yy
    if out_scale is not None:
        sc = out_scale.to(Wm.device, torch.float64).reshape(-1)
        if sc.shape[0] != Wm.shape[0]:
            raise QuboNNError(f"expected out_scale of length {Wm.shape[0]}, got {tuple(out_scale.shape)}")
        Wm = Wm * sc[:, None]
        R = R * sc[None, :]
        yy = yy * sc * sc
    G = torch.empty(n, n, dtype=torch.float64, device=Wm.device)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        M = Wm[:, lo * K:hi * K].T @ Wm                           # (bK, nK) = (WᵀW) rows of these channels
        P = M * stats.H[lo * K:hi * K]                            # elementwise with the same rows of H
        G[lo:hi] = P.reshape(hi - lo, K, n, K).sum(dim=(1, 3))
    G = 0.5 * (G + G.T)
    b = (Wm.T * R).reshape(n, K, -1).sum(dim=(1, 2))
    return PruneProblem(G.cpu().numpy(), b.cpu().numpy(), float(yy.sum()))


def safe_penalty(problem: PruneProblem) -> float:
    """A penalty weight λ above which min E(s) + λ(Σs − k)² is attained at a mask with Σs = k.

    Flipping bit i changes E by at most M_i = |G_ii − 2 b_i| + 2 Σ_{j≠i} |G_ij|; a mask d bits
    away from the constraint is within |d| flips of a feasible one, and λ d² ≥ λ |d| > |d| max M_i.
    """
    G = problem.G
    off = np.abs(G).sum(1) - np.abs(np.diag(G))
    return float(np.max(np.abs(np.diag(G) - 2.0 * problem.b) + 2.0 * off)) * (1.0 + 1e-9) + 1e-300


def prune_bqm(problem: PruneProblem, k: int, mode: str = "penalty", penalty: float | str = "safe",
              ) -> tuple[dimod.BinaryQuadraticModel, dict]:
    """BQM over variables 0..n−1 (1 = keep channel i) whose energy on a mask with Σs = k IS E(s).

    ``mode="penalty"``: E(s) + λ (Σ s − k)², built in one dense call with its offset; ``penalty``
    is λ itself or ``"safe"`` (:func:`safe_penalty`, exact) — a float scales nothing else.
    ``mode="cqm"``: the objective and the constraint Σ s = k in a dimod ConstrainedQuadraticModel,
    converted by ``dimod.cqm_to_bqm`` (its default λ, 10 × the largest objective bias, unless
    ``penalty`` is a number). Returns (bqm, info) with info {"mode", "penalty", "k"}.
    """
    n = problem.n
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise QuboNNError(f"expected the number of kept channels k in [1, {n}], got {k!r}")
    if mode not in PENALTY_MODES:
        raise QuboNNError(f"expected penalty mode in {PENALTY_MODES}, got {mode!r}")
    if mode == "penalty":
        lam = safe_penalty(problem) if penalty == "safe" else float(penalty)
        if not lam >= 0:
            raise QuboNNError(f"expected a penalty >= 0 or 'safe', got {penalty!r}")
        Q = problem.G + lam                                       # sᵀ(G + λ 11ᵀ)s
        Q[np.diag_indices(n)] -= 2.0 * problem.b + 2.0 * lam * k
        bqm = dimod.BinaryQuadraticModel(Q, "BINARY", offset=problem.yy + lam * k * k)
        return bqm, {"mode": mode, "penalty": lam, "k": int(k)}
    Q = problem.G.copy()
    Q[np.diag_indices(n)] -= 2.0 * problem.b
    objective = dimod.BinaryQuadraticModel(Q, "BINARY", offset=problem.yy)
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(objective)
    cqm.add_constraint_from_iterable([(i, 1.0) for i in range(n)], "==", rhs=int(k), label="keep")
    lam = None if penalty == "safe" else float(penalty)
    bqm, _ = dimod.cqm_to_bqm(cqm, lagrange_multiplier=lam)
    if lam is None:     # dimod's default, recovered from the quadratic bias it added between two channels
        lam = float(bqm.get_quadratic(0, 1) - 2.0 * problem.G[0, 1]) / 2.0 if n > 1 else float("nan")
    return bqm, {"mode": mode, "penalty": lam, "k": int(k)}


def refit_weights(stats: ChannelStats, weight: torch.Tensor, mask: np.ndarray | torch.Tensor,
                  damping: float = 1e-8) -> torch.Tensor:
    """Least-squares weights of the kept channels: argmin ‖Σ_{i kept} W'_i * X_i − Y‖².

    Solves (H_KK + δ I) W'ᵀ = R_K with δ = ``damping`` × mean diag(H_KK) (a numerical floor for
    dead channels). Returns a weight of ``weight``'s shape and dtype, zero on pruned channels.
    The per-output-channel scale of :func:`pruning_problem` does not change this optimum.
    """
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool).reshape(-1)
    n, K = stats.n, stats.K
    if mask.shape[0] != n:
        raise QuboNNError(f"expected a mask of length {n}, got {mask.shape[0]}")
    Wm = _as_matrix(weight)
    rows = torch.repeat_interleave(mask, K).to(stats.H.device)
    new = torch.zeros(Wm.shape, dtype=torch.float64, device=stats.H.device)
    if bool(mask.any()):
        Hk = stats.H[rows][:, rows]
        d = damping_mu(Hk.diagonal().clamp_min(1e-300), float(damping))
        Hk = Hk + d * torch.eye(Hk.shape[0], dtype=torch.float64, device=Hk.device)
        sol = torch.linalg.solve(Hk, stats.R[rows])               # (kK, C_out)
        new[:, rows] = sol.T
    return new.to(weight.device, weight.dtype).reshape(weight.shape)


def refit_error(stats: ChannelStats, new_weight: torch.Tensor, out_scale: torch.Tensor | None = None) -> float:
    """‖diag(out_scale)(W' x − y)‖² summed, from H, R, yy (the error after a refit, same units as E)."""
    Wm = _as_matrix(new_weight).to(stats.H.device, torch.float64)
    quad = ((Wm @ stats.H) * Wm).sum(1)                            # per output channel
    lin = (Wm * stats.R.T).sum(1)
    per = quad - 2.0 * lin + stats.yy
    if out_scale is not None:
        sc = out_scale.to(per.device, torch.float64).reshape(-1)
        per = per * sc * sc
    return float(per.sum())
