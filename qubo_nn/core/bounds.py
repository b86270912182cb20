"""Certified lower bounds on min E(k) of an :class:`IntegerProblem` over its integer box."""
from __future__ import annotations

import numpy as np

from qubo_nn.core.problem import IntegerProblem


def box_lower_bound(p: IntegerProblem, shift: bool = True, max_iter: int = 5000) -> dict:
    """A certified lower bound on min E over the integer box (moved from ``benchmarks/bench_samplers.py``).

    With A = diag(s) H diag(s) and c = t/s, E(k) = const + ½(k − c)ᵀA(k − c). For the set T of
    two-level variables (kmax − kmin = 1; every weight of a binary row) φ(k) = Σ_{i∈T}(k_i − kmin_i)
    (k_i − kmax_i) is 0 on the grid, so E = f_d := E − ½d·φ there for any d; for d ≤ λ_min(A), f_d is
    convex and its minimum over the real box is a lower bound (d = 0: the plain box relaxation; d > 0:
    the eigenvalue / "SDP-style" diagonal shift, tighter on ±1 problems). Each convex relaxation is solved
    by L-BFGS-B and certified by its first-order gap: for any k̂ in the box, f_d(k) ≥ f_d(k̂) +
    Σ_i min(∇_i (kmin_i − k̂_i), ∇_i (kmax_i − k̂_i)), however roughly L-BFGS-B converged. The best
    bound over d ∈ {0} ∪ {½, 0.9, 0.999}·λ_min(A) (the latter only when T is not empty) is returned.

    Returns {"lower_bound", "relaxation" (f_d at the relaxed minimiser), "shift" (the d used),
    "relaxation_integral_fraction", "iterations"}.
    """
    from scipy.optimize import minimize

    A = p.scale[:, None] * p.H * p.scale[None, :]
    A = 0.5 * (A + A.T)
    c = p.target / p.scale
    lo, hi = p.kmin.astype(np.float64), p.kmax.astype(np.float64)
    T = ((p.kmax - p.kmin) == 1).astype(np.float64)
    shifts = [0.0]
    if shift and T.any():
        lam = float(np.linalg.eigvalsh(A)[0])
        if lam > 0:
            shifts += [f * lam for f in (0.5, 0.9, 0.999)]
    best = None
    for d in shifts:
        def f(k, d=d):
            r = k - c
            return p.const + 0.5 * float(r @ A @ r) - 0.5 * d * float((T * (k - lo) * (k - hi)).sum())

        def g(k, d=d):
            return A @ (k - c) - 0.5 * d * T * (2 * k - lo - hi)

        res = minimize(f, np.clip(c, lo, hi), jac=g, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                       options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-14})
        k = np.clip(res.x, lo, hi)
        grad = g(k)
        lb = f(k) + float(np.minimum(grad * (lo - k), grad * (hi - k)).sum())
        if best is None or lb > best["lower_bound"]:
            at_level = np.isclose(k, np.round(k), rtol=0, atol=1e-6)
            best = {"lower_bound": lb, "relaxation": f(k), "shift": d,
                    "relaxation_integral_fraction": float(at_level.mean()), "iterations": int(res.nit)}
    return best
