"""Low-bit FC heads: per-row b-bit grids, round-to-nearest, GPTQ-style greedy and QUBO rounding.

Grid. Every class row c of W gets its own scale s_c; a quantized weight is W[c, d] = s_c · q with
an integer q ∈ [qmin, qmax] = [−2^(b−1), 2^(b−1) − 1] (:mod:`qubo_nn.core.scales`: ``qrange``,
``grid_scale`` with the ``maxabs`` and ``mse`` rules, ``round_to_grid``; re-exported here).

The bias stays in full precision (common practice: it is C numbers against C·D weights, and its
quantization error is not reduced by any rounding choice), so the block of row c is its D
weights only; ``refit_bias`` re-fits it afterwards with the weights frozen (convex, L-BFGS).

Objective. All methods round the same thing: the local model of the row's loss at the fp32 head,
from :class:`curvature.head_ce.HeadCE` (the exact task-loss Hessian block H of the class row), damped as in
GPTQ by μ = ``damping_rel`` · mean(diag H) (:func:`qubo_nn.core.model.damping_mu`):

    E(Δ) = L0 + γ·gᵀΔ + ½ Δᵀ (H + μI) Δ,      Δ = w_quantized − w_fp32,

with γ = 0 (``use_grad=False``, default: GPTQ's objective, the quadratic of the weight change
only; the energy is then L0 + ½ΔᵀH̃Δ, the predicted loss of a head at a stationary point) or γ = 1
(``use_grad=True``: E is the row's full predicted loss). For γ = 1, E(Δ) = const + ½ (w − w*)ᵀ H̃ (w − w*)
with the damped Newton target w* = w_fp32 − H̃⁻¹g (:func:`qubo_nn.core.problem.newton_target`), so
GPTQ's update applied to w* minimises E; for
γ = 0, w* = w_fp32 and it is classic GPTQ.

Why no gradient by default (measured on the old SGD head, before the reference heads; that
ablation is no longer in results/): an SGD head is not at a stationary point, so gᵀΔ is real, but with
GPTQ's small damping (1% of the mean diagonal) the model is trusted far beyond where it holds:
H̃⁻¹g is huge along the many low-curvature directions of correlated post-ReLU features, and each
row is optimised as if the others stood still (cross-row terms −p_c p_c' are ignored), so all
rows exploit the same linear decrease at once. Measured on the embedded default (digits, seed 0,
2 bits): with the gradient and damping 0.01 the greedy head falls to 7.8% test accuracy (QUBO
6.4%, predicted loss −0.58 nats, true train loss 7.8) against 80.6% / 84.4% without it. With
damping 1 (a real trust region) the gradient term helps (greedy 91.9%, QUBO 93.6%, above the
fp32 head's 84.7%): it then performs a damped Newton step of the under-trained head as well as
the rounding, which is training, not quantization. It stays available (``use_grad``, ``--grad``).
The reference heads the project now uses are at the regularised optimum, where g ≈ 0.
Rows are treated as independent blocks at the same (fp32) head: cross-row Hessian terms are
ignored by every method alike.

Methods (every row is one :class:`IntegerProblem` E(k) = const + ½(s·k − w*)ᵀH̃(s·k − w*),
k ∈ [qmin, qmax]; every method is scored on that same E, ``energy`` = Σ_rows E_row − (C−1)·L0, the
predicted loss with all rows changed, cross-row terms ignored):

- ``rtn``: q = clamp(round(w/s), qmin, qmax).
- ``gptq-natural``: GPTQ/OBQ sequential rounding in index order (:func:`qubo_nn.core.kernels.gptq`): with U the
  upper Cholesky factor of H̃⁻¹, q_d = clamp(round(w_d/s)), e = (w_d − s q_d)/U_dd,
  w_{d+1:} −= e·U_{d, d+1:} (starting from w*).
- ``gptq``: the same in act-order (decreasing diag H, GPTQ's own default).
- ``cd``: coordinate descent with single and pair moves over the levels from ``gptq`` (CDQuant;
  its time includes the GPTQ start).
- ``qubo``: the default pipeline (:func:`qubo_nn.samplers.level_solvers.solve_levels` method ``qubo``): the best classical
  answer, then annealed windows of 2^``window_bits`` + 1 levels around the incumbent in
  ``encoding``'s bits with ``sampler`` (started at the incumbent; ``refine_span``), each sample
  polished by CD. Never above the classical start; ``info["rows_improved"]`` counts the rows where
  annealing + polish beat it, ``rows_anneal_stage`` those where a raw annealed sample did, and
  ``energy_anneal_raw`` sums the annealer's own best row energies (apart from the fallback).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from qubo_nn.core.head import Head, check_compatible, evaluate
from qubo_nn.core.layout import apply_levels
from qubo_nn.core.scales import SCALE_RULES, check_grid_config, grid_scale, qrange, round_to_grid
from qubo_nn.curvature.head_ce import HeadCE
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import ExecutorConfig, check_available, map_unordered
from qubo_nn.execution.row_tasks import head_row_task
from qubo_nn.runtime import child_seed, resolve_device, resolve_dtype
from qubo_nn.samplers import get_sampler

__all__ = ["METHODS", "SCALE_RULES", "MethodResult", "QuantizeConfig", "QuantizeResult", "check_head", "grid_scale",
           "metrics", "qrange", "quantize_head", "refit_bias", "round_to_grid"]

METHODS = ("rtn", "gptq-natural", "gptq", "cd", "qubo")


# ---------------------------------------------------------------- the whole head

@dataclass
class QuantizeConfig:
    """How a head is quantized. ``method`` names the head returned in ``QuantizeResult.head``;
    ``rtn`` and ``greedy`` are always computed (they are cheap, and they seed the QUBO).

    ``sampler_params`` go to :func:`qubo_nn.samplers.sample` (validated there); ``num_reads`` is
    added for samplers that take it unless given. ``polish`` asks the sampler registry for a
    steepest-descent polish of every sample.

    ``executor``/``workers``/``ray_address``: where the per-row tasks run (threads of this process,
    or Ray; :mod:`qubo_nn.execution.executors`). The levels do not depend on it: each row's seed is
    ``child_seed(seed, row)`` whichever worker solves it; ``wall_time_s`` of a method is its task
    time summed over rows, ``timings["rows_wall_s"]`` the elapsed time of the row loop.

    ``refine_span``: for samplers with a ``beta_range`` (neal) started from the incumbents, and no
    ``beta_range`` given, anneal from β_cold/refine_span to β_cold (β_cold from
    :func:`qubo_nn.samplers.vectorized_beta_range`): a low-temperature refinement of the incumbents.
    The default hot start forgets them and, on these loss QUBOs, ends above the greedy energy
    (digits, 3 bits, row 0: +5·10⁻⁵ nats with 1,000 sweeps and still with 10,000; −4·10⁻⁶ refined).
    None: the sampler's own schedule.
    """

    bits: int = 4
    grid: str = "signed"
    method: str = "qubo"
    scale: str = "mse"
    sampler: str = "batch-anneal"
    sampler_params: dict = field(default_factory=dict)
    encoding: str = "binary"
    num_reads: int = 4
    window_bits: int = 1
    damping_rel: float = 0.01
    use_grad: bool = False
    polish: bool = False
    refine_span: float | None = 100.0
    refit_bias: bool = False
    l2: float = 0.0
    subsample: int | None = None
    mse_grid: int = 81
    mse_min_ratio: float = 0.2
    dtype: str = "float32"
    device: str = "auto"
    chunk: int = 4096
    seed: int = 0
    executor: str = "threads"
    workers: int = 1
    ray_address: str | None = None

    def executor_config(self) -> ExecutorConfig:
        """Where the row tasks run (``executor``, ``workers``, ``ray_address``; see :mod:`qubo_nn.execution.executors`)."""
        return ExecutorConfig(executor=self.executor, workers=self.workers, ray_address=self.ray_address)

    def validate(self) -> None:
        check_grid_config(self.grid, self.bits, self.scale)
        self.executor_config().validate()
        if self.method not in METHODS:
            raise QuboNNError(f"method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.window_bits, bool) or not isinstance(self.window_bits, int) \
                or not 1 <= self.window_bits <= self.bits:
            raise QuboNNError(f"window_bits must be an integer in [1, bits={self.bits}], got {self.window_bits!r}")
        if not (isinstance(self.damping_rel, (int, float)) and math.isfinite(self.damping_rel)
                and self.damping_rel >= 0):
            raise QuboNNError(f"damping_rel must be a finite number >= 0, got {self.damping_rel!r}")
        if self.refine_span is not None and not self.refine_span >= 1:
            raise QuboNNError(f"refine_span must be >= 1 or None, got {self.refine_span!r}")
        if self.num_reads < 1:
            raise QuboNNError(f"num_reads must be >= 1, got {self.num_reads}")
        if not isinstance(self.sampler_params, dict):
            raise QuboNNError(f"sampler_params must be a dict, got {type(self.sampler_params).__name__}")
        own = sorted({"seed", "initial_states"} & set(self.sampler_params))
        if own:
            raise QuboNNError(f"sampler_params must not set {', '.join(own)}: the seed comes from the config "
                              "and the initial states are the greedy/RTN solutions")
        resolve_dtype(self.dtype)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MethodResult:
    """One method's quantized head, its integer codes (C × D), true metrics and QUBO scores.

    ``energy``: predicted loss (nats) on the per-row BQMs, Σ_rows E_row − (C−1)·L0;
    ``row_energies`` (C,): E_row, each the energy of that row's BQM.
    """

    head: Head
    codes: torch.Tensor
    metrics: dict
    energy: float
    row_energies: list[float]
    outside_window: int
    wall_time_s: float
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {**self.metrics, "energy": self.energy, "row_energies": self.row_energies,
                "outside_window": self.outside_window, "wall_time_s": self.wall_time_s, **self.info}


@dataclass
class QuantizeResult:
    """The head of ``config.method``, every computed method, the fp32 reference and timings."""

    head: Head
    scale: torch.Tensor
    methods: dict[str, MethodResult]
    reference: dict
    config: dict
    timings: dict

    def record(self) -> dict:
        """JSON-able summary (no tensors except the scales as a list)."""
        return {"config": self.config, "reference": self.reference, "scale": self.scale.tolist(),
                "methods": {k: v.summary() for k, v in self.methods.items()}, "timings": self.timings}


def check_head(head: Head) -> None:
    """Refuse a head with NaN/Inf weights (the Head checks at construction; this catches later edits)."""
    for name, t in (("weight", head.W), ("bias", head.b)):
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise QuboNNError(f"head {name} contains {bad} NaN/Inf values: expected finite weights")


def metrics(head: Head, train: FeatureSet, test: FeatureSet | None, l2: float = 0.0) -> dict:
    """True train (and test) loss (nats) and accuracy (%, 0–100)."""
    out = {}
    for split, feats in (("train", train), ("test", test)):
        if feats is None:
            continue
        loss, acc = evaluate(head, feats.to(head.W.device, head.W.dtype), l2)
        out[f"{split}_loss"], out[f"{split}_acc"] = loss, 100.0 * acc
    return out


def refit_bias(head: Head, feats: FeatureSet, max_iter: int = 500, tol: float = 1e-10) -> tuple[Head, dict]:
    """Re-fit the bias with W frozen: L-BFGS (SciPy's L-BFGS-B, float64) on the full-batch mean
    cross-entropy, which is convex in b; its gradient is mean_n (softmax(W f_n + b) − e_{y_n}).

    Returns the head (W unchanged, b in W's dtype) and info: loss before/after, iterations, seconds.
    """
    from scipy.optimize import minimize

    W = head.W.detach()
    X = feats.X.to(W.device, torch.float64)
    y = feats.y.to(W.device)
    Z = X @ W.to(torch.float64).T  # (N × C): the logits without bias, computed once
    onehot_mean = torch.bincount(y, minlength=head.num_classes).to(torch.float64) / feats.n

    def fun(b: np.ndarray) -> tuple[float, np.ndarray]:
        logits = Z + torch.from_numpy(b).to(Z)
        lse = torch.logsumexp(logits, 1)
        loss = float((lse - logits.gather(1, y[:, None])[:, 0]).mean())
        grad = torch.softmax(logits, 1).mean(0) - onehot_mean
        return loss, grad.cpu().numpy()

    t0 = time.perf_counter()
    b0 = head.b.detach().to(torch.float64).cpu().numpy()
    before = fun(b0)[0]
    opt = minimize(fun, b0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol, "ftol": 0.0})
    b = torch.from_numpy(opt.x).to(device=head.b.device, dtype=head.b.dtype)
    return Head(W.clone(), b), {"bias_loss_before": before, "bias_loss_after": float(opt.fun),
                                "bias_iterations": int(opt.nit), "bias_wall_time_s": time.perf_counter() - t0}


def _sampler_params(cfg: QuantizeConfig) -> dict:
    params = dict(cfg.sampler_params)
    if "num_reads" in get_sampler(cfg.sampler).parameters:
        params.setdefault("num_reads", cfg.num_reads)
    return params


def quantize_head(head: Head, train: FeatureSet, test: FeatureSet | None, cfg: QuantizeConfig,
                  progress: bool = False) -> QuantizeResult:
    """Quantize ``head`` to ``cfg.bits`` per weight by every needed method (see module docstring).

    ``train`` gives the loss, gradient and Hessian blocks (and the bias refit); ``test`` is only
    evaluated. Returns the quantized head of ``cfg.method`` and every method's record.
    """
    cfg.validate()
    check_available(cfg.executor_config())   # Ray missing: fail before any work
    check_head(head)
    check_compatible(head, train)
    if test is not None:
        check_compatible(head, test)
    t_start = time.perf_counter()
    params = _sampler_params(cfg) if cfg.method == "qubo" else {}  # an unknown sampler fails here
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype)
    head_d = head.to(device, dtype)
    ref = metrics(head_d, train, test, cfg.l2)
    W = head_d.W.to(torch.float64)
    # the scale is rounded to the head's dtype first, so the checkpoint holds exactly the scale used
    scale = grid_scale(W, cfg.bits, cfg.scale, cfg.mse_grid, cfg.mse_min_ratio).to(dtype).to(torch.float64)
    methods = ["rtn", "gptq-natural", "gptq", "cd"] + (["qubo"] if cfg.method == "qubo" else [])
    rtn_codes = round_to_grid(W, scale, cfg.bits)
    source = HeadCE(head_d, train, cfg.l2, device, dtype, cfg.chunk, cfg.subsample, cfg.seed)
    timings = {"hessian_s": 0.0}
    if cfg.grid != "signed":   # binary/ternary rows: codes and a refit α per row and method (issue 24)
        from qubo_nn.workflows.spin_quantize import spin_head_rows

        t_rows = time.perf_counter()
        rows = spin_head_rows(source, cfg, methods, params, timings, progress)
        timings["rows_wall_s"] = time.perf_counter() - t_rows
        return _finish(head_d, train, test, cfg, methods, rows["codes"], rows["scales"], rows["energies"],
                       rows["wall"], rows.get("qubo_info", {}), source.loss, ref, timings, t_start)
    per_row = _solve_rows(source, scale, rtn_codes.cpu().numpy().astype(np.int64), cfg, params, timings, progress)
    codes, energies, wall, qinfo = _collect_rows(per_row, methods, rtn_codes, cfg)
    return _finish(head_d, train, test, cfg, methods, codes, {m: scale for m in methods}, energies, wall, qinfo,
                   source.loss, ref, timings, t_start)


def _finish(head_d: Head, train: FeatureSet, test: FeatureSet | None, cfg: QuantizeConfig, methods: list[str],
            codes: dict, scales: dict, energies: dict, wall: dict, qinfo: dict, L0: float, ref: dict,
            timings: dict, t_start: float) -> QuantizeResult:
    """Every method's head W = scales[m]·codes[m] (per row), its metrics and record."""
    dtype = head_d.W.dtype
    results = {}
    for m in methods:
        dev = head_d.W.device
        qh = Head(apply_levels(head_d.W, codes[m].to(dev), scales[m].to(dev, dtype)), head_d.b.clone())
        info = {}
        if cfg.refit_bias:
            info["before_refit"] = metrics(qh, train, test, cfg.l2)
            qh, binfo = refit_bias(qh, train)
            info.update(binfo)
        if m == "qubo":
            info.update(qinfo)
        E = energies[m]
        results[m] = MethodResult(head=qh, codes=codes[m].to(torch.int64).cpu(),
                                  metrics=metrics(qh, train, test, cfg.l2), energy=float(sum(E) - (len(E) - 1) * L0),
                                  row_energies=E, outside_window=0, wall_time_s=wall[m], info=info)
    timings["total_s"] = time.perf_counter() - t_start
    reference = {**ref, "loss_at_fp32": L0}
    if cfg.refit_bias:  # the same refit of the fp32 head: what the refit alone is worth
        fh, binfo = refit_bias(head_d, train)
        reference["refit_bias"] = {**metrics(fh, train, test, cfg.l2), **binfo}
    return QuantizeResult(head=results[cfg.method].head.to("cpu"), scale=scales[cfg.method].to(dtype).cpu(),
                          methods=results, reference=reference, config=cfg.to_dict(), timings=timings)


def _solve_rows(source: HeadCE, scale: torch.Tensor, rtn_codes: np.ndarray, cfg: QuantizeConfig, params: dict,
                timings: dict, progress: bool) -> list[dict]:
    """Every class row's methods as tasks on ``cfg``'s executor (:func:`~qubo_nn.execution.row_tasks.head_row_task`),
    in row order; each row's Hessian block is built lazily (when a slot frees), its time added to
    ``timings["hessian_s"]``, the elapsed time of the loop put in ``timings["rows_wall_s"]``."""
    C = source.rows
    qmin, qmax = qrange(cfg.bits)
    qubo_kw = None
    if cfg.method == "qubo":
        qubo_kw = {"encoding": cfg.encoding, "sampler": cfg.sampler, "params": params,
                   "levels": 2 ** cfg.window_bits + 1, "refine_span": cfg.refine_span}

    def row_tasks():
        for c in range(C):
            t = time.perf_counter()
            p = source.row_problem(c, float(scale[c]), qmin, qmax, cfg.damping_rel, cfg.use_grad)
            timings["hessian_s"] += time.perf_counter() - t
            yield {"problem": p, "rtn": rtn_codes[c],
                   "qubo": None if qubo_kw is None else {**qubo_kw, "seed": child_seed(cfg.seed, c)}}

    per_row: list[dict | None] = [None] * C
    t_rows = time.perf_counter()
    with contextlib.closing(map_unordered(head_row_task, row_tasks(), cfg.executor_config(), progress=progress,
                                          desc=f"quantize {cfg.bits}-bit rows", total=C)) as done:
        for c, res in done:
            per_row[c] = res
    timings["rows_wall_s"] = time.perf_counter() - t_rows
    return per_row


def _collect_rows(per_row: list[dict], methods: list[str], rtn_codes: torch.Tensor, cfg: QuantizeConfig
                  ) -> tuple[dict, dict, dict, dict]:
    """(codes C × D per method, row energies per method, summed task time per method, the qubo
    pipeline's totals) from the rows' task results."""
    codes = {m: torch.empty_like(rtn_codes) for m in methods}
    energies = {m: [] for m in methods}
    wall = {m: sum(r["wall"][m] for r in per_row) for m in methods}   # summed task time, row order
    qinfo = {"rows_improved": 0, "rows_anneal_stage": 0, "sampler_wall_time_s": 0.0, "encoding": cfg.encoding,
             "window_levels": 2 ** cfg.window_bits + 1, "energy_classical": 0.0, "energy_anneal_raw": 0.0}
    for c, res in enumerate(per_row):
        for m in methods:
            codes[m][c] = torch.from_numpy(res["levels"][m].astype(np.float64)).to(codes[m])
            energies[m].append(res["energy"][m])
        info = res["qubo_info"]
        if info is not None:
            qinfo["rows_improved"] += int(info["stage"] != "classical")
            qinfo["rows_anneal_stage"] += int(info["stage"] == "anneal")
            qinfo["energy_classical"] += info["energy_classical"]
            qinfo["energy_anneal_raw"] += info["energy_anneal_raw"]
            qinfo["sampler_wall_time_s"] += info["wall_time_s"]
    return codes, energies, wall, qinfo
