"""Level solvers that anneal: windows of an IntegerProblem as QUBOs, and the solve_levels pipeline."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from qubo_nn.core.grid import bits_of, check_encoding, digit_weights, levels_of
from qubo_nn.core.kernels import coordinate_descent, gptq, rtn
from qubo_nn.core.problem import IntegerProblem, window_base, window_qubo
from qubo_nn.errors import QuboNNError

LEVEL_METHODS = ("rtn", "gptq", "gptq-natural", "cd", "qubo")


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

    from qubo_nn.samplers.anneal import vectorized_beta_range
    from qubo_nn.samplers.registry import get_sampler, sample

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
