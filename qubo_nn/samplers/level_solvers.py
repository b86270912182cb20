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
BATCH_PARAMS = {"num_reads": 4, "num_sweeps": 100, "device": "cpu", "restarts": False}


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
        (k, binfo), = solve_levels_batch([p], [seed], time_budget_s=time_budget_s, rounds=rounds,
                                         span=30.0 if refine_span is None else refine_span, **_batch_params(params))
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
    unknown = sorted(set(params) - set(BATCH_PARAMS))
    if unknown:
        raise QuboNNError(f"sampler {BATCH_SAMPLER!r} does not accept parameter(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(BATCH_PARAMS)}")
    out = {**BATCH_PARAMS, **params}
    for key in ("num_reads", "num_sweeps"):
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
    arr = _general_forms(problems) if jit else None
    names = ["gptq"] if kind == "cd" else ["gptq", "gptq-natural", "rtn"]
    starts = {"gptq": act}
    if kind == "best":
        starts["gptq-natural"] = gptq_batch(problems, False)
        starts["rtn"] = np.stack([rtn(p) for p in problems])
    K = _descend(problems, np.concatenate([starts[x] for x in names]), np.tile(np.arange(n), len(names)), jit, arr)
    out = []
    for j, p in enumerate(problems):
        best_k, best_e, best_name = None, math.inf, ""
        for a, name in enumerate(names):
            e = float(p.energy(K[a * n + j]))
            if e < best_e:
                best_k, best_e, best_name = K[a * n + j], e, f"cd<-{name}"
        out.append((best_k, best_name))
    return out


def solve_levels_batch(problems: list[IntegerProblem], seeds: list[int], *, k_start: Any = "best",
                       num_reads: int = 4, num_sweeps: int = 100, span: float = 30.0, hot: float = 0.3, rounds: int = 1,
                       device: str = "cpu", time_budget_s: float | None = None, polish: bool = True,
                       restarts: bool = False) -> list[tuple[np.ndarray, dict]]:
    """Levels of many problems at once: classical start → batched anneal around it → CD polish, best kept.

    For each problem: the start (``k_start``: "best", "cd", "gptq" (see :func:`classical_start`) or
    a list of (m,) level arrays), then up to ``rounds`` rounds of ``num_reads`` chains × ``num_sweeps``
    Metropolis sweeps over its levels (:func:`qubo_nn.samplers.batch_anneal.anneal_batch`, geometric β
    from β_hot to ``span``·β_hot, β_hot from the problem's own scale: an uphill move of ``hot`` times
    the start's excess E(k_start) − const is accepted with probability ½), all problems of one size m
    in one tensor batch; every chain's final state and the lowest raw state are polished by coordinate
    descent (``polish``), and the lowest of start / raw / polished kept. A later round re-anneals only
    the problems the last one improved; with ``restarts`` every round re-anneals every problem from its
    incumbent (fresh chains) until ``time_budget_s`` is spent (``rounds`` then caps nothing below 10⁶).
    ``time_budget_s`` stops starting rounds (a round is not started when the last one took longer than
    the time left). Problem j's chains draw from ``seeds[j]`` only, so its answer does not depend on
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
    es = [float(p.energy(k)) for p, k in zip(problems, ks)]
    infos = [{"method": "qubo", "sampler": BATCH_SAMPLER, "energy_classical": e, "classical_start": name,
              "classical_wall_time_s": time.perf_counter() - t0, "num_reads": num_reads, "num_sweeps": num_sweeps,
              "kernel": "numba" if jit else "torch", "stage": "classical", "energy_anneal_raw": math.inf,
              "anneal_improved_rounds": 0, "rounds_run": 0}
             for e, (_, name) in zip(es, starts)]
    anneal_s = 0.0
    todo = list(range(n))
    max_rounds = 10**6 if restarts else max(int(rounds), 0)
    last = 0.0
    for r in range(max_rounds):
        if not todo:
            break
        if time_budget_s is not None:
            left = time_budget_s - (time.perf_counter() - t0)
            if left <= 0 or (r > 0 and last > left):
                break
        tr = time.perf_counter()
        improved = []
        todo_set = set(todo)
        for idx in by_m.values():
            idx = [j for j in idx if j in todo_set]
            if not idx:
                continue
            ta = time.perf_counter()
            K, KF = _anneal_round([problems[j] for j in idx], [ks[j] for j in idx], [es[j] for j in idx],
                                  [child_seed(int(seeds[j]), r) for j in idx], num_reads, num_sweeps, hot, span,
                                  device, jit)
            anneal_s += time.perf_counter() - ta
            sub = [problems[j] for j in idx]
            cands = _polish_candidates(sub, K, KF, polish, jit)
            for a, j in enumerate(idx):
                p, info = problems[j], infos[j]
                E = p.energy(K[a])
                b = int(np.argmin(E))
                info["energy_anneal_raw"] = min(info["energy_anneal_raw"], float(E[b]))
                info["rounds_run"] = r + 1
                e, stage = es[j], None
                tol = 1e-12 * max(1.0, abs(e))
                if E[b] < e - tol:
                    ks[j], es[j], stage = K[a, b].copy(), float(E[b]), "anneal"
                for kp in cands[a]:
                    ep = float(p.energy(kp))
                    if ep < es[j] - tol:
                        ks[j], es[j], stage = kp, ep, stage or "polish"
                if stage is not None:
                    info["anneal_improved_rounds"] += 1
                    info["stage"] = "anneal" if "anneal" in (info["stage"], stage) else "polish"
                    improved.append(j)
        todo = list(range(n)) if restarts else improved
        last = time.perf_counter() - tr
    wall = time.perf_counter() - t0
    for j in range(n):
        infos[j].update(energy=es[j], anneal_wall_time_s=anneal_s, wall_time_s=wall)
    return [(ks[j], infos[j]) for j in range(n)]


def _anneal_round(problems: list[IntegerProblem], ks: list[np.ndarray], es: list[float], seeds: list[int],
                  num_reads: int, num_sweeps: int, hot: float, span: float, device: str, jit: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One round of ``num_reads`` chains per problem (one size m) from its incumbent: (best raw states,
    final states), each B × R × m int64 (the compiled kernel on the CPU, else the torch kernel)."""
    import torch

    from qubo_nn.samplers.batch_anneal import anneal_batch, beta_range_excess, chain_keys, geometric_betas, problem_arrays

    arr = problem_arrays(problems, "cpu" if jit else device)
    dev = arr["A"].device
    seed_t = torch.as_tensor(seeds, dtype=torch.int64, device=dev)
    excess = torch.as_tensor([e - p.const for p, e in zip(problems, es)], dtype=torch.float64, device=dev)
    betas = geometric_betas(beta_range_excess(excess, hot, span), num_sweeps)
    keys = chain_keys(seed_t, num_reads)
    k0 = torch.as_tensor(np.stack(ks), device=dev)[:, None, :].expand(-1, num_reads, -1).contiguous()
    if jit:
        from qubo_nn.samplers.jit_kernels import anneal_levels

        out = anneal_levels(arr["A"].numpy(), arr["g"].numpy(), arr["kmin"].numpy(), arr["kmax"].numpy(),
                            k0.numpy(), betas.numpy(), keys.numpy())
        return out["k_best"], out["k"]
    out = anneal_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], k0, betas, keys)
    return out["k_best"].cpu().numpy(), out["k"].cpu().numpy()


def _polish_candidates(problems: list[IntegerProblem], K: np.ndarray, KF: np.ndarray, polish: bool, jit: bool
                       ) -> list[list[np.ndarray]]:
    """Per problem a: every chain's final state and its lowest raw state, each polished by coordinate
    descent (the neal pipeline polishes every sample), as one batch of descents; [] without ``polish``."""
    if not polish:
        return [[] for _ in problems]
    rows, owner = [], []
    for a, p in enumerate(problems):
        b = int(np.argmin(p.energy(K[a])))
        uniq = np.unique(np.concatenate([KF[a], K[a, b:b + 1]]), axis=0)
        rows.append(uniq)
        owner.extend([a] * len(uniq))
    owner_arr = np.asarray(owner, dtype=np.int64)
    P = _descend(problems, np.concatenate(rows), owner_arr, jit)
    out: list[list[np.ndarray]] = [[] for _ in problems]
    for kp, a in zip(P, owner_arr):
        out[a].append(kp)
    return out


def batch_task(task: dict[str, Any]) -> dict[str, Any] | None:
    """A batch of problems as one executor task (threads or Ray): ``task`` = {"problems", "seeds",
    "kwargs": solve_levels_batch keyword arguments, "keys": anything handed back, "deadline":
    time.time() after which it does not start (None: no deadline)}. Returns {"keys", "levels",
    "stages"} or None when started after the deadline; the time left is its budget."""
    kwargs = dict(task.get("kwargs") or {})
    deadline = task.get("deadline")
    if deadline is not None:
        left = deadline - time.time()
        if left <= 0:
            return None
        kwargs["time_budget_s"] = left
    res = solve_levels_batch(task["problems"], task["seeds"], **kwargs)
    return {"keys": task.get("keys"), "levels": [k for k, _ in res], "stages": [i["stage"] for _, i in res]}
