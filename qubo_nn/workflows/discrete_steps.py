"""``qubo`` training of discrete heads (issue 19): sweeps of steps over blocks of class rows. A step is the
exact second-order model of the mean cross-entropy around the current discrete head over the block's codes
(g and H from :class:`~qubo_nn.curvature.head_stats.HeadStats` at that head; the damped Newton target),
solved by the annealing pipeline, by CD alone, or all blocks of a sweep in one annealed batch, and kept only
if the TRUE training loss falls (:func:`qubo_nn.steps.policy.try_step`). (α, b) are refit between sweeps and
the sweeps stop on the validation loss (:func:`qubo_train`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from qubo_nn.core.head import evaluate
from qubo_nn.core.model import damping_mu
from qubo_nn.core.problem import solve_pd
from qubo_nn.core.spins import codes_of_levels, levels_of_codes, spin_problem
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.runtime import child_seed, torch_generator
from qubo_nn.samplers.level_solvers import solve_levels
from qubo_nn.steps.policy import try_step
from qubo_nn.workflows.discrete_head import DiscreteConfig, DiscreteHead, refit_scales

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
        stop = None
        if cfg.step_solver == "anneal":
            steps = anneal_sweep(stats, dh, blocks, cfg, child_seed(cfg.seed, sweep), prior=prior, z=z)
        elif cfg.val_every:       # validation checks inside the sweep: keep the codes of the best prefix
            steps, stop = _sweep_with_val_stop(stats, dh, blocks, cfg, sweep, val=val, prior=prior, z=z)
        else:
            steps = [block_step(stats, dh, rows, cfg, child_seed(cfg.seed, sweep, j), prior=prior, z=z)
                     for j, rows in enumerate(blocks)]
        fit_loss_steps = stats.loss if stop is None else stop.pop("fit_loss_after_steps")
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
                       "train_loss": rinfo["loss"], "val_loss": val_loss, "wall_time_s": time.perf_counter() - t0,
                       **({"val_stop": stop} if stop is not None else {})})
        if on_sweep is not None:
            on_sweep(sweep, dh)
        if val_loss < best_val - 1e-9:
            best, best_val, bad = dh.clone(), val_loss, 0
        else:
            bad += 1
            if bad >= cfg.patience or not sweeps[-1]["accepted"]:
                break
    return best, {"sweeps": sweeps, "best_val_loss": best_val, "prior_rel": prior_rel, "prior_lambda": lam, "z": z}


def _sweep_with_val_stop(stats: HeadStats, dh: DiscreteHead, blocks: list[list[int]], cfg: DiscreteConfig,
                         sweep: int, val: FeatureSet, prior: PriorStats | None, z: float) -> tuple[list[dict], dict]:
    """The blocks of one sweep by :func:`block_step`, with the validation loss of the current head (its α and b
    stay those of the sweep's start) checked after every ``cfg.val_every`` blocks and after the last; the codes
    of the checkpoint with the lowest validation loss (the sweep's start included) are put back into ``dh``.
    Early stopping on held-out data inside a sweep: every step lowers the fit loss, a step that only fits the
    fit split shows as a rise of the validation loss. Returns (the step records, {"trace": [(blocks done,
    val loss)], "kept_blocks", "accepted_kept", "fit_loss_after_steps": the fit loss before the codes were put
    back})."""
    trace = [(0, evaluate(dh.head(), val)[0])]
    best = (trace[0][1], 0, dh.codes.clone())
    steps = []
    for j, rows in enumerate(blocks):
        steps.append(block_step(stats, dh, rows, cfg, child_seed(cfg.seed, sweep, j), prior=prior, z=z))
        if (j + 1) % cfg.val_every == 0 or j == len(blocks) - 1:
            trace.append((j + 1, evaluate(dh.head(), val)[0]))
            if trace[-1][1] < best[0] - 1e-12:
                best = (trace[-1][1], j + 1, dh.codes.clone())
    fit_loss = stats.loss
    dh.codes = best[2]
    kept = sum(s["accepted"] for s in steps[:best[1]])
    return steps, {"trace": trace, "kept_blocks": best[1], "accepted_kept": kept, "fit_loss_after_steps": fit_loss}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it] = out.get(it, 0) + 1
    return out
