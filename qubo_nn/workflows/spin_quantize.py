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
- ``qubo``: annealing from ``cd``'s final α and codes; its time includes cd's. With the default sampler
  ``batch-anneal`` every row of the head is annealed in ONE tensor batch (:func:`anneal_spin_rows`:
  batch-anneal's kernel from the cd codes at the cd α, the best chain polished by CD, then α refit and
  CD alternation, repeated on the rows that improved); with a dimod sampler (``neal``, ...) each row
  alternates the full :func:`solve_levels` pipeline (best classical start, annealed windows polished
  by CD; binary one spin per weight, ternary :data:`TERNARY_ENCODING` unless a ternary encoding is
  configured) with the α refit (the path recorded at 658 s per digits head of 10 rows; profiled: with
  BLAS threads beyond the 2 shared cores one 512² Cholesky took 1 s, and GPTQ refactors H̃ at every α
  step — :class:`RowGptq` keeps the factor; the cd alternation itself is ≈ 2·20 CD calls per row).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch

from qubo_nn.core.kernels import coordinate_descent, gptq, rtn
from qubo_nn.core.spins import (TERNARY_ENCODING, TERNARY_ENCODINGS, alpha_floor, alternate, codes_of_levels, init_alpha,
                                levels_of_codes, refit_alpha, row_energy, spin_problem)
from qubo_nn.errors import QuboNNError
from qubo_nn.samplers.level_solvers import BATCH_SAMPLER, solve_levels

SPIN_METHODS = ("rtn", "gptq-natural", "gptq", "cd", "qubo")


def spin_encoding(grid: str, configured: str) -> str:
    """The encoding of annealed windows: binary rows have one bit per weight (any encoding is the same);
    ternary rows use ``configured`` when it is a ternary encoding, else :data:`TERNARY_ENCODING`."""
    if grid == "binary":
        return "unary"
    return configured if configured in TERNARY_ENCODINGS else TERNARY_ENCODING


class RowGptq:
    """GPTQ (:func:`core.kernels.gptq`) on one row's H̃ at any scale α: the column order and the Cholesky
    factor U of H̃⁻¹ do not depend on α (nor on the target), so they are computed once per row and order
    rather than at every step of the α alternation (two Choleskys and a triangular solve, O(m³): most of
    a step's time at m = 512). ``RowGptq(H)(p, act_order)`` == ``gptq(p, act_order)`` for every
    problem ``p`` with ``p.H`` equal to H."""

    def __init__(self, H: np.ndarray):
        self.H = np.asarray(H, dtype=np.float64)
        self._factors: dict[bool, tuple[np.ndarray, np.ndarray]] = {}

    def factor(self, act_order: bool) -> tuple[np.ndarray, np.ndarray]:
        if act_order not in self._factors:
            from qubo_nn.core.problem import _cholesky

            m = self.H.shape[0]
            order = np.argsort(-np.diag(self.H), kind="stable") if act_order else np.arange(m)
            L = _cholesky(self.H[np.ix_(order, order)], "Hessian block")
            Linv = np.linalg.solve(L, np.eye(m))
            self._factors[act_order] = (order, _cholesky(Linv.T @ Linv, "inverse Hessian").T)
        return self._factors[act_order]

    def __call__(self, p, act_order: bool = True) -> np.ndarray:
        from qubo_nn.core.kernels import gptq_rows

        order, U = self.factor(act_order)
        k = gptq_rows(p.target[order][None], U, p.scale[order][None], p.kmin[order][None], p.kmax[order][None])[0]
        out = np.empty(p.m, dtype=np.int64)
        out[order] = k
        return out


def _cd(p, k_prev, gq=gptq):
    k, _ = coordinate_descent(p, gq(p, True))
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
    gq = RowGptq(H)

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
        run("gptq-natural", lambda p, k: gq(p, False), a0)
    run("gptq", lambda p, k: gq(p, True), a0)
    run("cd", lambda p, k: _cd(p, k, gq), alpha["gptq"], levels_of_codes(codes["gptq"], grid), wall["gptq"])
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
                kc = _cd(p, k_prev, gq)
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


def _cd_alternation(H, t, grid, alpha, const, k_start, max_iter):
    """CD ↔ α alternation from the levels ``k_start`` (each code solve: CD from the previous codes)."""
    first = [k_start]

    def step(p, k_prev):
        if k_prev is None and first[0] is not None:
            k_prev, first[0] = first[0], None
        return coordinate_descent(p, k_prev)[0]

    return alternate(H, t, grid, step, alpha, const, max_iter)


def _anneal_raw(probs, starts, seeds, num_reads, num_sweeps, span, hot, device) -> list[np.ndarray]:
    """The lowest raw state (levels) of each problem's chains: batch-anneal's kernel as
    :func:`solve_levels_batch` runs it (β from each start's excess, geometric, one key per problem and
    read), without its polish of every chain — CD from all 4 chains' final states was 90 % of this stage's
    time on the digits head (300 s of 306 s per seed, 2 shared cores); here only the best raw chain is polished."""
    import torch

    from qubo_nn.samplers.batch_anneal import anneal_batch, beta_range_excess, chain_keys, geometric_betas, problem_arrays

    arr = problem_arrays(probs, device)
    dev = arr["A"].device
    k0 = torch.as_tensor(np.stack(starts), device=dev)[:, None, :].expand(-1, num_reads, -1).contiguous()
    excess = torch.as_tensor([float(p.energy(k)) - p.const for p, k in zip(probs, starts)], dtype=torch.float64, device=dev)
    res = anneal_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], k0,
                       geometric_betas(beta_range_excess(excess, hot, span), num_sweeps),
                       chain_keys(torch.as_tensor(seeds, dtype=torch.int64, device=dev), num_reads))
    K = res["k_best"].cpu().numpy()
    return [K[b, int(np.argmin(p.energy(K[b])))].copy() for b, p in enumerate(probs)]


def anneal_spin_rows(rows: list[dict], grid: str, codes0: list[np.ndarray], alpha0: list[float], seeds: list[int], *,
                     num_reads: int = 4, num_sweeps: int = 100, span: float = 30.0, hot: float = 0.3,
                     device: str = "cpu", alternations: int = 3, max_iter: int = 5) -> list[dict]:
    """The batched annealing stage of ``qubo`` on many spin rows at once (the rows of a head).

    ``rows``: [{"H" (m × m), "t" (m,), "const"}]; ``codes0``/``alpha0``: each row's start (cd's codes and α).
    One alternation: every active row's :func:`spin_problem` at its α, all annealed together by batch-anneal's
    kernel (``num_reads`` chains × ``num_sweeps`` sweeps from the start's levels, β as :func:`solve_levels_batch`;
    row j draws from ``child_seed(seeds[j], alternation)`` only, so its answer does not depend on the other
    rows); each row's lowest raw chain is polished by CD; for each row where that is lower: α refit and ≤ ``max_iter``
    steps of the CD ↔ α alternation from them (:func:`core.spins.alternate`, CD from the previous codes:
    the restart from GPTQ at every α that ``cd`` makes is what made this stage cost 12 s per improved
    digits row); a row's result is kept only if E fell. The next
    alternation re-anneals only the rows that improved (at their new α), up to ``alternations``.

    Returns per row {"codes", "alpha", "energy", "stage" ("classical": nothing beat the start; else the
    batch stage of the last improvement, "anneal" or "polish"), "stages", "energy_anneal_raw", "improved"
    (alternations that lowered E)} and the batch's "anneal_wall_time_s" (shared).
    """
    from qubo_nn.runtime import child_seed

    n = len(rows)
    out = []
    for r, c, a in zip(rows, codes0, alpha0):
        c = np.asarray(c, dtype=np.int64)
        out.append({"codes": c, "alpha": float(a), "energy": row_energy(r["H"], r["t"], a, c, r["const"]),
                    "stage": "classical", "stages": [], "energy_anneal_raw": np.inf, "improved": 0})
    todo = list(range(n))
    anneal_s = 0.0
    for it in range(max(int(alternations), 0)):
        if not todo:
            break
        probs = [spin_problem(rows[j]["H"], rows[j]["t"], out[j]["alpha"], grid, rows[j]["const"]) for j in todo]
        starts = [levels_of_codes(out[j]["codes"], grid) for j in todo]
        t0 = time.perf_counter()
        raw = _anneal_raw(probs, starts, [child_seed(int(seeds[j]), it) for j in todo], num_reads, num_sweeps, span, hot,
                          device)
        anneal_s += time.perf_counter() - t0
        improved = []
        for j, p, k0, k_raw in zip(todo, probs, starts, raw):
            o, r = out[j], rows[j]
            e0, e_raw = float(p.energy(k0)), float(p.energy(k_raw))
            o["energy_anneal_raw"] = min(o["energy_anneal_raw"], e_raw)
            k, _ = coordinate_descent(p, k_raw)            # one polish: the raw best chain only
            tol = 1e-12 * max(1.0, abs(e0))
            stage = "anneal" if e_raw < e0 - tol else "polish" if float(p.energy(k)) < e0 - tol else "classical"
            o["stages"].append(stage)
            if stage == "classical":
                continue
            c = codes_of_levels(k, grid)
            a = refit_alpha(r["H"], r["t"], c, o["alpha"])
            c2, a2, _ = _cd_alternation(r["H"], r["t"], grid, a, r["const"], levels_of_codes(c, grid), max_iter)
            e2 = row_energy(r["H"], r["t"], a2, c2, r["const"])
            if e2 < o["energy"] - 1e-12 * max(1.0, abs(o["energy"])):
                o.update(codes=c2, alpha=a2, energy=e2, stage=stage, improved=o["improved"] + 1)
                improved.append(j)
        todo = improved
    for o in out:
        o["anneal_wall_time_s"] = anneal_s
    return out


def spin_head_rows(source, cfg, methods: list[str], params: dict, timings: dict, progress: bool = False,
                   classical: dict | None = None, keep_rows: bool = False) -> dict:
    """Every class row of a head on ``cfg.grid`` by every method, as tasks on ``cfg``'s executor.

    ``source``: a :class:`curvature.head_ce.HeadCE` (the rows' damped Hessian blocks and targets, as
    for the signed grid). Returns {"codes": {m: C × D float64}, "scales": {m: (C,) float64 α},
    "energies": {m: [E_row]}, "wall": {m: s}, "qubo_info": summed pipeline info, "rows": the rows'
    {"H", "t", "const"} when the batched stage ran}; adds the Hessian time to ``timings["hessian_s"]``.
    With ``cfg.sampler == "batch-anneal"`` the per-row tasks run rtn … cd and :func:`anneal_spin_rows`
    anneals every row at once afterwards (``params``: num_reads, num_sweeps, device). ``classical``:
    an earlier return of this function on the same head and grid (the methods before qubo do not depend
    on the seed; it must hold "rows": ``keep_rows`` or the batched stage): only the annealing stage is
    run again, with ``cfg.seed``.
    """
    from qubo_nn.execution.executors import map_unordered
    from qubo_nn.samplers import child_seed

    C = source.rows
    batched = "qubo" in methods and cfg.sampler == BATCH_SAMPLER
    qubo_kw = None
    if "qubo" in methods and not batched:
        qubo_kw = {"encoding": spin_encoding(cfg.grid, cfg.encoding), "sampler": cfg.sampler, "params": params,
                   "levels": 3, "refine_span": cfg.refine_span}
    row_methods = [m for m in methods if m != "qubo" or not batched]
    if classical is not None and batched:
        out = {k: {m: v for m, v in classical[k].items() if m != "qubo"}
               for k in ("codes", "scales", "energies", "wall", "iterations")}
        out["rows"] = classical["rows"]
    else:
        rows_kept: list[dict | None] = [None] * C

        def tasks():
            for c in range(C):
                t0 = time.perf_counter()
                p = source.row_problem(c, 1.0, -1, 1, cfg.damping_rel, cfg.use_grad)
                timings["hessian_s"] = timings.get("hessian_s", 0.0) + time.perf_counter() - t0
                if batched or keep_rows:
                    rows_kept[c] = {"H": p.H, "t": np.asarray(p.target, dtype=np.float64), "const": float(p.const)}
                yield {"H": p.H, "t": p.target, "const": p.const, "grid": cfg.grid, "methods": row_methods,
                       "qubo": None if qubo_kw is None else {**qubo_kw, "seed": child_seed(cfg.seed, c)}}

        per_row: list[dict | None] = [None] * C
        with contextlib.closing(map_unordered(spin_row_task, tasks(), cfg.executor_config(), progress=progress,
                                              desc=f"quantize {cfg.grid} rows", total=C)) as done:
            for c, res in done:
                per_row[c] = res
        out = {"codes": {m: torch.tensor(np.stack([r["codes"][m] for r in per_row]), dtype=torch.float64)
                         for m in row_methods},
               "scales": {m: torch.tensor([r["alpha"][m] for r in per_row], dtype=torch.float64) for m in row_methods},
               "energies": {m: [r["energy"][m] for r in per_row] for m in row_methods},
               "wall": {m: sum(r["wall"][m] for r in per_row) for m in row_methods},
               "iterations": {m: [r["iterations"][m] for r in per_row] for m in row_methods}}
        if qubo_kw is not None:
            infos = [r["qubo_info"] for r in per_row]
            out["qubo_info"] = {"grid": cfg.grid, "encoding": qubo_kw["encoding"],
                                "rows_improved": sum(i["stage"] != "classical" for i in infos),
                                "rows_anneal_stage": sum(i["stage"] == "anneal" for i in infos),
                                "energy_classical": float(sum(i["energy_classical"] for i in infos)),
                                "energy_anneal_raw": float(sum(i["energy_anneal_raw"] for i in infos)),
                                "sampler_wall_time_s": float(sum(i["wall_time_s"] for i in infos))}
        if batched or keep_rows:
            out["rows"] = rows_kept
    if batched:
        t0 = time.perf_counter()
        from qubo_nn.samplers.level_solvers import _batch_params

        kw = _batch_params(params)          # num_reads, num_sweeps, device; anything else is refused
        extra = sorted(set(params or {}) & {"restarts", "schedule", "rounds"})
        if extra:
            raise QuboNNError(f"the spin heads' batched stage does not take {', '.join(extra)}; "
                              "expected some of num_reads, num_sweeps, device")
        kw = {key: kw[key] for key in ("num_reads", "num_sweeps", "device")}
        res = anneal_spin_rows(out["rows"], cfg.grid, [c.numpy().astype(np.int64) for c in out["codes"]["cd"]],
                               out["scales"]["cd"].tolist(), [child_seed(cfg.seed, c) for c in range(C)],
                               span=30.0 if cfg.refine_span is None else float(cfg.refine_span), **kw)
        stage_s = time.perf_counter() - t0
        out["codes"]["qubo"] = torch.tensor(np.stack([r["codes"] for r in res]), dtype=torch.float64)
        out["scales"]["qubo"] = torch.tensor([r["alpha"] for r in res], dtype=torch.float64)
        out["energies"]["qubo"] = [r["energy"] for r in res]
        out["wall"]["qubo"] = out["wall"]["cd"] + stage_s
        out["iterations"]["qubo"] = [len(r["stages"]) for r in res]
        out["qubo_info"] = {"grid": cfg.grid, "sampler": BATCH_SAMPLER, "encoding": "levels (no BQM)",
                            "rows_improved": sum(r["stage"] != "classical" for r in res),
                            "rows_anneal_stage": sum(r["stage"] == "anneal" for r in res),
                            "energy_classical": float(sum(out["energies"]["cd"])),
                            "energy_anneal_raw": float(sum(r["energy_anneal_raw"] for r in res)),
                            "sampler_wall_time_s": float(res[0]["anneal_wall_time_s"]) if res else 0.0,
                            "stage_wall_time_s": stage_s, "alternations": [len(r["stages"]) for r in res]}
    return out


def spin_layer(W: torch.Tensor, H: torch.Tensor, grid: str, method: str, damping: float,
               round_fn: Callable[[torch.Tensor, torch.Tensor, tuple[int, int], str], torch.Tensor],
               max_iter: int = 10) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Codes C (R × D int64, ±1 or −1/0/+1) and scales α (R,) of a layer's rows W (R × D, float64).

    ``round_fn(target, scale, (kmin, kmax), method)`` rounds every row to levels (the network's
    group-wise GPTQ with error feedback, ``layer_rounding.round_layer``) on the grid
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
