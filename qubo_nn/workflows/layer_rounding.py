"""How the rows of one weight layer are rounded (the step 4 of :mod:`qubo_nn.workflows.network_quantize`).

:func:`round_layer` rounds rows W (R × D) against one layer Hessian H (D × D) group by group with GPTQ's
error feedback (:mod:`curvature.sequential`) and, for ``cd``/``qubo``, re-solves each (row, group) problem
while the layer's time budget lasts (:func:`_solve_rows`, batched where the compiled kernels exist);
:func:`round_grouped_layer` and :func:`gptq_grouped` do it per conv group of a grouped/depthwise conv
(H: G × D × D); :func:`spin_rows` rounds rows on the binary/ternary grids (codes and a per-row α,
:func:`workflows.spin_quantize.spin_layer`) through :func:`round_layer`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qubo_nn.core.grid import nearest_level
from qubo_nn.core.kernels import gptq_rows
from qubo_nn.core.layout import column_plan
from qubo_nn.core.scales import qrange
from qubo_nn.curvature.sequential import sequential_groups
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import Executor, map_unordered, open_executor
from qubo_nn.execution.row_tasks import group_row_task
from qubo_nn.runtime import resolve_dtype

if TYPE_CHECKING:
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig


def spin_rows(W: torch.Tensor, H: torch.Tensor, bits: int, cfg: NetworkQuantizeConfig, budget: float,
               seed: int, executor: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Codes and per-row α of rows W (R × D) against one Hessian H (D × D) on ``cfg.grid``
    (:func:`workflows.spin_quantize.spin_layer`, its rounds by :func:`round_layer` with key ``seed``).
    The α alternation rounds against the same H, so its group factorization is computed once."""
    from qubo_nn.workflows.spin_quantize import spin_layer

    factor: list = []
    solved: dict[str, Any] = {}

    def round_fn(target, s, kr, method):
        if not factor and method != "rtn":
            plan = column_plan(W.shape[1], cfg.group_size, torch.diagonal(H) if cfg.act_order else None)
            factor.append(sequential_groups(H, plan, cfg.damping, dtype=resolve_dtype(cfg.factor_dtype)))
        k, inf = round_layer(target, H, s, bits, cfg, budget_s=budget, layer_seed=seed,
                             executor=executor, levels=kr, method=method, seq=factor[0] if factor else None)
        if method in ("cd", "qubo"):    # the one cd/qubo solve of the rows: its coverage and stages
            solved.update({x: inf[x] for x in ("stages", "rows_solved", "rows_total", "coverage") if x in inf})
        return k

    k, scale, info = spin_layer(W, H, cfg.grid, cfg.method, cfg.damping, round_fn)
    info.update(solved)
    return k, scale, info


def sum_group_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One record of a grouped conv's per-group spin infos: energies, rows and stages summed, the α
    iterations as the most any group took; ``alpha_energies`` summed position by position (a group
    that stopped early keeps its last energy)."""
    out: dict[str, Any] = {"grid": infos[0]["grid"], "conv_groups": len(infos),
                           "alpha_iterations": max(f["alpha_iterations"] for f in infos),
                           "energy_spin": float(sum(f["energy_spin"] for f in infos))}
    n = out["alpha_iterations"]
    out["alpha_energies"] = [float(sum(f["alpha_energies"][min(j, len(f["alpha_energies"]) - 1)] for f in infos))
                             for j in range(n)]
    for key in ("rows_solved", "rows_total"):
        if any(key in f for f in infos):
            out[key] = int(sum(f.get(key, 0) for f in infos))
    for f in infos:
        for st, c in f.get("stages", {}).items():
            out.setdefault("stages", {})[st] = out.get("stages", {}).get(st, 0) + c
    if "rows_total" in out:
        out["coverage"] = out["rows_solved"] / max(out["rows_total"], 1)
    return out


def round_grouped_layer(W: torch.Tensor, H: torch.Tensor, scale: torch.Tensor, bits: int,
                        cfg: NetworkQuantizeConfig, budget_s: float, layer_seed: int, executor: Any
                        ) -> tuple[torch.Tensor, dict[str, Any]]:
    """:func:`round_layer` per group of a grouped conv: rows g·R/G … (g+1)·R/G − 1 of W (R × D)
    against H[g] (H: G × D × D), with a share of ``budget_s`` by row count and the seed key
    ``child_seed(layer_seed, g)``. Energies, rows and stages are summed over the groups."""
    from qubo_nn.runtime import child_seed

    if cfg.method == "rtn":      # no Hessian involved
        return round_layer(W, H[0], scale, bits, cfg)
    if cfg.method == "gptq":     # all groups at once (a depthwise layer has hundreds of one-row groups)
        return gptq_grouped(W, H, scale, bits, cfg)
    G = H.shape[0]
    per = W.shape[0] // G
    ks, info = [], {"conv_groups": G, "groups": 0, "energy": 0.0}
    for g in range(G):
        rows = slice(g * per, (g + 1) * per)
        k, inf = round_layer(W[rows], H[g], scale[rows], bits, cfg, budget_s=budget_s * per / W.shape[0],
                             layer_seed=child_seed(layer_seed, g), executor=executor)
        ks.append(k)
        info["groups"] += inf["groups"]
        info["energy"] += inf.get("energy", 0.0)
        for key in ("rows_solved", "rows_total"):
            if key in inf:
                info[key] = info.get(key, 0) + inf[key]
        for st, n in inf.get("stages", {}).items():
            info.setdefault("stages", {})[st] = info.get("stages", {}).get(st, 0) + n
    if "rows_total" in info:
        info["coverage"] = info["rows_solved"] / max(info["rows_total"], 1)
    return torch.cat(ks), info


def gptq_grouped(W: torch.Tensor, H: torch.Tensor, scale: torch.Tensor, bits: int, cfg: NetworkQuantizeConfig
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """GPTQ (act-order per group when ``cfg.act_order``) of the rows of a grouped conv, all groups
    batched: rows g·R/G … of W (R × D) against H[g] (H: G × D × D), damped and factored exactly as
    :func:`curvature.sequential.sequential_groups` does for one Hessian (dead inputs get 1 on the
    diagonal, μ_g = damping · mean diag, U_g = P L_g⁻¹ P in ``cfg.factor_dtype``), then GPTQ's column
    loop over all D columns (the column groups of :func:`round_layer` give the same answer up to
    float rounding: its feedback is GPTQ's lazy batch update). Levels R × D (int64); info: energy
    ½ Σ_r (s_r k_r − w_r)ᵀ H̃_g (s_r k_r − w_r)."""
    qmin, qmax = qrange(bits)
    G, D = H.shape[0], H.shape[1]
    per = W.shape[0] // G
    Hd = H.to(torch.float64).clone()
    idx = torch.arange(D)
    diag0 = Hd[:, idx, idx].clone()
    Hd[:, idx, idx] = torch.where(diag0 == 0, torch.ones_like(diag0), diag0)
    mu = cfg.damping * Hd[:, idx, idx].mean(1)
    Hd[:, idx, idx] += mu[:, None]
    if cfg.act_order:
        order = torch.stack([torch.argsort(-d, stable=True) for d in diag0])        # G × D
    else:
        order = idx.expand(G, D)
    Hp = torch.gather(torch.gather(Hd, 1, order[:, :, None].expand(G, D, D)), 2, order[:, None, :].expand(G, D, D))
    L, bad = torch.linalg.cholesky_ex(Hp.to(resolve_dtype(cfg.factor_dtype)).flip(-2, -1))
    if bool((bad != 0).any()):
        raise QuboNNError(f"expected positive definite damped Hessians, got a singular one (raise the damping "
                          f"above {cfg.damping})")
    eye = torch.eye(D, dtype=L.dtype).expand(G, D, D)
    U = torch.linalg.solve_triangular(L, eye, upper=False).flip(-2, -1).to(torch.float64)
    w = W.reshape(G, per, D)
    s = scale.to(torch.float64).reshape(G, per)
    x = torch.gather(w, 2, order[:, None, :].expand(G, per, D)).clone()
    k = torch.empty_like(x, dtype=torch.long)
    for i in range(D):
        q = torch.clamp(torch.round(x[:, :, i] / s), qmin, qmax)
        k[:, :, i] = q.long()
        err = (x[:, :, i] - s * q) / U[:, i, i][:, None]
        x[:, :, i + 1:] -= err[:, :, None] * U[:, None, i, i + 1:]
    out = torch.empty_like(k)
    out.scatter_(2, order[:, None, :].expand(G, per, D), k)
    delta = s[:, :, None] * out.to(torch.float64) - w
    energy = 0.5 * float(torch.einsum("gri,gij,grj->", delta, Hd, delta))
    return out.reshape(W.shape[0], D), {"conv_groups": G, "groups": G, "energy": energy,
                                        "damping_mu": float(mu.mean())}


def _solver_executor(cfg: NetworkQuantizeConfig, executor: Executor | None = None):
    """Context manager giving the executor of the cd/qubo re-solves: ``executor`` when given (left
    open), None for rtn/gptq (nothing to re-solve), else a new one from ``cfg`` (closed on exit, also
    on error)."""
    if executor is not None or cfg.method not in ("cd", "qubo"):
        return contextlib.nullcontext(executor)
    return open_executor(cfg.executor_config())


def round_layer(W: torch.Tensor, H: torch.Tensor, scale: torch.Tensor, bits: int, cfg: NetworkQuantizeConfig,
                budget_s: float = math.inf, layer_seed: int = 0, executor: Executor | None = None,
                levels: tuple[int, int] | None = None, method: str | None = None, seq: Any = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Integer levels k (R × D, int64) of the rows of W (R × D, float64) on the grid ``scale`` (R,)
    by ``cfg.method`` against the layer Hessian H (D × D); info: groups, energies, stages.

    cd/qubo re-solve the rows of each group as tasks on ``executor`` (an open
    :class:`~qubo_nn.execution.executors.Executor`; None: one is opened from ``cfg`` for this layer).
    ``levels`` (kmin, kmax) replaces the signed b-bit range and ``method`` ``cfg.method`` (spin grids);
    ``seq`` a :func:`sequential_groups` factorization of this H already made (the spin grids' α
    alternation rounds the same layer several times)."""
    qmin, qmax = qrange(bits) if levels is None else levels
    if method is not None and method != cfg.method:
        cfg = replace(cfg, method=method)
    if cfg.method == "rtn":
        return nearest_level(W, scale[:, None], qmin, qmax).long(), {"groups": 1}
    if seq is None:
        plan = column_plan(W.shape[1], cfg.group_size, torch.diagonal(H) if cfg.act_order else None)
        seq = sequential_groups(H, plan, cfg.damping, dtype=resolve_dtype(cfg.factor_dtype))
    plan = seq.plan
    cur = W[:, plan.order].clone()
    K = torch.empty_like(cur, dtype=torch.long)
    energy = torch.zeros(W.shape[0], dtype=torch.float64)
    stages: dict[str, int] = {}
    spent = 0.0     # seconds of cd/qubo solving so far: unspent budget of a group carries over
    solved = 0
    with _solver_executor(cfg, executor) as ex:   # opened here only when none was passed
        for g in range(plan.num_groups):
            a, b = plan.starts[g], plan.starts[g + 1]
            Hg = seq.group_hessian(g).to(torch.float64)
            k = torch.from_numpy(gptq_rows(cur[:, a:b].numpy(), seq.U[a:b, a:b].to(torch.float64).numpy(),
                                           scale.numpy()[:, None], qmin, qmax))
            if cfg.method in ("cd", "qubo"):
                t0 = time.perf_counter()
                left = budget_s * (g + 1) / plan.num_groups - spent
                solved += _solve_rows(cur[:, a:b], Hg, scale, qmin, qmax, cfg, left, (layer_seed, g), stages, k, ex)
                spent += time.perf_counter() - t0
            delta = scale[:, None] * k.to(torch.float64) - cur[:, a:b]
            energy += 0.5 * torch.einsum("ri,ij,rj->r", delta, Hg, delta)
            seq.feedback(cur, g, delta)
            K[:, a:b] = k
    out = torch.empty_like(K)
    out[:, torch.as_tensor(plan.order)] = K
    info: dict[str, Any] = {"groups": plan.num_groups, "group_size": cfg.group_size,
                            "energy": float(energy.sum()), "damping_mu": seq.damping}
    if cfg.method in ("cd", "qubo"):
        stages.pop("_round_s_per_problem", None)
        info.update(stages=stages, rows_solved=solved, rows_total=plan.num_groups * W.shape[0],
                    coverage=solved / max(plan.num_groups * W.shape[0], 1))
    return out, info


def _solve_rows(w: torch.Tensor, Hg: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
                cfg: NetworkQuantizeConfig, budget_s: float, key: tuple[int, int], stages: dict[str, int],
                k: torch.Tensor, executor: Executor) -> int:
    """Rows of one group re-solved by ``levels.solve_levels`` (cd, qubo) in place of their GPTQ
    levels ``k`` (R × m, updated in place), as tasks on ``executor`` (:func:`row_tasks.group_row_task`),
    until ``budget_s`` seconds of wall time are spent: no row starts after the deadline (the rest
    keep GPTQ's answer, which every cd/qubo answer starts from or beats). A row's seed is
    ``child_seed(seed, layer, group, row)`` whichever worker runs it. Returns the number of rows solved."""
    from qubo_nn.core.problem import IntegerProblem
    from qubo_nn.samplers import child_seed

    m = w.shape[1]
    H = Hg.numpy()
    kmin, kmax = np.full(m, qmin, dtype=np.int64), np.full(m, qmax, dtype=np.int64)
    deadline = time.time() + budget_s
    extra: dict[str, Any] = {}
    if cfg.method == "qubo":
        extra = {"encoding": cfg.encoding, "sampler": cfg.sampler, "params": cfg.sampler_params or None}

    if (cfg.method == "qubo" and cfg.sampler == "batch-anneal") or (cfg.method == "cd" and _batched_cd()):
        return _solve_rows_batched(w, H, scale, kmin, kmax, cfg, deadline, key, stages, k, executor)

    def tasks():
        for r in range(w.shape[0]):
            if time.time() >= deadline:
                return
            prob = IntegerProblem(H=H, target=w[r].numpy(), scale=np.full(m, float(scale[r])), kmin=kmin, kmax=kmax)
            yield {"problem": prob, "method": cfg.method, "incumbent": k[r].numpy().copy(), "deadline": deadline,
                   "kwargs": {"seed": child_seed(cfg.seed, *key, r), **extra}}

    solved = 0
    with contextlib.closing(map_unordered(group_row_task, tasks(), executor)) as done:
        for r, res in done:
            if res is None:      # started after the deadline: keeps GPTQ's levels
                continue
            k[r] = torch.from_numpy(np.array(res["levels"], dtype=np.int64))
            stages[res["stage"]] = stages.get(res["stage"], 0) + 1
            solved += 1
    return solved


def _batched_cd() -> bool:
    """cd runs batched (GPTQ factorized once per group, compiled CD) where the compiled kernels exist;
    its levels are those of the row-by-row path (tests/test_jit_kernels.py)."""
    from qubo_nn.samplers import jit_kernels

    return jit_kernels.AVAILABLE


def _solve_rows_batched(w, H, scale, kmin, kmax, cfg, deadline, key, stages, k, executor) -> int:
    """The rows of one group as batches (:func:`level_solvers.batch_task`): all rows at once, split
    into one chunk per executor slot; each row keeps GPTQ's levels ``k`` unless its answer is not
    higher. ``cd``: GPTQ act-order + CD. ``qubo``: the batched annealer from CD's answer
    (:func:`level_solvers.solve_levels_batch`; unless ``sampler_params`` says otherwise ``restarts`` on
    and ``rounds`` 2: a second round of fresh chains from the incumbents where the group's budget share
    allows; ``{"rounds": 1000000}`` spends the whole share). Seeds as
    :func:`_solve_rows` (per row, batch-independent)."""
    from qubo_nn.core.problem import IntegerProblem
    from qubo_nn.samplers import child_seed
    from qubo_nn.samplers.level_solvers import _batch_params, batch_task

    m, R = w.shape[1], w.shape[0]
    probs = [IntegerProblem(H=H, target=w[r].numpy(), scale=np.full(m, float(scale[r])), kmin=kmin, kmax=kmax)
             for r in range(R)]
    seeds = [child_seed(cfg.seed, *key, r) for r in range(R)]
    chunks = np.array_split(np.arange(R), max(1, min(R, int(getattr(executor, "parallelism", 1) or 1))))
    kw = _batch_params({"restarts": True, "rounds": 2, **(cfg.sampler_params or {})}) if cfg.method == "qubo" else {}
    if cfg.method == "qubo" and "_round_s_per_problem" in stages:    # the last group's round time: no overrun
        kw["round_estimate_s"] = stages["_round_s_per_problem"] * R / max(1, len(chunks))
    tasks = ({"problems": [probs[r] for r in c], "seeds": [seeds[r] for r in c], "keys": c.tolist(), "method": cfg.method,
              "kwargs": {"k_start": "cd", **kw}, "deadline": deadline} for c in chunks if len(c))
    solved = 0
    with contextlib.closing(map_unordered(batch_task, tasks, executor)) as done:
        for _, res in done:
            if res is None:      # started after the deadline: keeps GPTQ's levels
                continue
            if res.get("round_s_per_problem"):
                stages["_round_s_per_problem"] = res["round_s_per_problem"]
            for r, kr, st in zip(res["keys"], res["levels"], res["stages"]):
                if probs[r].energy(kr) <= probs[r].energy(k[r].numpy()):
                    k[r] = torch.from_numpy(np.array(kr, dtype=np.int64))
                stages[st] = stages.get(st, 0) + 1
                solved += 1
    return solved
