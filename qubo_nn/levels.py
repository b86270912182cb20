"""The integer view of a block: levels k, the PSD quadratic in k, and the solvers that work on it.

A block whose weights lie on a grid w_i = s_i · k_i (k_i integer in [kmin_i, kmax_i]) and whose
objective is a damped local quadratic model has the energy

    E(k) = const + ½ (s∘k − t)ᵀ H (s∘k − t),

with H (m × m) positive definite (damping included) and t the continuous optimum in weight units
(the fp32 weights for GPTQ's objective, the damped Newton target w − H⁻¹g with a gradient). Every
QUBO this project builds over such a block is this function of the levels that its bits encode,
so level-space methods (:func:`rtn`, :func:`gptq`, :func:`coordinate_descent`,
:func:`sphere_decode`) and bit-space samplers are scored on one energy.

Everything here is NumPy float64 and imports neither torch nor dimod at module level (the
``qubo`` method of :func:`solve_levels` imports the samplers when it runs).

Encodings of a level window (``ENCODINGS``): a window of L levels above ``base_i`` is written with
variables x_ij and digit weights d_j, k_i = base_i + Σ_j d_j x_ij:

- ``binary``: d_j = 2^j, ⌈log2 L⌉ variables (L a power of two);
- ``unary`` (thermometer): d_j = 1, L − 1 variables; every bit is worth one step, so a single flip
  always moves one level (many bit patterns per level: a smooth landscape for single flips);
- ``domain-wall``: unary digits plus the penalty P·Σ_j x_{i,j+1}(1 − x_ij), which is zero exactly on
  the thermometer codes (one pattern per level). Every state still decodes by its count, and its
  energy is E(k) plus the penalty, so the minimum is the same as unary's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import QuboNNError

ENCODINGS = ("binary", "unary", "domain-wall")
LEVEL_METHODS = ("rtn", "gptq", "gptq-natural", "cd", "qubo")
MAX_BITS = 16
#: sphere_decode refuses more level variables than this (its search is exponential in the worst case).
MAX_SPHERE_VARIABLES = 40


# ---------------------------------------------------------------- bits and encodings (torch-free)

def check_bits(bits: Any, max_bits: int = MAX_BITS, what: str = "bits per weight") -> int:
    """``bits`` as an int in [1, max_bits], else QuboNNError: the one bits check of the project."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= max_bits:
        raise QuboNNError(f"{what} must be an integer in [1, {max_bits}], got {bits!r}")
    return int(bits)


def check_encoding(kind: Any) -> str:
    if kind not in ENCODINGS:
        raise QuboNNError(f"encoding must be one of {ENCODINGS}, got {kind!r}")
    return str(kind)


def digit_weights(kind: str, levels: int) -> np.ndarray:
    """Digit weights d (width,) of one weight's window of ``levels`` levels (see module docstring)."""
    kind = check_encoding(kind)
    if levels < 2:
        raise QuboNNError(f"a window needs at least 2 levels, got {levels}")
    if kind == "binary":
        width = int(math.ceil(math.log2(levels)))
        if 2 ** width != levels:
            raise QuboNNError(f"a binary encoding needs a power-of-two number of levels, got {levels}")
        return 2.0 ** np.arange(width)
    return np.ones(levels - 1)


def thermometer(k: np.ndarray, width: int) -> np.ndarray:
    """Unary bits (…, m·width) of levels k (…, m) in [0, width]: x_ij = [j < k_i]."""
    k = np.asarray(k)
    x = (np.arange(width) < k[..., None]).astype(np.int8)
    return x.reshape(*k.shape[:-1], -1)


def binary_digits(k: np.ndarray, width: int) -> np.ndarray:
    k = np.asarray(k).astype(np.int64)
    x = ((k[..., None] >> np.arange(width)) & 1).astype(np.int8)
    return x.reshape(*k.shape[:-1], -1)


# ---------------------------------------------------------------- the problem

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


# ---------------------------------------------------------------- kernels

def rtn(p: IntegerProblem) -> np.ndarray:
    """Round to nearest: k = clamp(round(t/s), kmin, kmax)."""
    return p.clip(np.round(p.target / p.scale))


def gptq(p: IntegerProblem, act_order: bool = True) -> np.ndarray:
    """GPTQ's sequential rounding with error feedback (the OBQ update in a fixed order).

    Order: decreasing diag H (``act_order``, the default in GPTQ's own code) or index order. With
    U the upper Cholesky factor of H⁻¹ (in that order): for each d, k_d = clamp(round(x_d/s_d)),
    e = (x_d − s_d k_d)/U_dd, x_{d+1:} −= e·U_{d,d+1:}, starting from x = t.
    """
    m = p.m
    order = np.argsort(-np.diag(p.H), kind="stable") if act_order else np.arange(m)
    Hp = p.H[np.ix_(order, order)]
    L = _cholesky(Hp, "Hessian block")
    Linv = np.linalg.solve(L, np.eye(m))           # H⁻¹ = L⁻ᵀ L⁻¹
    U = _cholesky(Linv.T @ Linv, "inverse Hessian").T  # upper: H⁻¹ = UᵀU
    x = p.target[order].copy()
    s, lo, hi = p.scale[order], p.kmin[order], p.kmax[order]
    k = np.empty(m, dtype=np.int64)
    for d in range(m):  # NumPy: a few µs per weight
        q = min(max(round(x[d] / s[d]), lo[d]), hi[d])
        k[d] = q
        err = (x[d] - s[d] * q) / U[d, d]
        x[d + 1:] -= err * U[d, d + 1:]
    out = np.empty(m, dtype=np.int64)
    out[order] = k
    return out


def coordinate_descent(p: IntegerProblem, k0=None, pairs: bool = True, max_steps: int | None = None
                       ) -> tuple[np.ndarray, dict]:
    """Greedy coordinate descent over integer levels (the CDQuant idea), from ``k0`` (default RTN).

    Single moves: for every i at once, the best integer change δ_i of k_i (the rounded 1-D Newton
    step, clipped to the box) and its gain g_i δ_i + ½ h_i δ_i² (g = s∘H(s∘k − t), h = s²∘diag H);
    the best one is applied and g updated in O(m). When no single move lowers E, pair moves
    (δ_i, δ_j) ∈ {±1}² over all pairs (O(m²), vectorized) are tried; it stops when neither helps.
    Returns (k, info) with the counts of single and pair moves.
    """
    m = p.m
    k = rtn(p) if k0 is None else p.clip(k0)
    s, H = p.scale, p.H
    gk = s * (H @ p.residual(k))
    hk = s * s * np.diag(H)
    S = s[:, None] * H * s[None, :]
    lo, hi = p.kmin, p.kmax
    eps = 1e-13 * max(float(hk.max(initial=0.0)), 1e-300)
    max_steps = 50 * m + 1000 if max_steps is None else int(max_steps)
    singles = pair_moves = 0
    hsafe = np.where(hk > 0, hk, 1.0)
    for _ in range(max_steps):
        delta = np.clip(np.round(-gk / hsafe), lo - k, hi - k)
        gain = gk * delta + 0.5 * hk * delta * delta
        i = int(np.argmin(gain))
        if gain[i] < -eps:
            k[i] += int(delta[i])
            gk += S[:, i] * delta[i]
            singles += 1
            continue
        if not pairs or m < 2:
            break
        best, move = -eps, None
        for di in (-1, 1):
            ok_i = (k + di >= lo) & (k + di <= hi)
            for dj in (-1, 1):
                ok_j = (k + dj >= lo) & (k + dj <= hi)
                G = (di * gk + 0.5 * hk)[:, None] + (dj * gk + 0.5 * hk)[None, :] + di * dj * S
                G[~ok_i, :] = np.inf
                G[:, ~ok_j] = np.inf
                np.fill_diagonal(G, np.inf)
                a = int(np.argmin(G))
                if G.flat[a] < best:
                    best, move = G.flat[a], (a // m, a % m, di, dj)
        if move is None:
            break
        i, j, di, dj = move
        k[i] += di
        k[j] += dj
        gk += S[:, i] * di + S[:, j] * dj
        pair_moves += 1
    return k, {"single_moves": singles, "pair_moves": pair_moves}


def sphere_decode(p: IntegerProblem, k0=None, max_nodes: int = 5_000_000) -> tuple[np.ndarray, dict]:
    """Exact minimiser of E over the integer box: Schnorr–Euchner depth-first branch and bound.

    With A = diag(s) H diag(s) = RᵀR (R upper) and c = t/s, E(k) = const + ½‖R(k − c)‖². Variables
    are fixed from the last to the first; at depth i the conditional centre is
    ĉ_i = c_i − Σ_{j>i} R_ij (k_j − c_j)/R_ii and the cost grows by R_ii² (k_i − ĉ_i)². Candidates
    are visited in order of distance to ĉ_i (zig-zag, clipped to the box), and a branch is cut as
    soon as its partial cost reaches the best complete one (initially ``k0``'s, default the
    coordinate-descent answer). Certified optimal unless ``info["complete"]`` is False (node limit).
    """
    m = p.m
    if m > MAX_SPHERE_VARIABLES:
        raise QuboNNError(f"sphere_decode takes at most {MAX_SPHERE_VARIABLES} level variables, got {m}")
    A = p.scale[:, None] * p.H * p.scale[None, :]
    R = _cholesky(A, "scaled Hessian").T
    c = p.target / p.scale
    if k0 is None:
        k0 = coordinate_descent(p)[0]
    best_k = p.clip(k0)
    z = R @ (best_k - c)
    best = [float(z @ z) * (1 + 1e-12) + 1e-300]
    k = np.zeros(m, dtype=np.int64)
    nodes = [0]
    cand = [np.arange(p.kmin[i], p.kmax[i] + 1) for i in range(m)]

    def visit(i: int, partial: float, acc: np.ndarray) -> None:
        ci = c[i] - acc[i] / R[i, i]
        zs = cand[i][np.argsort(np.abs(cand[i] - ci), kind="stable")]
        r2 = R[i, i] ** 2
        for zi in zs:
            nodes[0] += 1
            cost = partial + r2 * (zi - ci) ** 2
            if cost >= best[0] or nodes[0] > max_nodes:
                return
            k[i] = zi
            if i == 0:
                best[0] = cost
                best_k[:] = k
            else:
                visit(i - 1, cost, acc[:i] + R[:i, i] * (zi - c[i]))

    visit(m - 1, 0.0, np.zeros(m))
    return best_k.copy(), {"nodes": nodes[0], "complete": nodes[0] <= max_nodes}


# ---------------------------------------------------------------- the QUBO of a level window

def window_base(p: IntegerProblem, center: np.ndarray, levels: int) -> np.ndarray:
    """Lowest level of a window of ``levels`` levels per variable, centred on ``center`` and shifted
    into the box (the window covers the whole box when the box is smaller)."""
    span = levels - 1
    base = np.asarray(center, dtype=np.int64) - span // 2
    return np.maximum(np.minimum(base, p.kmax - span), p.kmin)


def window_qubo(p: IntegerProblem, base: np.ndarray, kind: str, levels: int,
                penalty: float | None = None) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Dense QUBO of k = base + Σ_j d_j x_ij (``kind``'s digits, windows of ``levels`` levels).

    Returns (Q upper-free symmetric with zero diagonal (n × n), linear (n,), offset, digits d) with
    energy(x) = Σ lin x + Σ_{i<j} 2·Q_ij x_i x_j + offset = E(base + D x) (+ the domain-wall penalty).
    Levels above kmax inside a window are allowed by the bits; callers clip the window to the box.
    """
    d = digit_weights(kind, levels)
    w = d.size
    a = (p.scale[:, None] * d[None, :]).reshape(-1)          # weight change per bit
    owner = np.repeat(np.arange(p.m), w)
    r0 = p.residual(base)
    Hr = p.H @ r0
    Q = 0.5 * a[:, None] * p.H[np.ix_(owner, owner)] * a[None, :]
    lin = a * Hr[owner] + np.diag(Q).copy()
    np.fill_diagonal(Q, 0.0)
    offset = p.energy(base)
    if kind == "domain-wall":
        add_domain_wall(Q, lin, p.m, w, domain_wall_penalty(p.scale, np.diag(p.H)) if penalty is None else penalty)
    return Q, lin, offset, d


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


@dataclass
class IntegerForm:
    """How a block's BQM encodes an :class:`IntegerProblem`: variables (m·width) ↔ levels k (m).

    k_i = Σ_j d_j x_ij (``kind``'s digits, windows of 2^bits levels starting at 0), and
    bqm.energy(x) = problem.energy(k(x)) (+ the domain-wall penalty, zero on thermometer codes).
    Built by ``qubo_nn.qubo.integer_form(model, enc, damping)``; samplers that work in level space
    take it as their ``integer_form`` parameter.
    """

    problem: IntegerProblem
    kind: str
    bits: int

    def __post_init__(self) -> None:
        self.kind = check_encoding(self.kind)
        self.bits = check_bits(self.bits)

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    @property
    def width(self) -> int:
        return int(digit_weights(self.kind, self.levels).size)

    @property
    def num_variables(self) -> int:
        return self.problem.m * self.width

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
        return cls(p, str(np.asarray(arrs["kind"])), int(np.asarray(arrs["bits"])))


def bits_of(k: np.ndarray, base: np.ndarray, kind: str, levels: int) -> np.ndarray:
    """Bits (…, m·width) of levels k inside the windows starting at ``base``."""
    rel = np.asarray(k) - base
    width = digit_weights(kind, levels).size
    return binary_digits(rel, width) if kind == "binary" else thermometer(rel, width)


def levels_of(x: np.ndarray, base: np.ndarray, kind: str, levels: int) -> np.ndarray:
    d = digit_weights(kind, levels)
    x = np.asarray(x)
    return base + (x.reshape(*x.shape[:-1], base.size, d.size) * d).sum(-1).astype(np.int64)


# ---------------------------------------------------------------- solve_levels

def _best_classical(p: IntegerProblem, pairs: bool = True) -> tuple[np.ndarray, dict]:
    """Best of CD from GPTQ act-order, CD from GPTQ natural order and CD from RTN."""
    t0 = time.perf_counter()
    starts = {"gptq": gptq(p, True), "gptq-natural": gptq(p, False), "rtn": rtn(p)}
    best_k, best_e, best_name = None, math.inf, ""
    for name, k0 in starts.items():
        k, _ = coordinate_descent(p, k0, pairs=pairs)
        e = p.energy(k)
        if e < best_e:
            best_k, best_e, best_name = k, e, f"cd<-{name}"
    return best_k, {"start": best_name, "energy": best_e, "wall_time_s": time.perf_counter() - t0}


def anneal_window(p: IntegerProblem, k_start: np.ndarray, *, encoding: str = "unary", levels: int = 3,
                  sampler: str = "neal", seed: int = 0, params: dict | None = None,
                  refine_span: float | None = 30.0) -> tuple[np.ndarray, dict]:
    """Sample the QUBO of a window of ``levels`` levels around ``k_start`` (``encoding``'s bits),
    started from ``k_start``'s bits; every sample decoded to levels (raw, no polish).

    Returns (K (S × m) int64 levels of the samples, info with the raw best energy and timing).
    """
    import dimod

    from .samplers import get_sampler, sample, vectorized_beta_range

    levels = int(min(levels, int((p.kmax - p.kmin).max()) + 1))
    levels = max(levels, 2)
    if encoding == "binary":
        levels = 2 ** int(math.ceil(math.log2(levels)))
    base = window_base(p, k_start, levels)
    Q, lin, offset, _ = window_qubo(p, base, encoding, levels)
    # bits for levels beyond kmax would decode outside the box: pin them to 0 with a large bias
    d = digit_weights(encoding, levels)
    reach = base[:, None] + np.cumsum(d)[None, :]
    over = (reach > p.kmax[:, None]).reshape(-1)
    if over.any():
        lin[over] += 1e3 * (abs(lin).max() + abs(Q).sum(1).max() + 1.0)
    bqm = dimod.BinaryQuadraticModel("BINARY")
    bqm.add_linear_from_array(lin)
    bqm.add_quadratic_from_dense(Q)
    bqm.offset = offset
    params = dict(params or {})
    smp = get_sampler(sampler)
    init = None
    if "initial_states" in smp.parameters:
        x0 = bits_of(k_start, base, encoding, levels)
        reads = int(params.get("num_reads", 1))
        init = np.repeat(x0[None, :], reads, axis=0)
        params.setdefault("num_reads", reads)
        if refine_span is not None and "beta_range" in smp.parameters and "beta_range" not in params \
                and "beta_schedule" not in params:
            cold = vectorized_beta_range(bqm)[1]
            params["beta_range"] = [cold / refine_span, cold]
    t0 = time.perf_counter()
    ss = sample(bqm, sampler, seed=seed, initial_states=init, **params)
    X = ss.record.sample[:, [ss.variables.index(v) for v in range(bqm.num_variables)]]
    K = p.clip(levels_of(X, base, encoding, levels))
    return K, {"levels": levels, "num_variables": bqm.num_variables, "sampler_wall_time_s": time.perf_counter() - t0,
               "beta_range": ss.info.get("params", {}).get("beta_range")}


def solve_levels(problem: IntegerProblem, method: str = "qubo", *, encoding: str = "unary", sampler: str = "neal",
                 seed: int = 0, params: dict | None = None, time_budget_s: float | None = None,
                 levels: int = 3, rounds: int = 4, refine_span: float | None = 30.0) -> tuple[np.ndarray, dict]:
    """Levels k (m,) int64 minimising ``problem`` by ``method`` and info {"method", "energy", "stage",
    "wall_time_s", ...}.

    - ``rtn``, ``gptq`` (act-order), ``gptq-natural``: the kernels above;
    - ``cd``: coordinate descent with pair moves from GPTQ act-order (CDQuant);
    - ``qubo`` (the default pipeline): the best classical answer (CD from GPTQ act-order, GPTQ natural
      and RTN), then up to ``rounds`` rounds of: anneal the QUBO of a window of ``levels`` levels
      around the incumbent (``encoding``, ``sampler`` with ``params``, started at the incumbent), polish
      every sample by CD in level space, keep the best if lower. ``stage`` says which stage produced
      the answer (``refine_span``: see :func:`anneal_window`): ``"classical"`` (nothing beat the start), ``"anneal"`` (a raw sample beat the
      incumbent before any polish) or ``"polish"`` (only the polished samples did). ``info`` also
      holds ``energy_classical``, ``energy_anneal_raw`` (the annealer's own best sample) and
      ``anneal_improved_rounds``. ``time_budget_s`` stops starting new rounds after that many seconds.
    """
    if method not in LEVEL_METHODS:
        raise QuboNNError(f"method must be one of {LEVEL_METHODS}, got {method!r}")
    check_encoding(encoding)
    t0 = time.perf_counter()
    p = problem
    info: dict[str, Any] = {"method": method}
    if method == "rtn":
        k = rtn(p)
    elif method in ("gptq", "gptq-natural"):
        k = gptq(p, act_order=method == "gptq")
    elif method == "cd":
        k, cinfo = coordinate_descent(p, gptq(p, True))
        info.update(cinfo)
    else:
        k, cinfo = _best_classical(p)
        e = cinfo["energy"]
        info.update({"energy_classical": e, "classical_start": cinfo["start"],
                     "classical_wall_time_s": cinfo["wall_time_s"], "encoding": encoding, "sampler": sampler})
        stage, raw_best, improved_rounds = "classical", math.inf, 0
        for r in range(max(int(rounds), 0)):
            if time_budget_s is not None and time.perf_counter() - t0 >= time_budget_s:
                break
            K, ainfo = anneal_window(p, k, encoding=encoding, levels=levels, sampler=sampler,
                                     seed=(int(seed) + 7919 * r) % 2**31, params=params, refine_span=refine_span)
            E_raw = p.energy(K)
            j = int(np.argmin(E_raw))
            raw_best = min(raw_best, float(E_raw[j]))
            round_stage = None
            if E_raw[j] < e - 1e-12 * max(1.0, abs(e)):
                k, e, round_stage = K[j].copy(), float(E_raw[j]), "anneal"
            for row in np.unique(K, axis=0):
                kp, _ = coordinate_descent(p, row)
                ep = p.energy(kp)
                if ep < e - 1e-12 * max(1.0, abs(e)):
                    k, e = kp, ep
                    round_stage = round_stage or "polish"
            if round_stage is None:
                break
            improved_rounds += 1
            stage = "anneal" if "anneal" in (stage, round_stage) else "polish"
        info.update({"stage": stage, "energy_anneal_raw": raw_best, "anneal_improved_rounds": improved_rounds,
                     "rounds_run": r + 1 if rounds else 0})
    info.setdefault("stage", method)
    info["energy"] = float(p.energy(k))
    info["wall_time_s"] = time.perf_counter() - t0
    return np.asarray(k, dtype=np.int64), info
