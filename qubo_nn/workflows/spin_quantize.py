"""Binary and ternary rounding of head rows and network layers (issue 24; math in :mod:`qubo_nn.core.spins`).

Every method solves the same row objective E = const + ½(α c − t)ᵀH̃(α c − t) over codes c and the
row's scale α, alternating a code solver with the closed-form α refit (:func:`core.spins.alternate`)
until E stops falling. The methods are chained so that a stronger one starts where the weaker one
ended (and so is never above it):

- ``rtn``: nearest level at α (binary: sign; ternary: |t| > α/2), from the threshold-rule α
  (XNOR-Net mean|t|; TWN);
- ``gptq-natural`` / ``gptq``: GPTQ's sequential rounding in index / act-order, from the same α;
- ``cd``: coordinate descent (single + pair flips) from GPTQ act-order at each α, and from the previous
  codes, started at ``gptq``'s final α; its time includes gptq's;
- ``qubo``: the annealing pipeline (:func:`solve_levels` ``qubo``: best classical start, annealed windows
  polished by CD; binary one spin per weight, ternary :data:`TERNARY_ENCODING` unless a ternary
  encoding is configured) at each α, started at ``cd``'s final α and codes; its time includes cd's.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch

from qubo_nn.core.kernels import coordinate_descent, gptq, rtn
from qubo_nn.core.spins import (TERNARY_ENCODING, TERNARY_ENCODINGS, alpha_floor, alternate, codes_of_levels, init_alpha,
                                levels_of_codes, row_energy)
from qubo_nn.samplers.level_solvers import solve_levels

SPIN_METHODS = ("rtn", "gptq-natural", "gptq", "cd", "qubo")


def spin_encoding(grid: str, configured: str) -> str:
    """The encoding of annealed windows: binary rows have one bit per weight (any encoding is the same);
    ternary rows use ``configured`` when it is a ternary encoding, else :data:`TERNARY_ENCODING`."""
    if grid == "binary":
        return "unary"
    return configured if configured in TERNARY_ENCODINGS else TERNARY_ENCODING


def _cd(p, k_prev):
    k, _ = coordinate_descent(p, gptq(p, True))
    if k_prev is not None:
        k2, _ = coordinate_descent(p, k_prev)
        if p.energy(k2) < p.energy(k):
            k = k2
    return k


def spin_row_task(task: dict[str, Any]) -> dict[str, Any]:
    """All methods of one row (see the module docstring).

    ``task``: ``{"H" (m × m), "t" (m,), "const", "grid", "methods", "qubo": solve_levels keyword
    arguments (sampler, seed, params, refine_span, encoding, ...) or None, "max_iter"}``.
    Returns ``{"codes": {m: (m,) int64}, "alpha": {m: α}, "energy": {m: E}, "wall": {m: s},
    "iterations": {m: n}, "qubo_info": the last pipeline info or None}``.
    """
    H, t, const, grid = task["H"], np.asarray(task["t"], dtype=np.float64), float(task["const"]), task["grid"]
    methods = task["methods"]
    max_iter = int(task.get("max_iter", 20))
    codes, alpha, energy, wall, iters = {}, {}, {}, {}, {}
    a0 = init_alpha(t, grid)

    def run(name, solve, alpha0, start=None, extra=0.0):
        t0 = time.perf_counter()
        first = [start]

        def step(p, k_prev):
            if k_prev is None and first[0] is not None:
                k_prev, first[0] = first[0], None
            return solve(p, k_prev)

        c, a, info = alternate(H, t, grid, step, alpha0, const, max_iter)
        codes[name], alpha[name], iters[name] = c, a, info["iterations"]
        energy[name] = row_energy(H, t, a, c, const)
        wall[name] = time.perf_counter() - t0 + extra

    run("rtn", lambda p, k: rtn(p), a0)
    if "gptq-natural" in methods:
        run("gptq-natural", lambda p, k: gptq(p, False), a0)
    run("gptq", lambda p, k: gptq(p, True), a0)
    run("cd", _cd, alpha["gptq"], levels_of_codes(codes["gptq"], grid), wall["gptq"])
    qinfo = None
    if task.get("qubo") is not None:
        kw = dict(task["qubo"])
        seed = int(kw.pop("seed", 0))
        calls = [0]
        infos: list[dict] = []

        def anneal(p, k_prev):
            k, info = solve_levels(p, "qubo", seed=(seed + 7919 * calls[0]) % 2**31, **kw)
            calls[0] += 1
            if k_prev is not None:            # never above CD from the previous codes
                kc = _cd(p, k_prev)
                if p.energy(kc) < info["energy"]:
                    k, info = kc, {**info, "stage": "classical", "energy": float(p.energy(kc))}
            infos.append(info)
            return k

        run("qubo", anneal, alpha["cd"], levels_of_codes(codes["cd"], grid), wall["cd"])
        qinfo = {"stage": infos[-1]["stage"] if infos else "classical",
                 "stages": [i["stage"] for i in infos], "energy_classical": energy["cd"],
                 "energy_anneal_raw": min((i.get("energy_anneal_raw", np.inf) for i in infos), default=np.inf),
                 "wall_time_s": wall["qubo"] - wall["cd"]}
    return {"codes": codes, "alpha": alpha, "energy": energy, "wall": wall, "iterations": iters, "qubo_info": qinfo}


def spin_head_rows(source, cfg, methods: list[str], params: dict, timings: dict, progress: bool = False) -> dict:
    """Every class row of a head on ``cfg.grid`` by every method, as tasks on ``cfg``'s executor.

    ``source``: a :class:`curvature.head_ce.HeadCE` (the rows' damped Hessian blocks and targets, as
    for the signed grid). Returns {"codes": {m: C × D float64}, "scales": {m: (C,) float64 α},
    "energies": {m: [E_row]}, "wall": {m: s}, "qubo_info": summed pipeline info}; adds the Hessian
    time to ``timings["hessian_s"]``.
    """
    from qubo_nn.execution.executors import map_unordered
    from qubo_nn.samplers import child_seed

    C = source.rows
    qubo_kw = None
    if "qubo" in methods:
        qubo_kw = {"encoding": spin_encoding(cfg.grid, cfg.encoding), "sampler": cfg.sampler, "params": params,
                   "levels": 3, "refine_span": cfg.refine_span}

    def tasks():
        for c in range(C):
            t0 = time.perf_counter()
            p = source.row_problem(c, 1.0, -1, 1, cfg.damping_rel, cfg.use_grad)
            timings["hessian_s"] = timings.get("hessian_s", 0.0) + time.perf_counter() - t0
            yield {"H": p.H, "t": p.target, "const": p.const, "grid": cfg.grid, "methods": methods,
                   "qubo": None if qubo_kw is None else {**qubo_kw, "seed": child_seed(cfg.seed, c)}}

    per_row: list[dict | None] = [None] * C
    with contextlib.closing(map_unordered(spin_row_task, tasks(), cfg.executor_config(), progress=progress,
                                          desc=f"quantize {cfg.grid} rows", total=C)) as done:
        for c, res in done:
            per_row[c] = res
    out = {"codes": {m: torch.tensor(np.stack([r["codes"][m] for r in per_row]), dtype=torch.float64)
                     for m in methods},
           "scales": {m: torch.tensor([r["alpha"][m] for r in per_row], dtype=torch.float64) for m in methods},
           "energies": {m: [r["energy"][m] for r in per_row] for m in methods},
           "wall": {m: sum(r["wall"][m] for r in per_row) for m in methods},
           "iterations": {m: [r["iterations"][m] for r in per_row] for m in methods}}
    if qubo_kw is not None:
        infos = [r["qubo_info"] for r in per_row]
        out["qubo_info"] = {"grid": cfg.grid, "encoding": qubo_kw["encoding"],
                            "rows_improved": sum(i["stage"] != "classical" for i in infos),
                            "rows_anneal_stage": sum(i["stage"] == "anneal" for i in infos),
                            "energy_classical": float(sum(i["energy_classical"] for i in infos)),
                            "energy_anneal_raw": float(sum(i["energy_anneal_raw"] for i in infos)),
                            "sampler_wall_time_s": float(sum(i["wall_time_s"] for i in infos))}
    return out


def spin_layer(W: torch.Tensor, H: torch.Tensor, grid: str, method: str, damping: float,
               round_fn: Callable[[torch.Tensor, torch.Tensor, tuple[int, int], str], torch.Tensor],
               max_iter: int = 10) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Codes C (R × D int64, ±1 or −1/0/+1) and scales α (R,) of a layer's rows W (R × D, float64).

    ``round_fn(target, scale, (kmin, kmax), method)`` rounds every row to levels (the network's
    group-wise GPTQ with error feedback, ``network_quantize.round_layer``) on the grid
    scale·k − target (:func:`core.spins.spin_problem`'s shift for binary). α starts at the
    threshold rule and alternates with ``rtn`` (method rtn) or ``gptq`` codes until the layer
    energy ½Σ_r (α_r c_r − w_r)ᵀH̃(α_r c_r − w_r) (H̃ = H + μI, μ = damping·mean diag H) stops
    falling; cd and qubo then run once at the final α (their budget is spent once), α is refit for
    their codes, and they are kept when that energy is lower. Info: α iterations and energies,
    ``energy_spin`` the returned codes' energy (the lowest of ``alpha_energies``).
    """
    W = W.to(torch.float64)
    Hd = H.to(torch.float64).clone()
    dead = torch.diagonal(Hd) == 0
    Hd[dead, dead] = 1.0
    Hd += damping * float(torch.diagonal(Hd).mean()) * torch.eye(Hd.shape[0], dtype=torch.float64)
    HW = W @ Hd
    kr = (0, 1) if grid == "binary" else (-1, 1)
    alpha = torch.tensor([init_alpha(w, grid) for w in W.numpy()], dtype=torch.float64)
    floor = torch.tensor([alpha_floor(w) for w in W.numpy()], dtype=torch.float64)

    def solve(alpha: torch.Tensor, m: str) -> torch.Tensor:
        if grid == "binary":
            k = round_fn(W + alpha[:, None], 2 * alpha, kr, m)
        else:
            k = round_fn(W, alpha, kr, m)
        return torch.as_tensor(codes_of_levels(k.numpy(), grid))

    def refit(Cd: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, float]:
        Cf = Cd.to(torch.float64)
        HC = Cf @ Hd
        den = (Cf * HC).sum(1)
        num = (Cf * HW).sum(1)
        a = torch.where(den > 0, torch.maximum(num / den.clamp_min(1e-300), floor), alpha)
        R = a[:, None] * Cf - W
        return a, float(0.5 * ((R @ Hd) * R).sum())

    first = "rtn" if method == "rtn" else "gptq"
    best, energies = None, []
    for _ in range(max_iter):
        Cd = solve(alpha, first)
        alpha, e = refit(Cd, alpha)
        energies.append(e)
        if best is not None and e >= best[2] * (1 - 1e-10):
            if e < best[2]:
                best = (Cd, alpha, e)
            break
        best = (Cd, alpha, e)
    Cd, alpha, e = best
    if method in ("cd", "qubo"):
        C2 = solve(alpha, method)
        a2, e2 = refit(C2, alpha)
        energies.append(e2)
        if e2 < e:                    # kept unless the refit left it above the alternation's best
            Cd, alpha, e = C2, a2, e2
    return Cd.to(torch.int64), alpha, {"grid": grid, "alpha_iterations": len(energies), "alpha_energies": energies,
                                       "energy_spin": e}
