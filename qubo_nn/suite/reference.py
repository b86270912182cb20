"""Reference values of an instance: classical baselines, a best-known value, a certified lower bound.

Moved from ``benchmarks/bench_samplers.py`` (same math): :func:`box_lower_bound` and the
large-neighbourhood search with exact sub-solves :func:`lns_exact`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from qubo_nn.core.kernels import coordinate_descent, gptq, rtn, sphere_decode
from qubo_nn.core.problem import IntegerProblem


def _box_qp(M: np.ndarray, b: np.ndarray, const: float, lo, hi, max_iter: int = 1500) -> tuple[float, np.ndarray]:
    """Certified min over the box of f(k) = const + ½kᵀMk − bᵀk (M ⪰ 0): an approximate minimiser k̂ by
    L-BFGS-B (at most ``max_iter`` iterations; BVLS was exact but 5 min at m = 1152), then the bound f(k̂) + Σ_i min(∇_i (lo_i − k̂_i), ∇_i (hi_i − k̂_i)) ≤ min f (convexity),
    valid however roughly k̂ was found."""
    from scipy.optimize import minimize

    def f(k):
        return const + 0.5 * float(k @ M @ k) - float(b @ k)

    x0 = np.clip(np.linalg.lstsq(M, b, rcond=None)[0] if M.shape[0] <= 64 else np.zeros_like(b), lo, hi)
    k = minimize(f, x0, jac=lambda k: M @ k - b, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                 options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-14}).x
    k = np.clip(k, lo, hi)
    grad = M @ k - b
    return f(k) + float(np.minimum(grad * (lo - k), grad * (hi - k)).sum()), k


def shifted_lower_bound(p: IntegerProblem) -> dict:
    """A certified lower bound at least as tight as :func:`box_lower_bound` (the eigenvalue-shift idea of
    QCR bounds): with A = S H S (S = diag s, k-space), λ = λ_min(A) ≥ 0 and any integers a_i,
    (k_i − a_i)(k_i − a_i − 1) ≥ 0 at every integer k_i, so
        E(k) ≥ E_λ(k) = E(k) − ½λ Σ (k_i − a_i)(k_i − a_i − 1)   for integer k,
    and E_λ is convex (Hessian A − λI ⪰ 0): its certified box minimum is a bound on min E. a_i =
    ⌊k̂_i⌋ of the plain relaxation's minimiser k̂ (clipped to [kmin, kmax − 1]); the larger of the
    two bounds is returned."""
    box = box_lower_bound(p)
    if (p.kmax - p.kmin).min() < 1:
        return {**box, "method": box["method"]}
    A = p.scale[:, None] * p.H * p.scale[None, :]
    lam = max(0.0, 0.99 * float(np.linalg.eigvalsh(A)[0]))
    c = p.target / p.scale
    lo, hi = p.kmin.astype(np.float64), p.kmax.astype(np.float64)
    a = np.clip(np.floor(box["argmin"]), lo, hi - 1)
    # E_λ(k) = const + ½(k−c)ᵀA(k−c) − ½λ Σ (k−a)(k−a−1) = const' + ½kᵀ(A − λI)k − bᵀk
    b = A @ c - 0.5 * lam * (2 * a + 1)
    const = p.const + 0.5 * float(c @ A @ c) - 0.5 * lam * float((a * (a + 1)).sum())
    lb, _ = _box_qp(A - lam * np.eye(p.m), b, const, lo, hi)
    if lb > box["lower_bound"]:
        return {"lower_bound": lb, "box_lower_bound": box["lower_bound"], "lambda_min": lam,
                "method": "eigenvalue-shifted box relaxation (λ_min of S H S, a = floor of the box minimiser), "
                          "L-BFGS-B minus first-order gap"}
    return {**box, "lambda_min": lam}


def box_lower_bound(p: IntegerProblem) -> dict:
    """A certified lower bound on min E over the integer box: the convex relaxation (k real in
    [kmin, kmax]) solved approximately, minus its first-order gap (:func:`_box_qp`). By convexity, for
    any k̂ in the box E(k) ≥ E(k̂) + Σ_i min(∇_i (kmin_i − k̂_i), ∇_i (kmax_i − k̂_i)) for every real k in
    the box, so the bound holds however roughly the relaxation was solved."""
    A = p.scale[:, None] * p.H * p.scale[None, :]
    c = p.target / p.scale
    lo, hi = p.kmin.astype(np.float64), p.kmax.astype(np.float64)
    lb, k = _box_qp(A, A @ c, p.const + 0.5 * float(c @ A @ c), lo, hi)
    return {"lower_bound": lb, "argmin": k, "method": "box relaxation (L-BFGS-B) minus first-order gap"}


def exact_sub(sub: IntegerProblem, k0: np.ndarray, max_states: int = 1 << 16, max_nodes: int = 200_000) -> np.ndarray:
    """The exact minimiser of a small integer problem (enumeration up to ``max_states`` points, else
    sphere decoding from ``k0``); ``k0`` when nothing is lower."""
    sizes = (sub.kmax - sub.kmin + 1).astype(np.float64)
    if float(np.prod(sizes)) <= max_states:
        grids = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(sub.kmin, sub.kmax)], indexing="ij")
        K = np.stack([gr.reshape(-1) for gr in grids], 1)
        E = sub.energy(K)
        j = int(np.argmin(E))
        return K[j] if E[j] < sub.energy(k0) else np.asarray(k0)
    return sphere_decode(sub, k0=k0, max_nodes=max_nodes)[0]


def conditional(p: IntegerProblem, k: np.ndarray, S: np.ndarray) -> IntegerProblem:
    """E as a function of k_S with the other levels fixed at ``k`` (same energy up to a constant)."""
    r = p.scale * k - p.target
    HSS = p.H[np.ix_(S, S)]
    u = p.H[S] @ r - HSS @ r[S]
    return IntegerProblem(HSS, p.target[S] - np.linalg.solve(HSS, u), p.scale[S], p.kmin[S], p.kmax[S])


def lns_exact(p: IntegerProblem, k0: np.ndarray, budget_s: float, *, size: int = 16, seed: int = 0,
              max_tries: int | None = None) -> tuple[np.ndarray, dict]:
    """Large-neighbourhood search from ``k0``: a random variable and ``size`` − 1 of its 2·size most
    coupled ones (|H_ij|/√(H_ii H_jj)) re-solved exactly with the rest fixed; lower energies kept.
    Stops before a try would end past ``budget_s`` (or after ``max_tries``: deterministic)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    k = p.clip(k0)
    e = float(p.energy(k))
    d = np.sqrt(np.diag(p.H))
    C = np.abs(p.H) / d[:, None] / d[None, :]
    np.fill_diagonal(C, -np.inf)
    size = min(size, p.m)
    tries = improved = 0
    longest = 0.0
    while True:
        now = time.perf_counter()
        if (max_tries is None and now - t0 + longest > budget_s) or (max_tries is not None and tries >= max_tries):
            break
        i = int(rng.integers(p.m))
        near = np.argsort(-C[i], kind="stable")[: 2 * size]
        S = np.unique(np.concatenate([[i], rng.choice(near, size=min(size - 1, near.size), replace=False)]))
        kS = exact_sub(conditional(p, k, S), k[S])
        tries += 1
        if not np.array_equal(kS, k[S]):
            kn = k.copy()
            kn[S] = kS
            en = float(p.energy(kn))
            if en < e - 1e-12 * max(1.0, abs(e)):
                k, e, improved = kn, en, improved + 1
        longest = max(longest, time.perf_counter() - now)
    return k, {"tries": tries, "improved": improved, "size": size}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def reference_values(inst, *, seed: int = 0, tabu_s: float = 0.5, lns_tries: int = 200) -> dict[str, Any]:
    """Baselines (energies and times), best-known sample and energy (and how found), lower bound.

    Baselines: gptq act-order, cd (from gptq act-order; both on the integer problem), tabu
    (``tabu_s`` seconds, random start), neal's default (1 read × 1000 sweeps). Best known: the lowest
    of these and of an LNS with exact sub-solves (``lns_tries`` tries, deterministic) from the best
    classical answer; for instances without an integer problem, of a longer tabu (4 × ``tabu_s``).
    """
    from qubo_nn.samplers.registry import sample

    bqm = inst.bqm
    n = bqm.num_variables
    base: dict[str, dict] = {}
    cands: dict[str, np.ndarray] = {}

    def bit_energy(x):
        return float(bqm.energy((x, range(n))))

    def bitspace(name, sampler, **kw):
        ss, t = _timed(lambda: sample(bqm, sampler, seed=seed, **kw))
        x = ss.record.sample[0][[ss.variables.index(v) for v in range(n)]]
        base[name] = {"energy": bit_energy(x), "time_s": t}
        cands[name] = x

    p = inst.problem
    if p is not None:
        k, t = _timed(lambda: gptq(p, act_order=True))
        x = inst.to_bits(k)
        base["gptq"] = {"energy": bit_energy(x), "time_s": t}
        cands["gptq"] = x
        (kc, _), t2 = _timed(lambda: coordinate_descent(p, k))
        x = inst.to_bits(kc)
        base["cd"] = {"energy": bit_energy(x), "time_s": t + t2}
        cands["cd"] = x
        base["rtn"] = {"energy": bit_energy(inst.to_bits(rtn(p))), "time_s": 0.0}
    bitspace("tabu", "tabu", num_reads=1, time_limit=tabu_s)
    bitspace("neal", "neal", num_reads=1)
    if p is not None:
        k0 = inst.to_levels(cands[min(cands, key=lambda m: base[m]["energy"])])
        (kl, info), t = _timed(lambda: lns_exact(p, k0, 0.0, seed=seed, max_tries=lns_tries))
        cands["lns"] = inst.to_bits(kl)
        best_extra = {"lns": {"energy": bit_energy(cands["lns"]), "time_s": t, **info}}
    else:
        bitspace("tabu-long", "tabu", num_reads=1, time_limit=4 * tabu_s)
        best_extra = {"tabu-long": base.pop("tabu-long")}
    energies = {m: v["energy"] for m, v in {**base, **best_extra}.items() if m in cands}
    by = min(energies, key=energies.get)
    out = {"baselines": base, "best_known": {"energy": energies[by], "found_by": by,
                                             "sample": cands[by], **best_extra}}
    if p is not None:
        b, t = _timed(lambda: shifted_lower_bound(p))
        b.pop("argmin", None)
        lb = b["lower_bound"]
        e = energies[by]
        out["lower_bound"] = {**b, "time_s": t, "gap": (e - lb) / abs(e) if e != 0 else None}
    else:
        out["lower_bound"] = None
    return out
