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

import time
from dataclasses import dataclass

import numpy as np
import torch

from qubo_nn.core.head import Head, evaluate
from qubo_nn.core.model import damping_mu
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.workflows.discrete_head import (DISCRETE_GRIDS, DISCRETE_METHODS, STE_STARTS, STEP_SOLVERS,
                                             DiscreteConfig, DiscreteHead, refit_scales, round_row, split_fit_val,
                                             threshold_codes, tuned_refit)
from qubo_nn.workflows.discrete_steps import qubo_train

__all__ = ["DISCRETE_GRIDS", "DISCRETE_METHODS", "STE_STARTS", "STEP_SOLVERS", "DiscreteConfig", "DiscreteHead",
           "PtqStart", "ptq", "ptq_start", "refit_scales", "round_row", "split_fit_val", "threshold_codes",
           "train_discrete", "tuned_refit"]

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


# ---------------------------------------------------------------- the three methods behind one call

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
