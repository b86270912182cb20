"""Training heads whose weights must stay discrete: binary w = α_c·s (s ∈ {−1, +1}) or ternary
w = α_c·t (t ∈ {−1, 0, +1}), one scale α_c per class row, a full-precision bias (issue 19).

Three methods, all ending with the same convex refit of (α, b) for their codes (:func:`tuned_refit`:
the logits are linear in α and b for fixed codes, so L-BFGS reaches the optimum of mean CE +
(l2/2)‖W‖², with l2 chosen on the held-out split; the rounding of ``ptq`` uses the fit split only):

- ``ptq``: the fp32 reference head rounded row by row: on row c's exact CE Hessian block H̃_c (damped,
  :class:`~qubo_nn.curvature.head_ce.HeadCE`), codes by CD from GPTQ act-order, alternated with the
  closed-form scale α* = cᵀH̃t / cᵀH̃c until the row energy stops falling.
- ``ste``: quantization-aware training with the straight-through estimator from the fp32 head: latent
  fp32 weights, forward pass with the quantized weights (α_c = mean |w_c| for binary, XNOR-Net; TWN for
  ternary: threshold 0.7·mean |w_c|, α_c = mean of the |w| above it), gradients passed straight through
  (BinaryConnect), Adam; learning rate and epochs chosen on a held-out split of train from a recorded grid,
  then retrained on all of train.
- ``qubo``: from ``ptq``, sweeps over the class rows (or blocks of ``rows_per_block`` rows, which carry the
  cross-class curvature). A step is the exact second-order model of the mean cross-entropy around the
  current discrete head over the block's codes (g and H from :class:`~qubo_nn.curvature.head_stats.HeadStats`
  at that head; E(k) = L + gᵀΔ + ½ΔᵀH̃Δ as an :class:`~qubo_nn.core.problem.IntegerProblem` over the codes
  with the damped Newton target), solved by the annealing pipeline (``step_solver="qubo"``:
  :func:`~qubo_nn.samplers.level_solvers.solve_levels`) or by CD alone (``step_solver="cd"``, the classical
  control), and kept only if the TRUE training loss falls (the core's step policy,
:func:`qubo_nn.steps.policy.try_step`). (α, b) are refit between sweeps; the sweeps stop
  when the validation loss stops falling, and the head of the best validation loss is returned.

The codes of a block are the core's spin problem (:func:`qubo_nn.core.spins.spin_problem`: a binary code
c = 2k − 1, k ∈ {0, 1}, is an IntegerProblem with scale 2α and target t + α; a ternary code is k itself).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from qubo_nn.core.head import Head, evaluate
from qubo_nn.core.model import damping_mu
from qubo_nn.core.problem import solve_pd
from qubo_nn.core.spins import (codes_of_levels, init_alpha, levels_of_codes, refit_alpha, row_energy,
                                 spin_problem, twn_codes)
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import child_seed, torch_generator
from qubo_nn.samplers.level_solvers import solve_levels
from qubo_nn.steps.policy import try_step

DISCRETE_GRIDS = ("binary", "ternary")
STE_STARTS = ("fp32", "ptq")
DISCRETE_METHODS = ("ptq", "ste", "qubo")
STEP_SOLVERS = ("qubo", "cd", "anneal")


@dataclass
class DiscreteConfig:
    """Settings of the three discrete trainers (see the module docstring).

    ``damping_rel``: μ = damping_rel · mean diag H of a block. ``accept_tol``: a step is kept only if the
    true training loss falls by more than this (nats). ``subsample``: Hessian blocks from a seeded subset
    of this many training samples (the gradient and the acceptance use all of them).
    """

    grid: str = "binary"
    method: str = "qubo"
    seed: int = 0
    val_fraction: float = 0.2
    device: str = "cpu"
    # ptq / qubo
    damping_rel: float = 0.01
    alt_rounds: int = 10
    # ste
    ste_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    ste_epochs: int = 40
    ste_batch: int = 128
    ste_starts: tuple[str, ...] = STE_STARTS
    # qubo
    sweeps: int = 8
    patience: int = 2
    rows_per_block: int = 1
    step_solver: str = "qubo"
    sampler: str = "neal"
    sampler_params: dict = field(default_factory=lambda: {"num_reads": 4, "num_sweeps": 500})
    accept_tol: float = 1e-9
    l2_grid: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    subsample: int | None = None
    dtype: str = "float64"
    # qubo regularisers, every (prior, z) pair tried and the best chosen on the validation split
    prior_grid: tuple[float, ...] = (0.0,)
    z_grid: tuple[float, ...] = (0.0,)

    def validate(self) -> None:
        if self.grid not in DISCRETE_GRIDS:
            raise QuboNNError(f"grid must be one of {DISCRETE_GRIDS}, got {self.grid!r}")
        if self.method not in DISCRETE_METHODS:
            raise QuboNNError(f"method must be one of {DISCRETE_METHODS}, got {self.method!r}")
        if self.step_solver not in STEP_SOLVERS:
            raise QuboNNError(f"step_solver must be one of {STEP_SOLVERS}, got {self.step_solver!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise QuboNNError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("sweeps", "ste_epochs", "ste_batch", "rows_per_block", "alt_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise QuboNNError(f"{name} must be an integer >= 1, got {v!r}")
        if not (self.damping_rel > 0 and math.isfinite(self.damping_rel)):
            raise QuboNNError(f"damping_rel must be a finite number > 0, got {self.damping_rel!r}")
        if not self.ste_starts or any(s not in STE_STARTS for s in self.ste_starts):
            raise QuboNNError(f"ste_starts must be a non-empty subset of {STE_STARTS}, got {list(self.ste_starts)}")
        for name in ("prior_grid", "z_grid"):
            v = getattr(self, name)
            if not v or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v):
                raise QuboNNError(f"{name} must be a non-empty list of finite numbers >= 0, got {list(v)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("ste_lrs", "l2_grid", "ste_starts", "prior_grid", "z_grid"):
            d[k] = list(getattr(self, k))
        return d


@dataclass
class DiscreteHead:
    """Codes (C × D, int8 in {−1, 1} or {−1, 0, 1}), per-row scales α (C,) and bias b (C,), float64."""

    codes: torch.Tensor
    alpha: torch.Tensor
    b: torch.Tensor
    grid: str

    def head(self) -> Head:
        return Head((self.alpha[:, None] * self.codes.to(self.alpha.dtype)).float(), self.b.float())

    def clone(self) -> "DiscreteHead":
        return DiscreteHead(self.codes.clone(), self.alpha.clone(), self.b.clone(), self.grid)


# ---------------------------------------------------------------- codes and scales






def threshold_codes(W: torch.Tensor, grid: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign / TWN codes and closed-form scales of every row of W (C × D): :func:`qubo_nn.core.spins.twn_codes`
    and :func:`~qubo_nn.core.spins.init_alpha` row by row."""
    rows = W.to(torch.float64).cpu().numpy()
    codes = np.stack([twn_codes(w, grid) for w in rows]).astype(np.int8)
    return torch.from_numpy(codes), torch.tensor([init_alpha(w, grid) for w in rows], dtype=torch.float64)


def round_row(H: np.ndarray, target: np.ndarray, grid: str, codes0: np.ndarray, alpha0: float,
              rounds: int) -> tuple[np.ndarray, float, float]:
    """Alternate codes (CD from GPTQ act-order, or the current codes where they are lower) and the
    closed-form α (:func:`qubo_nn.core.spins.refit_alpha`) until the row energy ½(αc − t)ᵀH(αc − t) stops
    falling. Returns (codes, α, energy)."""
    codes, alpha = np.asarray(codes0), float(alpha0)
    energy = row_energy(H, target, alpha, codes)
    for _ in range(rounds):
        p = spin_problem(H, target, alpha, grid)
        k, _ = solve_levels(p, "cd")
        new = codes_of_levels(k, grid)
        if p.energy(levels_of_codes(codes, grid)) < p.energy(k):
            new = codes
        a = refit_alpha(H, target, new, alpha)
        e = row_energy(H, target, a, new)
        if not e < energy - 1e-15 * max(1.0, abs(energy)):
            break
        codes, alpha, energy = new, a, e
    return codes, alpha, energy



def refit_scales(dh: DiscreteHead, feats: FeatureSet, l2: float = 0.0, max_iter: int = 200
                 ) -> tuple[DiscreteHead, dict]:
    """The optimal (α, b) for fixed codes by L-BFGS on mean CE + (l2/2)‖W‖², W = diag(α)·codes (convex:
    the logits are linear in α and b)."""
    t0 = time.perf_counter()
    X = feats.X.to(torch.float64)
    y = feats.y.long()
    S = dh.codes.to(torch.float64)
    Z = X @ S.T  # N × C: logits = Z·α + b
    alpha = dh.alpha.clone().to(torch.float64).requires_grad_(True)
    b = dh.b.clone().to(torch.float64).requires_grad_(True)
    opt = torch.optim.LBFGS([alpha, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    nnz = (S != 0).sum(1).to(torch.float64)        # ‖W_c‖² = α_c² · nnz_c

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Z * alpha + b, y) + 0.5 * l2 * (alpha * alpha * nnz).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        a = alpha.detach().clamp(min=1e-8)
        loss = float(torch.nn.functional.cross_entropy(Z * a + b.detach(), y))
    return DiscreteHead(dh.codes, a, b.detach(), dh.grid), {"loss": loss, "l2": l2,
                                                            "wall_time_s": time.perf_counter() - t0}


def tuned_refit(dh: DiscreteHead, fit: FeatureSet, val: FeatureSet, train: FeatureSet,
                l2_grid: tuple[float, ...]) -> tuple[DiscreteHead, dict]:
    """(α, b) refit with the L2 weight chosen by held-out CE: each l2 of the grid fitted on ``fit`` and
    scored on ``val``; the best refit on all of ``train``. On separable features an unregularised refit
    grows α without bound (train loss → 0, test loss of tens of nats): the scale needs the same
    validation-chosen L2 as the fp32 reference head. The grid has no 0: a validation split that the codes
    separate perfectly scores best with α → ∞ (seen on digits: 32–90 nats of test loss)."""
    scores = {}
    for l2 in l2_grid:
        cand, _ = refit_scales(dh, fit, l2)
        scores[l2] = evaluate(cand.head(), val)[0]
    best = min(scores, key=scores.get)
    out, info = refit_scales(dh, train, best)
    return out, {**info, "val_loss_by_l2": {repr(k): v for k, v in scores.items()}}


# ---------------------------------------------------------------- ptq

def ptq(head: Head, train: FeatureSet, cfg: DiscreteConfig, l2: float = 0.0) -> tuple[DiscreteHead, dict]:
    """Round the fp32 ``head`` onto the grid row by row on its exact CE curvature, then refit (α, b)."""
    t0 = time.perf_counter()
    stats = HeadStats(head, train, device=cfg.device, dtype=cfg.dtype, subsample=cfg.subsample, seed=cfg.seed)
    codes0, alpha0 = threshold_codes(head.W, cfg.grid)
    C, D = head.W.shape
    codes, alphas = np.zeros((C, D), dtype=np.int8), np.zeros(C)
    for c in range(C):
        model = stats.block(torch.arange(c * (D + 1), c * (D + 1) + D))
        H = model.H.to(torch.float64).cpu().numpy()
        H = H + damping_mu(np.diag(H), cfg.damping_rel) * np.eye(D)
        w = model.theta0.to(torch.float64).cpu().numpy()
        codes[c], alphas[c], _ = round_row(H, w, cfg.grid, codes0[c].numpy(), float(alpha0[c]), cfg.alt_rounds)
    dh = DiscreteHead(torch.from_numpy(codes), torch.from_numpy(alphas), head.b.to(torch.float64).clone(), cfg.grid)
    dh, rinfo = refit_scales(dh, train, l2)
    return dh, {"wall_time_s": time.perf_counter() - t0, "refit": rinfo}


# ---------------------------------------------------------------- qubo: annealed steps on the true loss

def _block_rows(C: int, rows_per_block: int, seed: int, sweep: int) -> list[list[int]]:
    order = torch.randperm(C, generator=torch_generator(child_seed(seed, sweep))).tolist()
    return [sorted(order[i:i + rows_per_block]) for i in range(0, C, rows_per_block)]


def _flat_idx(rows: list[int], D: int) -> torch.Tensor:
    return torch.cat([torch.arange(c * (D + 1), c * (D + 1) + D) for c in rows])


class PriorStats:
    """The objective of the qubo steps with a prior: :class:`HeadStats`'s mean CE (+ l2/2 ‖W‖²) plus
    (λ/2)‖W − W_ref‖² over the weights (not the biases), W_ref the fp32 reference head — a Gaussian prior
    centred on the head that validation already tuned. For binary codes it is −λ Σ α_c c_cd w_ref,cd + const:
    a reward for agreeing with the fp32 signs. Same interface as HeadStats for
    :func:`qubo_nn.steps.policy.try_step` (``loss``, ``theta``, ``trial_loss``, ``update``), so the core's
    acceptance rule applies to this objective unchanged."""

    def __init__(self, stats: HeadStats, W_ref: torch.Tensor, lam: float) -> None:
        C, D = stats.C, stats.D
        self.stats, self.lam = stats, float(lam)
        ref = torch.zeros(C, D + 1, dtype=stats.dtype, device=stats.device)
        ref[:, :D] = W_ref.to(stats.device, stats.dtype)
        mask = torch.ones_like(ref)
        mask[:, D] = 0
        self.ref, self.mask = ref.reshape(-1), mask.reshape(-1)
        self.prior = 0.5 * self.lam * float((((stats.theta - self.ref) * self.mask) ** 2).sum())

    @property
    def theta(self) -> torch.Tensor:
        return self.stats.theta

    @property
    def loss(self) -> float:
        return self.stats.loss + self.prior

    def prior_change(self, idx: torch.Tensor, values: torch.Tensor) -> float:
        idx = idx.to(self.stats.device)
        r, m = self.ref[idx], self.mask[idx]
        new = ((values.to(r.device, r.dtype) - r) * m) ** 2
        old = ((self.stats.theta[idx] - r) * m) ** 2
        return 0.5 * self.lam * float((new - old).sum())

    def trial_loss(self, idx: torch.Tensor, values: torch.Tensor) -> float:
        return float(self.stats.trial_loss(idx, values)) + self.prior + self.prior_change(idx, values)

    def update(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        self.prior += self.prior_change(idx, values)
        self.stats.update(idx, values)


def per_sample_change(stats: HeadStats, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(N,) the change of every sample's CE when θ[idx] = values (the exact step, not a model)."""
    classes, dz = stats.logit_change(idx, values.to(stats.device, stats.dtype) - stats.theta[idx.to(stats.device)])
    logits = stats.logits.clone()
    logits[:, classes] += dz
    y = stats.y[:, None]
    return torch.log_softmax(stats.logits, 1).gather(1, y)[:, 0] - torch.log_softmax(logits, 1).gather(1, y)[:, 0]


def block_problem(stats: HeadStats, dh: DiscreteHead, rows: list[int], cfg: DiscreteConfig,
                  prior: PriorStats | None = None):
    """(problem, α per variable, current levels) of one step on the codes of ``rows``: the exact local model
    E(k) = L + gᵀΔ + ½Δᵀ(H + μI)Δ at the current head (+ the prior's λ(w − w_ref) and λI) as an
    IntegerProblem over the codes (its energy is the predicted objective, in nats)."""
    D = dh.codes.shape[1]
    idx = _flat_idx(rows, D)
    model = stats.block(idx)
    H = model.H.to(torch.float64).cpu().numpy()
    H = H + damping_mu(np.diag(H), cfg.damping_rel) * np.eye(H.shape[0])
    g = model.g.to(torch.float64).cpu().numpy()
    w = model.theta0.to(torch.float64).cpu().numpy()
    L0 = float(model.L0)
    if prior is not None and prior.lam > 0:
        r = prior.ref[idx].to(torch.float64).cpu().numpy()
        g = g + prior.lam * (w - r)
        H = H + prior.lam * np.eye(H.shape[0])
        L0 = L0 + prior.prior
    hinv_g = solve_pd(H, g, f"the damped Hessian block of rows {rows}")
    alpha = np.repeat(dh.alpha[rows].numpy(), D)
    p = spin_problem(H, w - hinv_g, alpha, cfg.grid, L0 - 0.5 * float(g @ hinv_g))
    return p, alpha, levels_of_codes(dh.codes[rows].reshape(-1).numpy(), cfg.grid)


def block_step(stats: HeadStats, dh: DiscreteHead, rows: list[int], cfg: DiscreteConfig, seed: int,
               prior: PriorStats | None = None, z: float = 0.0) -> dict:
    """One step on the codes of ``rows``: build the exact local model at the current head, solve it, keep
    it only if the true loss falls. Moves ``dh`` and ``stats`` in place when accepted.

    ``prior``: the objective is CE + (λ/2)‖W − W_ref‖² (its gradient λ(w − w_ref) and curvature λI join the
    model; acceptance is on it). ``z`` > 0: a noise-aware gate before the core's rule — the step is tried only
    if its mean per-sample CE change (+ the prior change) is below −z standard errors of that mean, i.e. its
    gain is not explained by which training samples were drawn."""
    D = dh.codes.shape[1]
    idx = _flat_idx(rows, D)
    p, alpha, k_now = block_problem(stats, dh, rows, cfg, prior)
    if cfg.step_solver == "qubo":
        k, info = solve_levels(p, "qubo", sampler=cfg.sampler, seed=seed, params=dict(cfg.sampler_params))
    else:
        k, info = solve_levels(p, "cd")
    e_now, e_new = p.energy(k_now), p.energy(k)
    state = stats if prior is None else prior
    rec = {"rows": rows, "predicted_change": e_new - e_now, "stage": info.get("stage", cfg.step_solver),
           "loss_before": state.loss, "accepted": False}
    if "energy_classical" in info:
        rec["energy_gap_anneal"] = float(info["energy_classical"]) - float(info.get("energy", e_new))
    _try_proposal(stats, dh, rows, idx, k, k_now, e_now, e_new, alpha, cfg, prior, z, rec)
    return rec


def _try_proposal(stats: HeadStats, dh: DiscreteHead, rows: list[int], idx, k, k_now, e_now: float, e_new: float,
                  alpha: np.ndarray, cfg: DiscreteConfig, prior: PriorStats | None, z: float, rec: dict) -> None:
    """A step's proposal k (levels of ``rows``) tried on the true objective: skipped unless its model energy
    is below the current codes', gated by ``z`` (see :func:`block_step`), then the core's rule
    (:func:`try_step`); ``rec`` gets z_score / gated / loss_after / accepted, and ``dh`` the codes if accepted."""
    if not e_new < e_now - 1e-12 * max(1.0, abs(e_now)) or np.array_equal(k, k_now):
        return
    new_codes = codes_of_levels(k, cfg.grid)
    new_w = torch.from_numpy(alpha * new_codes).to(torch.float64)
    if z > 0:
        dl = per_sample_change(stats, idx, new_w)
        gain = float(dl.mean()) + (prior.prior_change(idx, new_w) if prior is not None else 0.0)
        rec["z_score"] = -gain / max(float(dl.std()) / math.sqrt(dl.numel()), 1e-300)
        if not rec["z_score"] > z:
            rec["gated"] = True
            return
    state = stats if prior is None else prior
    accepted, rec["loss_after"], _ = try_step(state, idx, new_w, state.loss, cfg.accept_tol)
    if accepted:
        dh.codes[rows] = torch.from_numpy(new_codes.reshape(len(rows), dh.codes.shape[1]).astype(np.int8))
        rec["accepted"] = True


def anneal_sweep(stats: HeadStats, dh: DiscreteHead, blocks: list[list[int]], cfg: DiscreteConfig, seed: int,
                 prior: PriorStats | None = None, z: float = 0.0) -> list[dict]:
    """``step_solver="anneal"``: the step problems of all ``blocks`` are built at the sweep's head and annealed
    in ONE batch (:func:`~qubo_nn.samplers.level_solvers.solve_levels_batch`, every chain started at the current
    codes, no classical start and no CD polish: the answer is the annealer's own), then tried one by one on the
    TRUE objective at the current head (the core's rule, :func:`qubo_nn.steps.policy.try_step`), so a proposal
    made stale by an earlier accepted block is still kept only if it lowers the loss."""
    from qubo_nn.samplers.level_solvers import solve_levels_batch

    D = dh.codes.shape[1]
    built = [block_problem(stats, dh, rows, cfg, prior) for rows in blocks]
    params = {"num_reads": 4, "num_sweeps": 100, **dict(cfg.sampler_params)}
    res = solve_levels_batch([b[0] for b in built], [child_seed(seed, j) for j in range(len(blocks))],
                             k_start=[b[2] for b in built], polish=False, num_reads=int(params["num_reads"]),
                             num_sweeps=int(params["num_sweeps"]), hot=float(params.get("hot", 0.3)))
    state = stats if prior is None else prior
    steps = []
    for rows, (p, alpha, k_now), (k, info) in zip(blocks, built, res):
        idx = _flat_idx(rows, D)
        e_now, e_new = p.energy(k_now), p.energy(k)
        rec = {"rows": rows, "predicted_change": e_new - e_now, "stage": info.get("stage", "anneal"),
               "loss_before": state.loss, "accepted": False}
        steps.append(rec)
        _try_proposal(stats, dh, rows, idx, k, k_now, e_now, e_new, alpha, cfg, prior, z, rec)
    return steps


def mean_hessian_diag(stats: HeadStats) -> float:
    """mean over the C·D weights of diag H = mean_n p_nc(1 − p_nc) f_nd²: the scale of the prior weight."""
    P = stats.P
    return float(((P * (1 - P)).sum(1) * (stats.X * stats.X).sum(1)).mean()) / (stats.C * stats.D)


def qubo_train(start: DiscreteHead, fit: FeatureSet, val: FeatureSet, cfg: DiscreteConfig,
               on_sweep: Callable[[int, DiscreteHead], None] | None = None, l2: float = 0.0,
               W_ref: torch.Tensor | None = None, prior_rel: float = 0.0, z: float = 0.0
               ) -> tuple[DiscreteHead, dict]:
    """Sweeps of :func:`block_step` over all rows, (α, b) refit after each, stopped on validation loss.
    The steps minimise the true mean CE + (l2/2)‖W‖² on ``fit`` (+ the prior (λ/2)‖W − W_ref‖² when
    ``prior_rel`` > 0: λ = prior_rel · the mean diagonal of the CE Hessian at the start, fixed for the run),
    with the noise-aware gate ``z`` (see :func:`block_step`)."""
    dh = start.clone()
    best, best_val, bad, sweeps = dh.clone(), evaluate(dh.head(), val)[0], 0, []
    lam = None
    for sweep in range(cfg.sweeps):
        t0 = time.perf_counter()
        stats = HeadStats(dh.head(), fit, l2=l2, device=cfg.device, dtype=cfg.dtype, subsample=cfg.subsample,
                          seed=child_seed(cfg.seed, sweep))
        if lam is None:
            lam = prior_rel * mean_hessian_diag(stats) if prior_rel > 0 else 0.0
        prior = PriorStats(stats, W_ref, lam) if lam > 0 else None
        blocks = _block_rows(dh.codes.shape[0], cfg.rows_per_block, cfg.seed, sweep)
        if cfg.step_solver == "anneal":
            steps = anneal_sweep(stats, dh, blocks, cfg, child_seed(cfg.seed, sweep), prior=prior, z=z)
        else:
            steps = [block_step(stats, dh, rows, cfg, child_seed(cfg.seed, sweep, j), prior=prior, z=z)
                     for j, rows in enumerate(blocks)]
        fit_loss_steps = stats.loss
        dh, rinfo = refit_scales(dh, fit, l2)
        val_loss = evaluate(dh.head(), val)[0]
        gaps = [s["energy_gap_anneal"] for s in steps if "energy_gap_anneal" in s]
        sweeps.append({"sweep": sweep, "accepted": sum(s["accepted"] for s in steps), "blocks": len(steps),
                       "gated": sum(bool(s.get("gated")) for s in steps),
                       "tried": sum("loss_after" in s for s in steps),   # the rest had no predicted gain
                       "stages": _count(s["stage"] for s in steps if s["accepted"]),
                       "predicted_change_accepted": float(sum(s["predicted_change"] for s in steps if s["accepted"])),
                       "true_change_accepted": float(sum(s["loss_after"] - s["loss_before"]
                                                         for s in steps if s["accepted"])),
                       "anneal_gap_mean": float(np.mean(gaps)) if gaps else None,
                       "anneal_gap_max": float(np.max(gaps)) if gaps else None,
                       "fit_loss_after_steps": fit_loss_steps,
                       "train_loss": rinfo["loss"], "val_loss": val_loss, "wall_time_s": time.perf_counter() - t0})
        if on_sweep is not None:
            on_sweep(sweep, dh)
        if val_loss < best_val - 1e-9:
            best, best_val, bad = dh.clone(), val_loss, 0
        else:
            bad += 1
            if bad >= cfg.patience or not sweeps[-1]["accepted"]:
                break
    return best, {"sweeps": sweeps, "best_val_loss": best_val, "prior_rel": prior_rel, "prior_lambda": lam, "z": z}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out


# ---------------------------------------------------------------- the three methods behind one call

def split_fit_val(train: FeatureSet, val_fraction: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """A seeded random hold-out of ``val_fraction`` of train (the same split for every method)."""
    perm = torch.randperm(train.n, generator=torch_generator(child_seed(seed, 1)))
    n_val = max(1, int(round(val_fraction * train.n)))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)


def _point(dh_or_head, train: FeatureSet, test: FeatureSet | None, wall: float, phase: str) -> dict:
    head = dh_or_head.head() if isinstance(dh_or_head, DiscreteHead) else dh_or_head
    tl, ta = evaluate(head, train)
    out = {"wall_time_s": wall, "train_loss": tl, "train_acc": ta, "phase": phase}
    if test is not None:
        out["test_loss"], out["test_acc"] = evaluate(head, test)
    return out


@dataclass
class PtqStart:
    """The ptq head of one (grid, seed): ``head`` with (α, b) refit on all of train (the ``ptq`` answer) and
    ``start`` the same codes with (α, b) fitted on the fit split only (where ste and qubo start, so that the
    validation split stays held out); ``l2`` the validation-chosen refit weight, ``wall_time_s`` its cost."""

    head: DiscreteHead
    start: DiscreteHead
    l2: float
    info: dict
    wall_time_s: float


def ptq_start(head: Head, train: FeatureSet, cfg: DiscreteConfig) -> PtqStart:
    """ptq on the fit split, its (α, b) refit with L2 chosen on validation (see :func:`tuned_refit`)."""
    t0 = time.perf_counter()
    fit, val = split_fit_val(train, cfg.val_fraction, cfg.seed)
    info: dict = {}
    dh, info["ptq"] = ptq(head, fit, cfg)
    dh, info["refit"] = tuned_refit(dh, fit, val, train, cfg.l2_grid)
    start, _ = refit_scales(dh, fit, info["refit"]["l2"])
    return PtqStart(dh, start, info["refit"]["l2"], info, time.perf_counter() - t0)


def train_discrete(head: Head, train: FeatureSet, test: FeatureSet | None, cfg: DiscreteConfig,
                   start: PtqStart | None = None) -> tuple[DiscreteHead, dict]:
    """Train a ``cfg.grid`` head from the fp32 ``head`` by ``cfg.method``; return it and a JSON-able
    record: ``history`` (points of wall time, train/test loss and accuracy), ``final``, ``info``.

    ``start``: the :func:`ptq_start` of the same (head, train, grid, seed), computed once and shared by the
    methods of an experiment; its wall time is counted in every method's clock as if computed here."""
    cfg.validate()
    if start is None:
        start = ptq_start(head, train, cfg)
    t0 = time.perf_counter() - start.wall_time_s
    history: list[dict] = []
    fit, val = split_fit_val(train, cfg.val_fraction, cfg.seed)
    info: dict = dict(start.info)
    dh = start.head
    history.append(_point(dh, train, test, time.perf_counter() - t0, "ptq"))
    if cfg.method == "ste":
        dh, info_ste = _run_ste(head, train, test, fit, val, cfg, history, t0, start)
        info.update(info_ste)
    elif cfg.method == "qubo":
        dh, info_q = _run_qubo(head, train, test, fit, val, cfg, history, t0, start)
        info.update(info_q)
    final = _point(dh, train, test, time.perf_counter() - t0, "final")
    final["val_loss"] = evaluate(dh.head(), val)[0]
    final["codes_nonzero"] = float((dh.codes != 0).float().mean())
    return dh, {"config": cfg.to_dict(), "history": history, "final": final, "info": info,
                "wall_time_s": time.perf_counter() - t0}


def _run_qubo(head, train, test, fit, val, cfg, history, t0, start: PtqStart) -> tuple[DiscreteHead, dict]:
    """qubo_train for every (prior, z) of the grid, from the ptq start with (α, b) fitted on the fit split
    (the refit on all of train saw the validation samples and would make every sweep look worse); the run
    of the lowest validation loss wins, then (α, b) are refit on all of train."""
    runs = []
    for prior_rel in cfg.prior_grid:
        for z in cfg.z_grid:
            tag = f"prior {prior_rel:g} z {z:g}"

            def on_sweep(sweep: int, cur: DiscreteHead, tag=tag) -> None:
                history.append(_point(cur, train, test, time.perf_counter() - t0, f"{tag} sweep {sweep}"))
            best, qinfo = qubo_train(start.start, fit, val, cfg, on_sweep, l2=start.l2, W_ref=head.W,
                                     prior_rel=float(prior_rel), z=float(z))
            runs.append((qinfo["best_val_loss"], best, qinfo))
    i = min(range(len(runs)), key=lambda j: runs[j][0])
    dh, rinfo = refit_scales(runs[i][1], train, start.l2)
    history.append(_point(dh, train, test, time.perf_counter() - t0, "final"))
    return dh, {"qubo": runs[i][2], "qubo_grid": [r[2] for r in runs], "final_refit": rinfo}


def _run_ste(head, train, test, fit, val, cfg, history, t0, start: PtqStart) -> tuple[DiscreteHead, dict]:
    """Tuned STE from every start of ``cfg.ste_starts``: ``fp32`` (latent = the fp32 head, XNOR/TWN scales
    recomputed from W) and ``ptq`` (latent = the ptq head's α·codes with (α, b) fitted on the fit split,
    scales learned): lr and epochs (0 = the start itself) chosen on the validation split over all starts,
    retrained on all of train from the same start, then (α, b) refit (:func:`tuned_refit`)."""
    from qubo_nn.train.ste import quantize_rows, train_ste, train_ste_scaled, tune_ste, tune_ste_scaled

    def to_dh(W: torch.Tensor, b: torch.Tensor) -> DiscreteHead:
        codes, alpha = quantize_rows(W.to(torch.float64), cfg.grid)
        return DiscreteHead(codes.to(torch.int8), alpha, b.to(torch.float64), cfg.grid)

    def from_codes(c, a, b) -> DiscreteHead:
        return DiscreteHead(c.to(torch.int8), a.to(torch.float64), b.to(torch.float64), cfg.grid)

    tunings = {}
    for s in cfg.ste_starts:
        if s == "fp32":
            tunings[s] = tune_ste(head, fit, val, cfg.grid, cfg.ste_lrs, cfg.ste_epochs, cfg.ste_batch, cfg.seed)
        else:
            st = start.start
            tunings[s] = tune_ste_scaled(st.codes, st.alpha, st.b, fit, val, cfg.grid, cfg.ste_lrs, cfg.ste_epochs,
                                         cfg.ste_batch, cfg.seed)
        tunings[s]["start"] = s
    choice = min(tunings, key=lambda s: tunings[s]["val_loss"])
    tuned = tunings[choice]
    history.append(_point(to_dh(head.W, head.b) if choice == "fp32" else start.head, train, test,
                          time.perf_counter() - t0, f"ste start {choice} (tuned)"))
    if choice == "fp32":
        if tuned["epochs"] > 0:
            W, b = train_ste(head, train, cfg.grid, tuned["lr"], tuned["epochs"], cfg.ste_batch, cfg.seed,
                             on_epoch=lambda e, W, b: history.append(
                                 _point(to_dh(W, b), train, test, time.perf_counter() - t0, f"epoch {e}")))
        else:
            W, b = head.W, head.b
        dh = to_dh(W, b)
    else:
        st = start.head
        if tuned["epochs"] > 0:
            c, a, b = train_ste_scaled(st.codes, st.alpha, st.b, train, cfg.grid, tuned["lr"], tuned["epochs"],
                                       cfg.ste_batch, cfg.seed,
                                       on_epoch=lambda e, c, a, b: history.append(
                                           _point(from_codes(c, a, b), train, test, time.perf_counter() - t0,
                                                  f"epoch {e}")))
            dh = from_codes(c, a, b)
        else:
            dh = st.clone()
    dh, refit = tuned_refit(dh, fit, val, train, cfg.l2_grid)
    history.append(_point(dh, train, test, time.perf_counter() - t0, "final"))
    return dh, {"ste": tuned, "ste_tunings": tunings, "ste_start": choice, "final_refit": refit}
