"""Certified lower bounds on min E(k) of an :class:`IntegerProblem` over its integer box.

One implementation for the benchmarks, the spins bench and the nnqubo suite (it replaces the copies in
``benchmarks/bench_samplers.py`` and ``suite/reference.py``). In k-space, with A = diag(s) H diag(s) and
c = t/s, E(k) = const + ½(k − c)ᵀA(k − c).

- **Box relaxation** (d = 0): the convex minimum of E over the real box [kmin, kmax].
- **Diagonal shift** (the eigenvalue / QCR idea): for integers a_i, (k_i − a_i)(k_i − a_i − 1) ≥ 0 at
  every integer k_i, so for any d ≥ 0 with A − diag(d) ⪰ 0
      E(k) ≥ E_d(k) := E(k) − ½ Σ_i d_i (k_i − a_i)(k_i − a_i − 1)   at every integer k,
  and E_d is convex: its box minimum bounds min E. a_i = ⌊k̂_i⌋ of the box minimiser k̂ (clipped to
  [kmin_i, kmax_i − 1]; on two-level variables E_d = E on the grid, the classical ±1 shift). The
  shift is d = θ·t·w, t the largest with A − diag(t·w) ⪰ 0 (:func:`_largest_shift`), θ = 0.999 (the
  slack keeps E_d numerically convex), for three weightings w: 1 (λ_min(A)), diag(A), and
  1/diag(A⁻¹) (each variable's curvature once the others are minimised out).

On the nnqubo-v1 rows the shifts help little (a few points of gap on 2- and 4-bit rows): A is
ill-conditioned, so t is small; the 1-bit head rows are the ones certified (their relaxation is
nearly integral). Tried and dropped: dwave-preprocessing's roof duality (bounds far below zero on
these dense rows) and a multiplicative ascent on w (1–2 points more at twice the time).

Every convex minimum is certified by its first-order gap (:func:`convex_box_min`), so a bound holds
however roughly L-BFGS-B converged. The largest bound is returned. (Run with one BLAS thread on a
shared machine: at m ≈ 1000 oversubscribed threads made one bound take minutes instead of seconds.)
"""
from __future__ import annotations

import numpy as np

from qubo_nn.core.problem import IntegerProblem

#: the fraction of the largest feasible shift that is used (E_d stays convex under round-off)
SHIFT_FRACTION = 0.999


def convex_box_min(M: np.ndarray, b: np.ndarray, const: float, lo: np.ndarray, hi: np.ndarray,
                   max_iter: int = 5000, x0: np.ndarray | None = None) -> tuple[float, np.ndarray, int]:
    """A certified lower bound on min f over the box [lo, hi], f(k) = const + ½kᵀMk − bᵀk (M ⪰ 0).

    An approximate minimiser k̂ by L-BFGS-B (at most ``max_iter`` iterations, from ``x0`` or the
    clipped unconstrained minimum), then by convexity, for every k in the box,
    f(k) ≥ f(k̂) + Σ_i min(∇_i (lo_i − k̂_i), ∇_i (hi_i − k̂_i)). Returns (bound, k̂, iterations).
    """
    from scipy.optimize import minimize

    def f(k):
        return const + 0.5 * float(k @ M @ k) - float(b @ k)

    if x0 is None:
        x0 = np.linalg.lstsq(M, b, rcond=None)[0] if M.shape[0] <= 64 else np.zeros_like(b)
    res = minimize(f, np.clip(x0, lo, hi), jac=lambda k: M @ k - b, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                   options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-14})
    k = np.clip(res.x, lo, hi)
    grad = M @ k - b
    return f(k) + float(np.minimum(grad * (lo - k), grad * (hi - k)).sum()), k, int(res.nit)


def _shifted(A: np.ndarray, c: np.ndarray, const: float, a: np.ndarray, d: np.ndarray):
    """(M, b, const') of E_d(k) = const + ½(k − c)ᵀA(k − c) − ½ Σ d_i (k_i − a_i)(k_i − a_i − 1)
    written as const' + ½kᵀMk − bᵀk."""
    M = A - np.diag(d)
    b = A @ c - 0.5 * d * (2 * a + 1)
    return M, b, const + 0.5 * float(c @ A @ c) - 0.5 * float((d * a * (a + 1)).sum())


def _largest_shift(A: np.ndarray, w: np.ndarray) -> float:
    """The largest t ≥ 0 with A − t·diag(w) ⪰ 0 (w > 0): λ_min(W^-½ A W^-½), clipped at 0."""
    r = 1.0 / np.sqrt(w)
    return max(float(np.linalg.eigvalsh(r[:, None] * A * r[None, :])[0]), 0.0)


def box_lower_bound(p: IntegerProblem, shift: bool = True, max_iter: int = 5000) -> dict:
    """The best certified lower bound on min E over the integer box (module docstring).

    Returns {"lower_bound", "method", "relaxation" (f at the relaxed minimiser of the winning
    relaxation), "shift" (0 for the plain box; else the largest d_i used), "box_lower_bound" (d = 0),
    "relaxation_integral_fraction" (share of the plain relaxation's minimiser at a level), "iterations"}.
    """
    A = p.scale[:, None] * p.H * p.scale[None, :]
    A = 0.5 * (A + A.T)
    c = p.target / p.scale
    lo, hi = p.kmin.astype(np.float64), p.kmax.astype(np.float64)
    M, b, const = _shifted(A, c, p.const, np.zeros(p.m), np.zeros(p.m))
    lb, k_box, it = convex_box_min(M, b, const, lo, hi, max_iter, x0=np.clip(c, lo, hi))
    at_level = np.isclose(k_box, np.round(k_box), rtol=0, atol=1e-6)
    out = {"lower_bound": lb, "method": "box relaxation (L-BFGS-B minus its first-order gap)",
           "relaxation": const + 0.5 * float(k_box @ M @ k_box) - float(b @ k_box), "shift": 0.0,
           "box_lower_bound": lb, "relaxation_integral_fraction": float(at_level.mean()), "iterations": it}
    if not shift or not (hi > lo).any():
        return out
    a = np.clip(np.floor(k_box), lo, np.maximum(hi - 1, lo))       # fixed variables: a = k, the term is 0
    weights = {"1": np.ones(p.m), "diag(A)": np.diag(A)}
    try:
        weights["1/diag(A⁻¹)"] = 1.0 / np.diag(np.linalg.inv(A))
    except np.linalg.LinAlgError:
        pass
    for name, w in weights.items():
        if not (w > 0).all():
            continue
        d = SHIFT_FRACTION * _largest_shift(A, w) * w
        if not (d > 0).any():
            continue
        M, b, const = _shifted(A, c, p.const, a, d)
        lb, k, it = convex_box_min(M, b, const, lo, hi, max_iter, x0=k_box)
        if lb > out["lower_bound"]:
            out.update(lower_bound=lb, shift=float(d.max()), iterations=it,
                       relaxation=const + 0.5 * float(k @ M @ k) - float(b @ k),
                       method=f"diagonal shift d = {SHIFT_FRACTION}·t·{name} (t largest with A − diag(d) ⪰ 0) at "
                              "a = ⌊box minimiser⌋ (L-BFGS-B minus its first-order gap)")
    return out
