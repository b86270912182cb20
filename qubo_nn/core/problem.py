"""The integer problem of a block, E(k) = const + ½(s∘k − t)ᵀH(s∘k − t), and its BQM form."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qubo_nn.core.grid import (
    bits_of,
    check_bits,
    check_encoding,
    digit_weights,
    levels_of,
    WindowShape,
)
from qubo_nn.errors import QuboNNError


@dataclass
class IntegerProblem:
    """E(k) = const + ½ (s∘k − t)ᵀ H (s∘k − t), k integer in [kmin, kmax] (all arrays float64/int64).

    ``H`` (m × m) positive definite with damping included, ``target`` t (m,) in weight units,
    ``scale`` s (m,) > 0, ``kmin``/``kmax`` (m,) ints with kmin ≤ kmax.
    """

    H: np.ndarray
    target: np.ndarray
    scale: np.ndarray
    kmin: np.ndarray
    kmax: np.ndarray
    const: float = 0.0

    def __post_init__(self) -> None:
        self.H = np.asarray(self.H, dtype=np.float64)
        m = self.H.shape[0] if self.H.ndim == 2 else -1
        if self.H.ndim != 2 or self.H.shape != (m, m):
            raise QuboNNError(f"H must be a square matrix, got shape {self.H.shape}")
        self.target = np.asarray(self.target, dtype=np.float64).reshape(-1)
        self.scale = np.broadcast_to(np.asarray(self.scale, dtype=np.float64), (m,)).copy()
        self.kmin = np.broadcast_to(np.asarray(self.kmin), (m,)).astype(np.int64)
        self.kmax = np.broadcast_to(np.asarray(self.kmax), (m,)).astype(np.int64)
        if self.target.shape != (m,):
            raise QuboNNError(f"target must have shape ({m},), got {self.target.shape}")
        if not (np.isfinite(self.H).all() and np.isfinite(self.target).all()):
            raise QuboNNError("H and target must be finite, got NaN/Inf")
        if not (np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise QuboNNError("scale must be positive and finite, got a value <= 0 or NaN/Inf")
        if (self.kmin > self.kmax).any():
            raise QuboNNError("kmin must be <= kmax for every variable, got kmin > kmax")
        self.const = float(self.const)

    @property
    def m(self) -> int:
        return int(self.target.shape[0])

    def residual(self, k) -> np.ndarray:
        return self.scale * np.asarray(k, dtype=np.float64) - self.target

    def energy(self, k) -> float | np.ndarray:
        """E(k) for k (m,) (a float) or (S, m) (an array (S,))."""
        r = self.residual(k)
        if r.ndim == 1:
            return self.const + 0.5 * float(r @ self.H @ r)
        return self.const + 0.5 * np.einsum("si,ij,sj->s", r, self.H, r)

    def clip(self, k) -> np.ndarray:
        return np.clip(np.asarray(k), self.kmin, self.kmax).astype(np.int64)

    def feasible(self, k) -> bool:
        k = np.asarray(k)
        return bool(np.all(k >= self.kmin) and np.all(k <= self.kmax) and np.all(k == np.round(k)))

    def sub(self, order: np.ndarray) -> "IntegerProblem":
        """The same problem with its variables permuted by ``order``."""
        return IntegerProblem(self.H[np.ix_(order, order)], self.target[order], self.scale[order],
                              self.kmin[order], self.kmax[order], self.const)


def _cholesky(A: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError as exc:
        raise QuboNNError(f"{what} is not positive definite (Cholesky failed): expected a PD matrix; "
                          "raise the damping") from exc


def solve_pd(A: np.ndarray, b: np.ndarray, what: str = "the damped block Hessian") -> np.ndarray:
    """A⁻¹b for a positive definite A by its Cholesky factor (QuboNNError naming ``what`` when A is
    not PD): the damped Newton step H̃⁻¹g of a block's gradient term."""
    L = _cholesky(A, what)
    return np.linalg.solve(L.T, np.linalg.solve(L, b))


def newton_target(H: np.ndarray, g: np.ndarray, theta0: np.ndarray,
                  what: str = "the damped block Hessian") -> tuple[np.ndarray, float]:
    """The damped Newton target t = θ0 − H̃⁻¹g and the model's drop ½ gᵀH̃⁻¹g (``H`` = H̃, damping
    included, PD), so that L0 + gᵀΔ + ½ΔᵀH̃Δ = (L0 − drop) + ½ (w − t)ᵀH̃(w − t) with w = θ0 + Δ:
    the one place a gradient term becomes an :class:`IntegerProblem` target and constant."""
    Hinv_g = solve_pd(H, g, what)
    return theta0 - Hinv_g, 0.5 * float(g @ Hinv_g)


@dataclass
class IntegerForm(WindowShape):
    """How a block's BQM encodes an :class:`IntegerProblem`: variables (m·width) ↔ levels k (m).

    k_i = Σ_j d_j x_ij (``kind``'s digits, windows of 2^bits levels starting at 0), and
    bqm.energy(x) = problem.energy(k(x)) (+ the domain-wall penalty, zero on thermometer codes).
    Built by ``qubo_nn.core.bqm.integer_form(model, enc, damping)``; samplers that work in level space
    take it as their ``integer_form`` parameter.
    """

    problem: IntegerProblem
    kind: str
    bits: int

    def __post_init__(self) -> None:
        self.kind = check_encoding(self.kind)
        self.bits = int(self.bits)   # checked at the boundary (configs, :meth:`from_arrays`)

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @property
    def m(self) -> int:
        return self.problem.m

    def to_levels(self, x) -> np.ndarray:
        return levels_of(x, np.zeros(self.problem.m, dtype=np.int64), self.kind, self.levels)

    def to_bits(self, k) -> np.ndarray:
        return bits_of(k, np.zeros(self.problem.m, dtype=np.int64), self.kind, self.levels)

    def arrays(self) -> dict[str, np.ndarray]:
        """The form as NumPy arrays (a build's ``block_NNNNN.levels.npz``, a Ray task): H (m × m),
        target, scale, kmin, kmax (m,), const, kind, bits (0-d). Inverse: :meth:`from_arrays`."""
        p = self.problem
        return {"H": p.H, "target": p.target, "scale": p.scale, "kmin": p.kmin, "kmax": p.kmax,
                "const": np.asarray(p.const), "kind": np.asarray(self.kind), "bits": np.asarray(self.bits)}

    @classmethod
    def from_arrays(cls, arrs) -> "IntegerForm":
        """The form of :meth:`arrays`' output (checked as a new form; missing keys -> QuboNNError)."""
        missing = [k for k in ("H", "target", "scale", "kmin", "kmax", "const", "kind", "bits") if k not in arrs]
        if missing:
            raise QuboNNError(f"integer form arrays lack {missing}: expected the output of IntegerForm.arrays()")
        p = IntegerProblem(arrs["H"], arrs["target"], arrs["scale"], arrs["kmin"], arrs["kmax"],
                           float(np.asarray(arrs["const"])))
        return cls(p, str(np.asarray(arrs["kind"])), check_bits(int(np.asarray(arrs["bits"]))))




def window_base(p: IntegerProblem, center: np.ndarray, levels: int) -> np.ndarray:
    """Lowest level of a window of ``levels`` levels per variable, centred on ``center`` and shifted
    into the box (the window covers the whole box when the box is smaller)."""
    span = levels - 1
    base = np.asarray(center, dtype=np.int64) - span // 2
    return np.maximum(np.minimum(base, p.kmax - span), p.kmin)


def window_qubo(p: IntegerProblem, base: np.ndarray, kind: str, levels: int,
                penalty: float | None = None) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Dense QUBO of k = base + Σ_j d_j x_ij (``kind``'s digits, windows of ``levels`` levels):
    :func:`bit_qubo` of E around k = base (gradient H(s∘base − t), offset E(base)).

    Returns (Q symmetric with zero diagonal (n × n), linear (n,), offset, digits d) with
    energy(x) = Σ lin x + Σ_{i<j} 2·Q_ij x_i x_j + offset = E(base + D x) (+ the domain-wall penalty).
    Levels above kmax inside a window are allowed by the bits; callers clip the window to the box.
    """
    d = digit_weights(kind, levels)
    Q, lin, _ = bit_qubo(p.H, p.H @ p.residual(base), 0.0, p.scale, d, kind, penalty)
    return Q, lin, p.energy(base), d


def bit_qubo(H: np.ndarray, grad: np.ndarray, offset: float, step: np.ndarray, digits: np.ndarray, kind: str,
             penalty: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """The one QUBO builder: E(Δ) = offset + gradᵀΔ + ½ ΔᵀHΔ over bits, Δ_i = step_i · Σ_j d_j x_ij.

    ``H`` (m × m, damping included), ``grad`` (m,) the gradient at x = 0, ``step`` (m,), ``digits`` d
    (width,); variable j of weight i is i·width + j. With a = step ⊗ d: Q = ½ a_p H_pq a_q (x² = x puts
    its diagonal into the linear term), lin = a ∘ grad + diag Q. Returns (Q symmetric with zero
    diagonal (n × n), lin (n,), offset), energy(x) = Σ lin x + Σ_{i<j} 2·Q_ij x_i x_j + offset, in
    ``H``'s dtype; for ``domain-wall`` plus P·Σ x_{i,j+1}(1 − x_ij) (:func:`add_domain_wall`, P =
    ``penalty`` or :func:`domain_wall_penalty` of ``step`` and diag H). Used by the level windows
    (:func:`window_qubo`) and the head's blocks (:func:`qubo_nn.core.bqm.qubo_arrays`).
    """
    m, w = step.shape[0], digits.size
    a = (step[:, None] * digits.astype(step.dtype)[None, :]).reshape(-1)   # weight change per bit
    owner = np.repeat(np.arange(m), w)
    Q = 0.5 * a[:, None] * H[np.ix_(owner, owner)] * a[None, :]
    lin = a * grad[owner] + np.diag(Q).copy()
    np.fill_diagonal(Q, 0.0)
    if kind == "domain-wall":
        add_domain_wall(Q, lin, m, w, domain_wall_penalty(step, np.diag(H)) if penalty is None else penalty)
    return Q, lin, offset


def domain_wall_penalty(scale: np.ndarray, hdiag: np.ndarray) -> float:
    """The default domain-wall penalty P: the median one-step energy scale s_i² H_ii (any P ≥ 0 keeps
    the minimum; P only shapes the landscape between thermometer codes)."""
    return float(np.median(np.asarray(scale) ** 2 * np.asarray(hdiag)))


def add_domain_wall(Q: np.ndarray, lin: np.ndarray, m: int, width: int, penalty: float) -> None:
    """Add P·Σ_ij x_{i,j+1}(1 − x_ij) in place to a symmetric (Q, lin) pair whose energy is
    Σ lin x + Σ_{i<j} 2·Q_ij x_i x_j (variables of weight i at i·width + j)."""
    if width < 2:
        return
    i = (np.arange(m)[:, None] * width + np.arange(width - 1)[None, :]).reshape(-1)   # x_ij
    j = i + 1                                                                          # x_i,j+1
    lin[j] += penalty
    Q[i, j] -= 0.5 * penalty
    Q[j, i] -= 0.5 * penalty
