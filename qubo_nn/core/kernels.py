"""Level-space kernels on an IntegerProblem: round-to-nearest, GPTQ, coordinate descent, sphere decoding."""
from __future__ import annotations

import numpy as np

from qubo_nn.core.grid import nearest_level
from qubo_nn.core.problem import IntegerProblem, _cholesky
from qubo_nn.errors import QuboNNError

#: sphere_decode refuses more level variables than this (its search is exponential in the worst case).
MAX_SPHERE_VARIABLES = 40


def rtn(p: IntegerProblem) -> np.ndarray:
    """Round to nearest: k = clamp(round(t/s), kmin, kmax)."""
    return nearest_level(p.target, p.scale, p.kmin, p.kmax).astype(np.int64)


def gptq(p: IntegerProblem, act_order: bool = True) -> np.ndarray:
    """GPTQ's sequential rounding with error feedback (the OBQ update in a fixed order).

    Order: decreasing diag H (``act_order``, the default in GPTQ's own code) or index order. With
    U the upper Cholesky factor of H⁻¹ (in that order), :func:`gptq_rows` from x = t.
    """
    return gptq_batch([p], act_order)[0]


def gptq_batch(problems: list[IntegerProblem], act_order: bool = True) -> np.ndarray:
    """:func:`gptq` of many problems of one size m (B × m int64): problems that share one Hessian
    array (the rows of a network group) share its order and factorization, and their rows go through
    :func:`gptq_rows` together, so each answer equals :func:`gptq` of that problem alone."""
    if not problems:
        return np.empty((0, 0), dtype=np.int64)
    out = np.empty((len(problems), problems[0].m), dtype=np.int64)
    by_h: dict[int, list[int]] = {}
    for j, p in enumerate(problems):
        by_h.setdefault(id(p.H), []).append(j)
    for idx in by_h.values():
        H = problems[idx[0]].H
        m = H.shape[0]
        order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(m)
        L = _cholesky(H[np.ix_(order, order)], "Hessian block")
        Linv = np.linalg.solve(L, np.eye(m))           # H⁻¹ = L⁻ᵀ L⁻¹
        U = _cholesky(Linv.T @ Linv, "inverse Hessian").T  # upper: H⁻¹ = UᵀU
        rows = [problems[j] for j in idx]
        k = gptq_rows(np.stack([p.target[order] for p in rows]), U, np.stack([p.scale[order] for p in rows]),
                      np.stack([p.kmin[order] for p in rows]), np.stack([p.kmax[order] for p in rows]))
        out[np.ix_(idx, order)] = k
    return out


def gptq_rows(x: np.ndarray, U: np.ndarray, scale, lo, hi) -> np.ndarray:
    """GPTQ's column loop for a batch of rows sharing one Hessian: levels k (R × m, int64).

    ``x`` (R × m) the rows' targets (fed-back weights, in the order of U), ``U`` (m × m) the upper
    Cholesky factor of H̃⁻¹ = UᵀU in that order; ``scale``, ``lo``, ``hi`` broadcast to (R × m).
    For each column d: k_d = clamp(round(x_d/s_d), lo_d, hi_d), e = (x_d − s_d k_d)/U_dd,
    x_{d+1:} −= e·U_{d,d+1:} (``x`` is not modified). The one GPTQ kernel: the head's rows
    (:func:`gptq`, R = 1) and the network's groups (all output channels at once) both run it.
    """
    x = np.array(x, dtype=np.float64)
    s, lo, hi = (np.broadcast_to(np.asarray(v), x.shape) for v in (scale, lo, hi))
    k = np.empty(x.shape, dtype=np.int64)
    for d in range(x.shape[1]):   # NumPy: a few µs per column for all rows
        q = nearest_level(x[:, d], s[:, d], lo[:, d], hi[:, d])
        k[:, d] = q
        err = (x[:, d] - s[:, d] * q) / U[d, d]
        x[:, d + 1:] -= err[:, None] * U[d, d + 1:][None, :]
    return k


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
