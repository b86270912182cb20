"""Row rounding as tasks that can run on any executor (threads here, Ray workers elsewhere).

Head quantization and network quantization both solve many independent integer
problems (:class:`IntegerProblem`: a row, or a row's column group, of a weight matrix).
The driver builds each problem (the Hessian block needs the data and torch) and hands it to
:func:`qubo_nn.execution.executors.map_unordered` as a plain dict; the functions here solve it and return
plain arrays. An ``IntegerProblem`` is NumPy arrays only (H, target, scale, bounds, const), so a
task pickles compactly and this module imports neither torch nor dimod: a Ray worker starts
fast (dimod and the samplers load only when a ``qubo`` row runs).

Every task carries its own seed (derived by the driver exactly as in a serial loop), so a seeded
run gives the same levels with threads or Ray, in any completion order.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from qubo_nn.core.kernels import coordinate_descent, gptq
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.samplers.level_solvers import solve_levels



def head_row_task(task: dict[str, Any]) -> dict[str, Any]:
    """All methods of one head row (:func:`qubo_nn.workflows.head_quantize.quantize_head`).

    ``task``: ``{"problem": IntegerProblem, "rtn": (m,) levels, "qubo": None or solve_levels
    keyword arguments (encoding, sampler, seed, params, levels, refine_span)}``.

    Returns ``{"levels": {method: (m,) int64}, "energy": {method: E}, "wall": {method: s},
    "qubo_info": dict or None}``. Times: ``gptq``'s act-order rounding, ``cd`` = coordinate
    descent from it *plus* that GPTQ time (CDQuant's start is part of its cost), ``qubo`` its
    whole pipeline.
    """
    p = task["problem"]
    ks: dict[str, np.ndarray] = {"rtn": np.asarray(task["rtn"], dtype=np.int64)}
    wall = {"rtn": 0.0}
    t = time.perf_counter()
    ks["gptq-natural"] = gptq(p, act_order=False)
    wall["gptq-natural"] = time.perf_counter() - t
    t = time.perf_counter()
    ks["gptq"] = gptq(p, act_order=True)
    wall["gptq"] = time.perf_counter() - t
    t = time.perf_counter()
    ks["cd"] = coordinate_descent(p, ks["gptq"])[0]
    wall["cd"] = time.perf_counter() - t + wall["gptq"]
    qinfo = None
    if task.get("qubo") is not None:
        t = time.perf_counter()
        ks["qubo"], qinfo = solve_levels(p, "qubo", **task["qubo"])
        wall["qubo"] = time.perf_counter() - t
    return {"levels": ks, "energy": {m: float(p.energy(k)) for m, k in ks.items()}, "wall": wall,
            "qubo_info": qinfo}


def group_row_task(task: dict[str, Any]) -> dict[str, Any] | None:
    """One (row, column group) of a network layer re-solved by ``cd`` or ``qubo``
    (:func:`qubo_nn.workflows.layer_rounding.round_layer`), or None when the run's deadline has passed before it started.

    ``task``: ``{"problem": IntegerProblem, "method": "cd"|"qubo", "incumbent": (m,) GPTQ levels,
    "kwargs": solve_levels keyword arguments (seed, encoding, sampler, params),
    "deadline": time.time() after which no new row starts, or None}``. A qubo row gets the time
    left until the deadline as its budget. Returns ``{"levels", "stage", "kept"}``: the solver's
    levels when their energy is not above the incumbent's (``kept``), else the incumbent.
    """
    deadline = task.get("deadline")
    kwargs = dict(task.get("kwargs") or {})
    if deadline is not None:
        left = deadline - time.time()
        if left <= 0:
            return None
        if task["method"] == "qubo":
            kwargs["time_budget_s"] = left
    p = task["problem"]
    k, info = solve_levels(p, task["method"], **kwargs)
    inc = np.asarray(task["incumbent"], dtype=np.int64)
    kept = bool(p.energy(k) <= p.energy(inc))
    return {"levels": k if kept else inc, "stage": str(info.get("stage", task["method"])), "kept": kept}
