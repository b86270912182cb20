"""Binary and ternary weights (a weight is a spin): grids, per-row scale α, its refit, spin encodings.

A row's objective is E(w) = const + ½(w − t)ᵀH̃(w − t) (H̃ positive definite, damping included,
t the fp32 row or its Newton target). The spin grids are

- ``binary``:  w = α·s, s ∈ {−1, +1}ᵐ (BinaryConnect / XNOR-Net);
- ``ternary``: w = α·c, c ∈ {−1, 0, +1}ᵐ (TWN, BitNet b1.58),

one scale α > 0 per row. Both are :class:`IntegerProblem` s, so every level solver (rtn, gptq, cd,
sphere decoding, the annealing pipeline) works unchanged on them (:func:`spin_problem`):

- binary: levels k ∈ {0, 1}, s = 2k − 1, i.e. ``IntegerProblem(H̃, t + α, 2α, 0, 1)`` (s∘k − target
  = 2αk − t − α = αs − t);
- ternary: levels k = c ∈ {−1, 0, 1}, ``IntegerProblem(H̃, t, α, −1, 1)``.

For fixed codes c the best scale is closed form, α* = cᵀH̃t / cᵀH̃c (:func:`refit_alpha`, clipped at
a small positive value); :func:`alternate` alternates a code solver and the refit until the energy
stops falling. The binary row as an Ising model (no encoding overhead): with s_i² = 1,
E(s) = const + ½tᵀH̃t + ½α² tr H̃ − α(H̃t)ᵀs + Σ_{i<j} α²H̃_ij s_i s_j (:func:`binary_ising`).
A ternary weight takes two spins (:func:`ternary_spins`): ``unary`` c = (σ₁ + σ₂)/2 (penalty-free,
0 has two spellings) or ``domain-wall`` (the same, plus P·[σ₁ = −1, σ₂ = +1] so that the spelling is
unique); :data:`TERNARY_ENCODING` is the one measured to anneal better (``benchmarks/bench_spins.py``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qubo_nn.core.grid import check_grid
from qubo_nn.core.problem import IntegerProblem, add_domain_wall, domain_wall_penalty, window_qubo
from qubo_nn.errors import QuboNNError

SPIN_GRIDS = ("binary", "ternary")
TERNARY_ENCODINGS = ("unary", "domain-wall")
#: the ternary encoding of annealed windows: measured in results/bench_spins.txt ("ternary encodings")
TERNARY_ENCODING = "unary"
#: TWN's threshold: |w| > 0.7·mean|w| is ±1, the rest 0 (Li & Liu, Ternary Weight Networks)
TWN_RATIO = 0.7
#: α is clipped at ALPHA_FLOOR·max|t| (or ALPHA_FLOOR when t = 0): a scale stays positive
ALPHA_FLOOR = 1e-8


def check_spin_grid(grid) -> str:
    """``grid`` if it is ``binary`` or ``ternary``, else QuboNNError."""
    grid = check_grid(grid)
    if grid not in SPIN_GRIDS:
        raise QuboNNError(f"expected a spin grid {SPIN_GRIDS}, got {grid!r}")
    return grid


def level_range(grid: str) -> tuple[int, int]:
    """(kmin, kmax) of a spin grid's levels: binary (0, 1) (s = 2k − 1), ternary (−1, 1) (c = k)."""
    return (0, 1) if check_spin_grid(grid) == "binary" else (-1, 1)


def alpha_floor(t: np.ndarray) -> float:
    a = float(np.abs(t).max(initial=0.0))
    return ALPHA_FLOOR * a if a > 0 else ALPHA_FLOOR


def init_alpha(t: np.ndarray, grid: str) -> float:
    """The usual closed-form start: binary α = mean|t| (XNOR-Net: argmin_α ‖α·sign t − t‖²); ternary
    TWN: Δ = 0.7·mean|t|, α = mean of |t_i| over |t_i| > Δ (mean|t| when no entry passes)."""
    t = np.abs(np.asarray(t, dtype=np.float64))
    a = float(t.mean()) if t.size else 0.0
    if check_spin_grid(grid) == "ternary":
        big = t > TWN_RATIO * a
        a = float(t[big].mean()) if big.any() else a
    return max(a, alpha_floor(t))


def twn_codes(t: np.ndarray, grid: str) -> np.ndarray:
    """Codes of the threshold rules: binary sign(t) (+1 at 0); ternary TWN's sign(t)·[|t| > 0.7·mean|t|]."""
    t = np.asarray(t, dtype=np.float64)
    s = np.where(t >= 0, 1, -1).astype(np.int64)
    if check_spin_grid(grid) == "ternary":
        s = s * (np.abs(t) > TWN_RATIO * np.abs(t).mean()).astype(np.int64)
    return s


def spin_problem(H: np.ndarray, t: np.ndarray, alpha: float, grid: str, const: float = 0.0) -> IntegerProblem:
    """The row at scale α as an :class:`IntegerProblem` in levels (see the module docstring):
    ``problem.energy(levels_of_codes(c, grid)) == row_energy(H, t, α, c, const)``."""
    t = np.asarray(t, dtype=np.float64)
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), t.shape)   # one α, or one per variable (blocks of rows)
    if check_spin_grid(grid) == "binary":
        return IntegerProblem(H, t + a, 2.0 * a, 0, 1, const)
    return IntegerProblem(H, t, a.copy(), -1, 1, const)


def codes_of_levels(k: np.ndarray, grid: str) -> np.ndarray:
    """Codes (binary ±1, ternary −1/0/+1) of levels k of :func:`spin_problem`."""
    k = np.asarray(k, dtype=np.int64)
    return 2 * k - 1 if check_spin_grid(grid) == "binary" else k.copy()


def levels_of_codes(c: np.ndarray, grid: str) -> np.ndarray:
    c = np.asarray(c, dtype=np.int64)
    return (c + 1) // 2 if check_spin_grid(grid) == "binary" else c.copy()


def row_energy(H: np.ndarray, t: np.ndarray, alpha: float, codes: np.ndarray, const: float = 0.0) -> float:
    """E = const + ½(α c − t)ᵀH(α c − t)."""
    r = alpha * np.asarray(codes, dtype=np.float64) - t
    return float(const + 0.5 * r @ H @ r)


def refit_alpha(H: np.ndarray, t: np.ndarray, codes: np.ndarray, alpha: float | None = None) -> float:
    """α* = cᵀHt / cᵀHc, the minimiser of E over α > 0 for fixed codes c, clipped at
    :func:`alpha_floor`; ``alpha`` (or the floor) when c = 0 (E does not depend on α then)."""
    c = np.asarray(codes, dtype=np.float64)
    Hc = H @ c
    den = float(c @ Hc)
    lo = alpha_floor(t)
    if den <= 0:
        return lo if alpha is None else float(alpha)
    return max(float(Hc @ t) / den, lo)


def alternate(H: np.ndarray, t: np.ndarray, grid: str, solve: Callable[[IntegerProblem, np.ndarray | None], np.ndarray],
              alpha0: float | None = None, const: float = 0.0, max_iter: int = 20, rtol: float = 1e-10
              ) -> tuple[np.ndarray, float, dict]:
    """Alternate codes ↔ α: codes = solve(spin_problem(α), previous levels or None), then α = α*(codes),
    until E stops falling (relative decrease ≤ ``rtol``) or ``max_iter`` code solves.

    Returns (codes (m,) int64, α, info {"alpha0", "energies" (after each refit), "iterations"}); the
    lowest-energy (codes, α) seen is returned (a non-monotone solver such as GPTQ cannot make it worse).
    """
    t = np.asarray(t, dtype=np.float64)
    alpha = init_alpha(t, grid) if alpha0 is None else float(alpha0)
    best = (None, alpha, np.inf)
    energies, k = [], None
    for _ in range(max(int(max_iter), 1)):
        k = np.asarray(solve(spin_problem(H, t, alpha, grid, const), k), dtype=np.int64)
        c = codes_of_levels(k, grid)
        alpha = refit_alpha(H, t, c, alpha)
        e = row_energy(H, t, alpha, c, const)
        energies.append(e)
        if e < best[2]:
            falls = best[2] - e > rtol * max(abs(e), 1e-300)
            best = (c, alpha, e)
            if not falls:
                break
        else:
            break
    return best[0], float(best[1]), {"alpha0": float(alpha0 if alpha0 is not None else init_alpha(t, grid)),
                                     "energies": energies, "iterations": len(energies)}


def binary_ising(H: np.ndarray, t: np.ndarray, alpha: float, const: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """The binary row as an Ising model: (h (m,), J (m × m, upper triangle, zero diagonal), offset) with
    E(s) = offset + hᵀs + Σ_{i<j} J_ij s_i s_j for every s ∈ {−1, +1}ᵐ."""
    t = np.asarray(t, dtype=np.float64)
    h = -alpha * (H @ t)
    J = np.triu(alpha * alpha * (H + H.T) / 2.0, 1)
    offset = const + 0.5 * float(t @ H @ t) + 0.5 * alpha * alpha * float(np.trace(H))
    return h, J, offset


def spin_bqm(H: np.ndarray, t: np.ndarray, alpha: float, grid: str, const: float = 0.0,
             encoding: str = TERNARY_ENCODING):
    """The row at scale α as a dimod BQM whose energy is the row's E (loss units, offset included).

    binary: SPIN, one variable per weight (s_i); ternary: SPIN, two per weight (variables 2i, 2i+1,
    ``encoding`` of :func:`ternary_spins`; domain-wall adds its penalty, zero on valid spellings)."""
    import dimod

    if check_spin_grid(grid) == "binary":
        h, J, offset = binary_ising(H, t, alpha, const)
        bqm = dimod.BinaryQuadraticModel("SPIN")
        bqm.add_linear_from_array(h)
        bqm.add_quadratic_from_dense(J)
        bqm.offset = offset
        return bqm
    if encoding not in TERNARY_ENCODINGS:
        raise QuboNNError(f"expected a ternary encoding {TERNARY_ENCODINGS}, got {encoding!r}")
    p = spin_problem(H, t, alpha, grid, const)
    Q, lin, offset, _ = window_qubo(p, p.kmin.copy(), "unary", 3)     # k = −1 + x_i0 + x_i1
    if encoding == "domain-wall":
        add_domain_wall(Q, lin, p.m, 2, domain_wall_penalty(p.scale, np.diag(p.H)))
    bqm = dimod.BinaryQuadraticModel("BINARY")
    bqm.add_linear_from_array(lin)
    bqm.add_quadratic_from_dense(Q)
    bqm.offset = offset
    bqm.change_vartype("SPIN", inplace=True)
    return bqm


def ternary_spins(codes: np.ndarray, encoding: str = TERNARY_ENCODING) -> np.ndarray:
    """Two spins per ternary weight (…, 2m), weight i at (2i, 2i+1): +1 → (+1, +1), −1 → (−1, −1),
    0 → (+1, −1) (the thermometer spelling x = (1, 0), valid in both encodings)."""
    if encoding not in TERNARY_ENCODINGS:
        raise QuboNNError(f"expected a ternary encoding {TERNARY_ENCODINGS}, got {encoding!r}")
    c = np.asarray(codes, dtype=np.int64)
    s1 = np.where(c >= 0, 1, -1)
    s2 = np.where(c > 0, 1, -1)
    return np.stack([s1, s2], -1).reshape(*c.shape[:-1], -1).astype(np.int8)


def ternary_from_spins(sigma: np.ndarray) -> np.ndarray:
    """Codes c = (σ_2i + σ_2i+1)/2 of two spins per weight (either encoding; (−1, +1) reads 0)."""
    s = np.asarray(sigma, dtype=np.int64)
    s = s.reshape(*s.shape[:-1], -1, 2)
    return (s.sum(-1) // 2).astype(np.int64)
