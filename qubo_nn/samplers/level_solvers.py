"""Level solvers that anneal: the batched level-space annealer over many IntegerProblems
(:func:`solve_levels_batch`, the default annealing stage), windows of an IntegerProblem as QUBOs for
any dimod sampler (:func:`anneal_window`), and the solve_levels pipeline."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from qubo_nn.core.grid import bits_of, check_encoding, digit_weights, levels_of
from qubo_nn.core.kernels import coordinate_descent, gptq, gptq_batch, rtn
from qubo_nn.core.problem import IntegerProblem, window_base, window_qubo
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import child_seed

LEVEL_METHODS = ("rtn", "gptq", "gptq-natural", "cd", "qubo")

#: the default annealing stage of the ``qubo`` pipeline (level space, no BQM); any registered
#: dimod sampler name ("neal", "tabu", ...) anneals BQM windows instead (:func:`anneal_window`).
BATCH_SAMPLER = "batch-anneal"
#: parameters of the batched stage: chains per problem, sweeps per round, device
BATCH_PARAMS = {"num_reads": 4, "num_sweeps": 100, "device": "cpu", "restarts": False, "schedule": "anneal"}


def _best_classical(p: IntegerProblem, pairs: bool = True) -> tuple[np.ndarray, dict]:
    """Best of CD from GPTQ act-order, CD from GPTQ natural order and CD from RTN, row by row in NumPy: the
    neal pipeline's start, which must stay torch-free in Ray workers (:func:`classical_starts` is the batched
    twin, with the same answers, for the torch/numba path)."""
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


def solve_levels(problem: IntegerProblem, method: str = "qubo", *, encoding: str = "unary", sampler: str = BATCH_SAMPLER,
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
      With ``sampler="batch-anneal"`` (the default) the annealing stage is :func:`solve_levels_batch`
      on this one problem (level space, no window, ``params``: num_reads, num_sweeps, device; ``refine_span``
      is its β span); ``encoding`` and ``levels`` then play no part.
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
    elif sampler == BATCH_SAMPLER:
        bp = _batch_params(params)
        (k, binfo), = solve_levels_batch([p], [seed], time_budget_s=time_budget_s, rounds=bp.pop("rounds", rounds),
                                         span=30.0 if refine_span is None else refine_span, **bp)
        info.update(binfo)
        info["method"] = method
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


def _batch_params(params: dict | None) -> dict:
    """``params`` of the batched stage checked against :data:`BATCH_PARAMS` (QuboNNError otherwise)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(BATCH_PARAMS) - {"rounds"})
    if unknown:
        raise QuboNNError(f"sampler {BATCH_SAMPLER!r} does not accept parameter(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(BATCH_PARAMS)}")
    out = {**BATCH_PARAMS, **params}
    if out.get("schedule") not in ("anneal", "tempering"):
        raise QuboNNError(f"schedule must be 'anneal' or 'tempering', got {out.get('schedule')!r}")
    for key in ("num_reads", "num_sweeps", "rounds"):
        if key not in out:
            continue
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise QuboNNError(f"{key} must be a positive integer, got {v!r}")
    return out


def classical_start(p: IntegerProblem, kind: str = "best") -> tuple[np.ndarray, str]:
    """The start of the anneal: ``best`` (the best of CD from GPTQ act-order / natural / RTN, as the
    neal pipeline), ``cd`` (CD from GPTQ act-order, the ``cd`` method's answer) or ``gptq``."""
    (k, name), = classical_starts([p], kind)
    return k, name


def _use_jit(device: str) -> bool:
    """The compiled CPU kernels (:mod:`jit_kernels`) run when numba is there and the device is the CPU."""
    from qubo_nn.runtime import resolve_device
    from qubo_nn.samplers import jit_kernels

    return jit_kernels.AVAILABLE and resolve_device(device).type == "cpu"


def _general_forms(problems: list[IntegerProblem]) -> dict[str, np.ndarray]:
    """NumPy general forms (A, g, kmin, kmax, c) of problems of one size (:func:`batch_anneal.problem_arrays`)."""
    from qubo_nn.samplers.batch_anneal import problem_arrays

    return {key: v.numpy() for key, v in problem_arrays(problems).items()}


def _descend(problems: list[IntegerProblem], K: np.ndarray, owner: np.ndarray, jit: bool,
             arr: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Coordinate descent (single, then pair moves) from each row of K (N × m) on ``problems[owner[n]]``:
    the compiled batch kernel, or :func:`coordinate_descent` row by row. Same moves either way."""
    if jit:
        from qubo_nn.samplers.jit_kernels import coordinate_descent_batch

        arr = _general_forms(problems) if arr is None else arr
        return coordinate_descent_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], K, owner)[0]
    return np.stack([coordinate_descent(problems[o], k)[0] for k, o in zip(K, owner)]) if len(K) else K.copy()


def classical_starts(problems: list[IntegerProblem], kind: str = "best", jit: bool | None = None
                     ) -> list[tuple[np.ndarray, str]]:
    """:func:`classical_start` of many problems of one size m at once: GPTQ through :func:`gptq_batch`
    (one factorization per shared Hessian) and CD through :func:`_descend` (compiled where it can).
    ``best`` keeps the first strictly lowest of CD from GPTQ act-order / natural / RTN."""
    if kind not in ("best", "cd", "gptq"):
        raise QuboNNError(f"k_start must be 'best', 'cd', 'gptq' or a list of level arrays, got {kind!r}")
    if not problems:
        return []
    n = len(problems)
    act = gptq_batch(problems, True)
    if kind == "gptq":
        return [(act[j], "gptq") for j in range(n)]
    jit = _use_jit("cpu") if jit is None else jit
    arr = _general_forms(problems)
    names = ["gptq"] if kind == "cd" else ["gptq", "gptq-natural", "rtn"]
    starts = {"gptq": act}
    if kind == "best":
        starts["gptq-natural"] = gptq_batch(problems, False)
        starts["rtn"] = np.stack([rtn(p) for p in problems])
    K = _descend(problems, np.concatenate([starts[x] for x in names]), np.tile(np.arange(n), len(names)), jit, arr)
    K = K.reshape(len(names), n, -1).transpose(1, 0, 2)          # n × starts × m
    E = general_energy(arr, K)
    best = np.zeros(n, dtype=np.int64)          # the first strictly lowest (ties keep the earlier start)
    for a in range(1, len(names)):
        best = np.where(E[:, a] < E[np.arange(n), best], a, best)
    return [(K[j, best[j]].copy(), f"cd<-{names[best[j]]}") for j in range(n)]


def solve_levels_batch(problems: list[IntegerProblem], seeds: list[int], *, k_start: Any = "best",
                       num_reads: int = 4, num_sweeps: int = 100, span: float = 30.0, hot: float = 0.3, rounds: int = 1,
                       device: str = "cpu", time_budget_s: float | None = None, polish: bool = True,
                       restarts: bool = False, schedule: str = "anneal", round_estimate_s: float | None = None
                       ) -> list[tuple[np.ndarray, dict]]:
    """Levels of many problems at once: classical start → batched anneal around it → CD polish, best kept.

    For each problem: the start (``k_start``: "best", "cd", "gptq" (see :func:`classical_start`) or
    a list of (m,) level arrays), then up to ``rounds`` rounds of ``num_reads`` chains × ``num_sweeps``
    Metropolis sweeps over its levels (:func:`qubo_nn.samplers.batch_anneal.anneal_batch`, geometric β
    from β_hot to ``span``·β_hot, β_hot from the problem's own scale: an uphill move of ``hot`` times
    the start's excess E(k_start) − const is accepted with probability ½), all problems of one size m
    in one tensor batch; every chain's final state and the lowest raw state are polished by coordinate
    descent (``polish``), and the lowest of start / raw / polished kept. A later round re-anneals only
    the problems the last one improved; with ``restarts`` every round re-anneals every problem from its
    incumbent (fresh chains), up to ``rounds`` rounds while ``time_budget_s`` lasts. ``schedule``
    "tempering" runs parallel tempering instead of annealing: the ``num_reads`` chains sit at fixed β
    on a geometric ladder from β_hot to β_cold and swap states between sweeps
    (:func:`~qubo_nn.samplers.batch_anneal.temper_batch`).
    ``time_budget_s`` stops starting rounds (a round is not started when the last one took longer than
    the time left, nor the first when ``round_estimate_s`` exceeds it). Problem j's chains draw from ``seeds[j]`` only, so its answer does not depend on
    the rest of the batch (nor on its order).

    On the CPU with numba installed the anneal and the descents run the compiled kernels of
    :mod:`qubo_nn.samplers.jit_kernels` (the same moves and random numbers); elsewhere the torch kernel.

    Returns [(k (m,) int64, info)] in the order of ``problems``; info as :func:`solve_levels`'s
    ``qubo`` (energy, energy_classical, classical_start, stage, energy_anneal_raw,
    anneal_improved_rounds, rounds_run) plus sampler, num_reads, num_sweeps, kernel and the batch's
    anneal_wall_time_s.
    """
    t0 = time.perf_counter()
    n = len(problems)
    if len(seeds) != n:
        raise QuboNNError(f"expected one seed per problem ({n}), got {len(seeds)}")
    if schedule not in ("anneal", "tempering"):
        raise QuboNNError(f"schedule must be 'anneal' or 'tempering', got {schedule!r}")
    jit = _use_jit(device)
    by_m: dict[int, list[int]] = {}
    for j, p in enumerate(problems):
        by_m.setdefault(p.m, []).append(j)
    if isinstance(k_start, str):
        starts: list[Any] = [None] * n
        for idx in by_m.values():
            for j, st in zip(idx, classical_starts([problems[j] for j in idx], k_start, jit)):
                starts[j] = st
    else:
        if len(k_start) != n:
            raise QuboNNError(f"expected one start per problem ({n}), got {len(k_start)}")
        starts = [(p.clip(k), "given") for p, k in zip(problems, k_start)]
    ks = [np.asarray(k, dtype=np.int64) for k, _ in starts]
    groups = [(np.asarray(idx), _general_forms([problems[j] for j in idx])) for idx in by_m.values()]
    es = np.empty(n)
    for idx, arr in groups:
        es[idx] = general_energy(arr, np.stack([ks[j] for j in idx])[:, None, :])[:, 0]
    infos = [{"method": "qubo", "sampler": BATCH_SAMPLER, "energy_classical": float(e), "classical_start": name,
              "classical_wall_time_s": time.perf_counter() - t0, "num_reads": num_reads, "num_sweeps": num_sweeps,
              "kernel": "numba" if jit else "torch", "stage": "classical", "energy_anneal_raw": math.inf,
              "anneal_improved_rounds": 0, "rounds_run": 0}
             for e, (_, name) in zip(es, starts)]
    anneal_s = 0.0
    todo = np.ones(n, dtype=bool)
    max_rounds = max(int(rounds), 0)
    es_arr = es
    stage_of = np.array([i["stage"] for i in infos], dtype=object)
    raw_best = np.full(n, math.inf)
    rounds_run = np.zeros(n, dtype=np.int64)
    improved_rounds = np.zeros(n, dtype=np.int64)
    last = 0.0
    for r in range(max_rounds):
        if not todo.any():
            break
        if time_budget_s is not None:
            left = time_budget_s - (time.perf_counter() - t0)
            if left <= 0 or (r > 0 and last > left) or (r == 0 and round_estimate_s is not None
                                                         and round_estimate_s > left):
                break
        tr = time.perf_counter()
        new_todo = np.zeros(n, dtype=bool)
        for idx_all, arr in groups:
            sel = np.flatnonzero(todo[idx_all])
            if not len(sel):
                continue
            idx = idx_all[sel]
            sub = {key: v[sel] for key, v in arr.items()}
            ta = time.perf_counter()
            K, KF = _anneal_round(sub, np.stack([ks[j] for j in idx]),
                                  es_arr[idx] - np.array([problems[j].const for j in idx]),
                                  [child_seed(int(seeds[j]), r) for j in idx], num_reads, num_sweeps, hot, span,
                                  device, jit, schedule)
            anneal_s += time.perf_counter() - ta
            E = general_energy(sub, K)                              # B × R
            b = np.argmin(E, axis=1)
            ar = np.arange(len(idx))
            k_raw, e_raw = K[ar, b], E[ar, b]
            raw_best[idx] = np.minimum(raw_best[idx], e_raw)
            rounds_run[idx] = r + 1
            e_old = es_arr[idx]
            tol = 1e-12 * np.maximum(1.0, np.abs(e_old))
            won_raw = e_raw < e_old - tol
            k_new = np.where(won_raw[:, None], k_raw, np.stack([ks[j] for j in idx]))
            e_new = np.where(won_raw, e_raw, e_old)
            won_pol = np.zeros(len(idx), dtype=bool)
            if polish:      # every chain's final state and the raw best, as the neal pipeline polishes every sample
                C = np.concatenate([KF, k_raw[:, None, :]], axis=1)
                P = _descend([problems[j] for j in idx], C.reshape(-1, C.shape[-1]),
                             np.repeat(ar, C.shape[1]), jit, sub).reshape(C.shape)
                EP = general_energy(sub, P)
                bp = np.argmin(EP, axis=1)
                won_pol = EP[ar, bp] < e_new - tol
                k_new = np.where(won_pol[:, None], P[ar, bp], k_new)
                e_new = np.where(won_pol, EP[ar, bp], e_new)
            won = won_raw | won_pol
            for a in np.flatnonzero(won):
                j = idx[a]
                ks[j] = k_new[a].copy()
                stage_of[j] = "anneal" if (won_raw[a] or stage_of[j] == "anneal") else "polish"
            es_arr[idx] = e_new
            improved_rounds[idx] += won
            new_todo[idx] = won
        todo = np.ones(n, dtype=bool) if restarts else new_todo
        last = time.perf_counter() - tr
    wall = time.perf_counter() - t0
    for j in range(n):
        infos[j].update(energy=float(problems[j].energy(ks[j])), anneal_wall_time_s=anneal_s, wall_time_s=wall,
                        stage=str(stage_of[j]), energy_anneal_raw=float(raw_best[j]),
                        anneal_improved_rounds=int(improved_rounds[j]), rounds_run=int(rounds_run[j]))
    return [(ks[j], infos[j]) for j in range(n)]


def general_energy(arr: dict[str, np.ndarray], K: np.ndarray) -> np.ndarray:
    """E = c + gᵀk + ½kᵀAk of states K (B × S × m) of the stacked general forms ``arr`` (B problems): B × S."""
    Kf = K.astype(np.float64)
    return (arr["c"][:, None] + np.einsum("bsm,bm->bs", Kf, arr["g"])
            + 0.5 * np.einsum("bsm,bmn,bsn->bs", Kf, arr["A"], Kf, optimize=True))


def _anneal_round(arr: dict[str, np.ndarray], ks: np.ndarray, excess: np.ndarray, seeds: list[int],
                  num_reads: int, num_sweeps: int, hot: float, span: float, device: str, jit: bool,
                  schedule: str = "anneal") -> tuple[np.ndarray, np.ndarray]:
    """One round of ``num_reads`` chains per problem (general forms ``arr``, one size m) from its incumbent
    ``ks`` (B × m; ``excess``: E(ks) − const, which sets β, see :func:`beta_range_excess`): (best raw states, final states), each B × R × m int64 (the compiled
    kernel on the CPU, else the torch kernel on ``device``)."""
    import torch

    from qubo_nn.runtime import resolve_device
    from qubo_nn.samplers.batch_anneal import (anneal_batch, beta_range_excess, chain_keys, geometric_betas,
                                               temper_batch)

    br = beta_range_excess(torch.as_tensor(excess, dtype=torch.float64), hot, span)
    keys = chain_keys(torch.as_tensor(seeds, dtype=torch.int64), num_reads)
    k0 = np.ascontiguousarray(np.broadcast_to(ks[:, None, :], (ks.shape[0], num_reads, ks.shape[1])))
    if schedule == "tempering":
        ladder = geometric_betas(br, num_reads)
        if jit:
            from qubo_nn.samplers.jit_kernels import temper_levels

            out = temper_levels(arr["A"], arr["g"], arr["kmin"], arr["kmax"], k0, ladder.numpy(), num_sweeps,
                                keys.numpy())
            return out["k_best"], out["k"]
        dev = resolve_device(device)
        t = {key: torch.as_tensor(arr[key], device=dev) for key in ("A", "g", "kmin", "kmax")}
        out = temper_batch(t["A"], t["g"], t["kmin"], t["kmax"], torch.as_tensor(k0, device=dev), ladder.to(dev),
                           num_sweeps, keys.to(dev))
        return out["k_best"].cpu().numpy(), out["k"].cpu().numpy()
    betas = geometric_betas(br, num_sweeps)
    if jit:
        from qubo_nn.samplers.jit_kernels import anneal_levels

        out = anneal_levels(arr["A"], arr["g"], arr["kmin"], arr["kmax"], k0, betas.numpy(), keys.numpy())
        return out["k_best"], out["k"]
    dev = resolve_device(device)
    t = {key: torch.as_tensor(arr[key], device=dev) for key in ("A", "g", "kmin", "kmax")}
    out = anneal_batch(t["A"], t["g"], t["kmin"], t["kmax"], torch.as_tensor(k0, device=dev), betas.to(dev),
                       keys.to(dev))
    return out["k_best"].cpu().numpy(), out["k"].cpu().numpy()


def batch_task(task: dict[str, Any]) -> dict[str, Any] | None:
    """A batch of problems as one executor task (threads or Ray): ``task`` = {"problems", "seeds", "method"
    ("qubo", the default: :func:`solve_levels_batch`; "cd": :func:`classical_starts` "cd" only),
    "kwargs": solve_levels_batch keyword arguments, "keys": anything handed back, "deadline":
    time.time() after which it does not start (None: no deadline), "classical_past_deadline": a qubo
    task past its deadline still returns the classical start (CD) instead of None}. Returns {"keys", "levels",
    "stages"} or None when started after the deadline; the time left is its budget."""
    kwargs = dict(task.get("kwargs") or {})
    deadline = task.get("deadline")
    method = task.get("method", "qubo")
    if deadline is not None:
        left = deadline - time.time()
        if left <= 0 and not task.get("classical_past_deadline"):
            return None
        if left <= 0:       # qubo past its share: still CD's answer (the classical start), no anneal
            method = "cd"
        kwargs["time_budget_s"] = left
    if method == "cd":    # the cd method: GPTQ act-order + CD, batched (no anneal)
        res = classical_starts(task["problems"], "cd")
        return {"keys": task.get("keys"), "levels": [k for k, _ in res], "stages": ["cd"] * len(res)}
    res = solve_levels_batch(task["problems"], task["seeds"], **kwargs)
    rounds = max((i["rounds_run"] for _, i in res), default=0)
    per = res[0][1]["anneal_wall_time_s"] / (rounds * len(res)) if res and rounds else None
    return {"keys": task.get("keys"), "levels": [k for k, _ in res], "stages": [i["stage"] for _, i in res],
            "round_s_per_problem": per}
