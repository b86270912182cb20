"""Choosing k of n input channels: L1 norms, greedy (ThiNet), LASSO (He et al.), QUBO, brute force.

Every method returns a boolean keep-mask with exactly k channels and an info dict; all are
scored on the same :class:`~qubo_nn.workflows.prune.objective.PruneProblem` energy E(s).
"""
from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.prune.objective import PruneProblem, prune_bqm

METHODS = ("l1", "greedy", "lasso", "qubo")
MAX_BRUTE_FORCE = 20


def _check_k(n: int, k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
        raise QuboNNError(f"expected the number of kept channels k in [1, {n}], got {k!r}")
    return int(k)


def keep_count(n: int, keep: float) -> int:
    """k = round(keep · n), at least 1: the number of channels a keep fraction leaves."""
    if not 0.0 < float(keep) <= 1.0:
        raise QuboNNError(f"expected a keep fraction in (0, 1], got {keep!r}")
    return max(1, int(round(float(keep) * n)))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest scores (ties: lower index first)."""
    scores = np.asarray(scores, dtype=np.float64)
    k = _check_k(scores.shape[0], k)
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[order[:k]] = True
    return mask


def select_l1(scores: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    """Li et al. (2017): keep the k channels whose producing filters have the largest L1 norm."""
    t0 = time.perf_counter()
    mask = top_k(scores, k)
    return mask, {"method": "l1", "wall_time_s": time.perf_counter() - t0}


def select_greedy(problem: PruneProblem, k: int) -> tuple[np.ndarray, dict]:
    """ThiNet-style backward elimination: remove, one at a time, the channel whose removal raises
    E least, until k remain. E(s − e_i) − E(s) = G_ii − 2 (G s)_i + 2 b_i; O(n²) per removal."""
    t0 = time.perf_counter()
    n = problem.n
    k = _check_k(n, k)
    s = np.ones(n, dtype=bool)
    Gs = problem.G.sum(1)
    diag = np.diag(problem.G)
    for _ in range(n - k):
        delta = diag - 2.0 * Gs + 2.0 * problem.b
        delta[~s] = np.inf
        i = int(np.argmin(delta))
        s[i] = False
        Gs -= problem.G[:, i]
    return s, {"method": "greedy", "wall_time_s": time.perf_counter() - t0}


def select_lasso(problem: PruneProblem, k: int, n_alphas: int = 200) -> tuple[np.ndarray, dict]:
    """He et al. (2017): LASSO over channel scalings β, min ‖Σ β_i Y_i − Y‖² + α ‖β‖₁, along a path
    of α (scikit-learn ``lasso_path``); keep the support at the smallest α with ≤ k nonzeros,
    filled up to k by |β| at the next α. The problem is solved in Gram form: with G = Zᵀ Z
    (Z = Λ^{1/2} Vᵀ from G's eigenpairs) and ỹ = Λ^{-1/2} Vᵀ b, ‖Z β − ỹ‖² = E-like up to a constant."""
    from sklearn.linear_model import lasso_path

    t0 = time.perf_counter()
    n = problem.n
    k = _check_k(n, k)
    lam, V = np.linalg.eigh(problem.G)
    keep = lam > max(lam.max(), 0.0) * 1e-12
    Z = np.sqrt(lam[keep])[:, None] * V[:, keep].T               # (r, n), Zᵀ Z = G on its range
    y = (V[:, keep].T @ problem.b) / np.sqrt(lam[keep])           # Zᵀ y = b
    alphas, coefs, _ = lasso_path(Z, y, alphas=n_alphas, eps=1e-4, max_iter=5000)
    nnz = (np.abs(coefs) > 0).sum(0)                              # alphas decrease along the path
    ok = np.nonzero(nnz <= k)[0]
    j = int(ok[-1]) if len(ok) else 0
    cur = np.abs(coefs[:, j])
    nxt = np.abs(coefs[:, min(j + 1, coefs.shape[1] - 1)])
    # the support at alpha_j first (by |beta|), then by |beta| at the next alpha, then by G's diagonal
    rank = np.lexsort((-np.diag(problem.G), -nxt, -cur, ~(cur > 0)))
    mask = np.zeros(n, dtype=bool)
    mask[rank[:k]] = True
    return mask, {"method": "lasso", "alpha": float(alphas[j]), "support_at_alpha": int(nnz[j]),
                  "wall_time_s": time.perf_counter() - t0}


def repair(problem: PruneProblem, s: np.ndarray, k: int) -> np.ndarray:
    """Make Σ s = k by greedy single changes: drop the channel whose removal raises E least (too
    many), or add the one that lowers E most (too few). A feasible mask comes back unchanged."""
    s = np.asarray(s, dtype=bool).copy()
    G, b = problem.G, problem.b
    diag = np.diag(G)
    Gs = G[:, s].sum(1)
    while s.sum() > k:
        d = diag - 2.0 * Gs + 2.0 * b
        d[~s] = np.inf
        i = int(np.argmin(d))
        s[i] = False
        Gs -= G[:, i]
    while s.sum() < k:
        d = diag + 2.0 * Gs - 2.0 * b                              # E(s + e_i) − E(s)
        d[s] = np.inf
        i = int(np.argmin(d))
        s[i] = True
        Gs += G[:, i]
    return s


def select_qubo(problem: PruneProblem, k: int, *, sampler: str = "tabu", mode: str = "penalty",
                penalty: float | str = "safe", initial: list[np.ndarray] | None = None, seed: int = 0,
                params: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
    """Sample the pruning BQM (:func:`~qubo_nn.workflows.prune.objective.prune_bqm`) with a registered
    sampler, started from ``initial`` masks (the baselines' answers) where the sampler takes
    initial states; every sample is made feasible by :func:`repair` and the lowest E wins.

    info: method, sampler, mode, penalty, seed, params, feasible_fraction (samples with Σs = k as
    the sampler returned them), best_energy_raw (lowest BQM energy), improved_over_initial
    (E of the answer below the best initial mask's), wall_time_s (BQM build + sampling + repair).
    """
    from qubo_nn import samplers

    t0 = time.perf_counter()
    n = problem.n
    k = _check_k(n, k)
    bqm, binfo = prune_bqm(problem, k, mode=mode, penalty=penalty)
    labels = list(range(n))
    kwargs = dict(params or {})
    init = None
    if initial:
        arr = np.stack([np.asarray(m, dtype=np.int8) for m in initial])
        reads = int(kwargs.get("num_reads", 1))
        init = (np.resize(arr, (max(reads, len(arr)), n)), labels)
        kwargs.setdefault("num_reads", init[0].shape[0])
    ss = samplers.sample(bqm, sampler, seed=seed, initial_states=init, **kwargs)
    X = ss.record.sample[:, [ss.variables.index(v) for v in labels]].astype(bool)
    feasible = X.sum(1) == k
    cands = [repair(problem, x, k) for x in X]
    if initial:
        cands += [np.asarray(m, dtype=bool) for m in initial]
    errs = np.array([problem.error(c) for c in cands])
    best = int(np.argmin(errs))
    init_best = min(problem.error(np.asarray(m, dtype=float)) for m in initial) if initial else np.inf
    info = {"method": "qubo", "sampler": sampler, "mode": mode, "penalty": binfo["penalty"], "seed": seed,
            "params": ss.info.get("params"), "num_samples": int(len(X)),
            "feasible_fraction": float(feasible.mean()), "best_energy_raw": float(ss.first.energy),
            "from_initial": bool(initial) and best >= len(X),
            "improved_over_initial": bool(errs[best] < init_best * (1 - 1e-12)),
            "wall_time_s": time.perf_counter() - t0}
    return cands[best], info


def brute_force(problem: PruneProblem, k: int) -> tuple[np.ndarray, float]:
    """The exact best mask with Σ s = k by enumeration (n ≤ 20) and its E."""
    n = problem.n
    k = _check_k(n, k)
    if n > MAX_BRUTE_FORCE:
        raise QuboNNError(f"expected at most {MAX_BRUTE_FORCE} channels for brute force, got {n}")
    combos = np.array(list(itertools.combinations(range(n), k)))
    S = np.zeros((len(combos), n))
    S[np.arange(len(combos))[:, None], combos] = 1.0
    E = problem.error(S)
    i = int(np.argmin(E))
    return S[i].astype(bool), float(E[i])
