"""Reference values of an instance: classical baselines, a best-known value, a certified lower bound.

The large-neighbourhood search with exact sub-solves :func:`lns_exact` moved here from
``benchmarks/bench_samplers.py``; the bound is :func:`qubo_nn.core.bounds.box_lower_bound`.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from qubo_nn.core.bounds import box_lower_bound
from qubo_nn.core.kernels import coordinate_descent, gptq, rtn, sphere_decode
from qubo_nn.core.problem import IntegerProblem


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
    Stops before a try would end past ``budget_s`` or after ``max_tries`` (deterministic with
    ``budget_s`` = ∞)."""
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
        if now - t0 + longest > budget_s or (max_tries is not None and tries >= max_tries):
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
    return k, {"tries": tries, "improved": improved, "size": size, "budget_s": budget_s}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bound_entry(p: IntegerProblem, best: float) -> dict[str, Any]:
    """The manifest's ``lower_bound`` of a problem whose best known energy is ``best``: the certified
    bound (:func:`box_lower_bound`), its time and the gap (E* − LB)/|E*|."""
    b, t = _timed(lambda: box_lower_bound(p))
    return {**b, "time_s": t, "gap": (best - b["lower_bound"]) / abs(best) if best != 0 else None}


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
        (kl, info), t = _timed(lambda: lns_exact(p, k0, math.inf, seed=seed, max_tries=lns_tries))
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
        out["lower_bound"] = bound_entry(p, energies[by])
    else:
        out["lower_bound"] = None
    return out
