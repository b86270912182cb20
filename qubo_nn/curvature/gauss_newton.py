"""Gauss–Newton local model of a network's mean cross-entropy in a parameter vector θ.

For logits z_n(θ) ∈ R^C of sample n (a function ``logits_fn(θ, *inputs)`` that treats samples
independently, e.g. the tail of a network in eval mode with the frozen rest's activations
cached), p_n = softmax(z_n) and L(θ) = (1/N) Σ_n CE(z_n, y_n):

    g = (1/N) Σ_n J_nᵀ (p_n − e_{y_n})                         (the exact gradient)
    G = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n                (the Gauss–Newton matrix, PSD)
      = (1/N) Σ_n Σ_k p_nk (J_nk − J̄_n)(J_nk − J̄_n)ᵀ,  J̄_n = Σ_k p_nk J_nk,

with J_n = ∂z_n/∂θ (C × P) computed per sample by ``torch.func`` (``vmap`` over samples of
``jacrev``: C reverse passes per chunk of samples). G is the Hessian of the cross-entropy of the
*linearized* logits z_n(θ0) + J_n Δ: it drops the network's own second derivatives, so the local
model L0 + gᵀΔ + ½ ΔᵀGΔ is exact to first order, and to second order wherever the logits are
affine in θ (e.g. the γ/β of a BN followed only by piecewise-linear layers, off ReLU kinks).
G is never indefinite, which the QUBO's trust region needs.

``hessian_rows`` restricts G (not g, L0) to a subset of the samples (the mean over that subset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.core.model import LocalModel


@dataclass
class GaussNewtonModel:
    """L(θ0 + Δ) ≈ L0 + gᵀΔ + ½ ΔᵀGΔ over all P parameters (G float64, P × P)."""

    theta0: torch.Tensor
    L0: float
    g: torch.Tensor
    G: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def P(self) -> int:
        return int(self.theta0.numel())

    def predict(self, delta: torch.Tensor) -> torch.Tensor:
        """Model loss at θ0 + Δ for Δ (P,) or (S, P)."""
        d = delta.to(self.G.dtype)
        return self.L0 + d @ self.g.to(self.G.dtype) + 0.5 * ((d @ self.G) * d).sum(-1)

    def block(self, idx: torch.Tensor, shift: torch.Tensor | None = None) -> LocalModel:
        """The model as a function of the entries ``idx`` alone, at the point θ0 + ``shift``.

        With s = ``shift`` (P,; default 0; other blocks' steps already taken), the model of
        L(θ0 + s + E Δ_b) for a step Δ_b on ``idx`` is L(s) + (g + G s)[idx]ᵀ Δ_b + ½ Δ_bᵀ G[idx, idx] Δ_b,
        returned as a :class:`LocalModel` (``theta0`` = the block's values at θ0 + s, ``L0`` = the
        model's value at s), so every QUBO built from it has energy = this model's loss.
        """
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.P:
            raise QuboNNError(f"expected a non-empty block of indices in [0, {self.P}), got {idx.tolist()[:8]}")
        s = torch.zeros(self.P, dtype=self.G.dtype) if shift is None else shift.to(self.G.dtype).reshape(-1)
        if s.numel() != self.P:
            raise QuboNNError(f"expected a shift of {self.P} entries, got {s.numel()}")
        gs = self.g.to(self.G.dtype) + self.G @ s
        return LocalModel(idx=idx, g=gs[idx].clone(), H=self.G[idx][:, idx].clone(), L0=float(self.predict(s)),
                          theta0=(self.theta0.to(self.G.dtype) + s)[idx].clone())


def gauss_newton(logits_fn: Callable[..., torch.Tensor], theta: torch.Tensor, inputs: Sequence[torch.Tensor],
                 labels: torch.Tensor, *, batch_size: int = 256, hessian_rows: torch.Tensor | None = None,
                 accumulate_dtype: torch.dtype = torch.float64) -> GaussNewtonModel:
    """Loss, gradient and Gauss–Newton matrix of the mean cross-entropy at ``theta`` (P,).

    ``logits_fn(theta, *batch)`` maps a batch of ``inputs`` (tensors with the samples along dim 0)
    to logits (B × C) and must not mix samples. ``hessian_rows``: sample indices for G (default
    all). Chunks of ``batch_size`` samples bound memory to O(batch_size·C·P + P²).
    """
    from torch.func import jacrev, vmap

    theta = theta.detach()
    if theta.ndim != 1:
        raise QuboNNError(f"expected a flat parameter vector, got shape {tuple(theta.shape)}")
    N = int(labels.shape[0])
    if N == 0 or any(int(x.shape[0]) != N for x in inputs):
        raise QuboNNError(f"expected every input with the {N} samples of the labels along dim 0, "
                          f"got {[tuple(x.shape) for x in inputs]}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise QuboNNError(f"batch_size must be a positive integer, got {batch_size!r}")
    labels = labels.long()

    def single(th, *xs):
        return logits_fn(th, *(x.unsqueeze(0) for x in xs))[0]

    per_sample_jac = vmap(jacrev(single), in_dims=(None,) + (0,) * len(inputs))
    P = theta.numel()
    G = torch.zeros(P, P, dtype=accumulate_dtype, device=theta.device)
    g = torch.zeros(P, dtype=accumulate_dtype, device=theta.device)
    loss = 0.0
    rows = torch.arange(N) if hessian_rows is None else torch.as_tensor(hessian_rows, dtype=torch.long).reshape(-1)
    if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= N:
        raise QuboNNError(f"expected hessian_rows in [0, {N}), got {rows.numel()} rows")
    full = hessian_rows is None
    # the gradient and loss over all samples (from J when G uses every sample: no extra pass)
    if not full:
        for i in range(0, N, batch_size):
            xs = [x[i:i + batch_size] for x in inputs]
            th = theta.clone().requires_grad_(True)
            ce = torch.nn.functional.cross_entropy(logits_fn(th, *xs), labels[i:i + batch_size], reduction="sum")
            (gr,) = torch.autograd.grad(ce, th)
            g += gr.to(accumulate_dtype)
            loss += float(ce.detach())
    for i in range(0, rows.numel(), batch_size):
        r = rows[i:i + batch_size].to(labels.device)
        xs = [x[r] for x in inputs]
        with torch.no_grad():
            z = logits_fn(theta, *xs)
        J = per_sample_jac(theta, *xs)                       # (B, C, P)
        p = torch.softmax(z.to(J.dtype), dim=1)              # (B, C)
        Jbar = torch.einsum("bc,bcp->bp", p, J)
        M = p.sqrt()[:, :, None] * (J - Jbar[:, None, :])    # Σ_k M_k M_kᵀ = Jᵀ(diag p − ppᵀ)J
        M = M.reshape(-1, P)
        G += (M.T @ M).to(accumulate_dtype)
        if full:
            y = labels[r]
            resid = p.clone()
            resid[torch.arange(len(y)), y] -= 1
            g += torch.einsum("bc,bcp->p", resid, J).to(accumulate_dtype)
            loss += float(torch.nn.functional.cross_entropy(z, y, reduction="sum"))
    G /= rows.numel()
    G = 0.5 * (G + G.T)
    return GaussNewtonModel(theta0=theta.clone(), L0=loss / N, g=g / N, G=G,
                            info={"samples": N, "hessian_samples": int(rows.numel()), "params": P})
