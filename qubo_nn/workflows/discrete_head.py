"""The objects shared by the discrete-head trainers (issue 19): the settings (:class:`DiscreteConfig`), a head
of codes and per-row scales (:class:`DiscreteHead`), the threshold codes, the row rounding by CD alternated
with the closed-form α (:func:`round_row`), the convex (α, b) refit and the seeded fit/validation split.
The trainers are in :mod:`qubo_nn.workflows.train_discrete` (ptq, ste, qubo) and the annealed steps of
``qubo`` in :mod:`qubo_nn.workflows.discrete_steps`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from qubo_nn.core.head import Head, evaluate
from qubo_nn.core.spins import codes_of_levels, init_alpha, levels_of_codes, refit_alpha, row_energy, spin_problem, twn_codes
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import child_seed, torch_generator
from qubo_nn.samplers.level_solvers import solve_levels

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
    ``val_every``: qubo checks the validation loss every this many blocks inside a sweep and keeps the codes of
    the best checkpoint (0: only between sweeps).
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
    val_every: int = 0
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
        if isinstance(self.val_every, bool) or not isinstance(self.val_every, int) or self.val_every < 0:
            raise QuboNNError(f"val_every must be an integer >= 0 (0: validation only between sweeps), got {self.val_every!r}")
        if self.val_every and self.step_solver == "anneal":
            raise QuboNNError("val_every works with step_solver 'qubo' or 'cd' (the anneal solver proposes all blocks "
                              "at once), got step_solver='anneal'")
        for name in ("prior_grid", "z_grid"):
            v = getattr(self, name)
            if not v or not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v):
                raise QuboNNError(f"{name} must be a non-empty list of finite numbers >= 0, got {list(v)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("ste_lrs", "l2_grid", "ste_starts", "prior_grid", "z_grid"):
            d[k] = list(getattr(self, k))
        if not self.val_every:      # absent at its default: the records written before it keep their digests
            del d["val_every"]
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


def split_fit_val(train: FeatureSet, val_fraction: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """A seeded random hold-out of ``val_fraction`` of train (the same split for every method)."""
    perm = torch.randperm(train.n, generator=torch_generator(child_seed(seed, 1)))
    n_val = max(1, int(round(val_fraction * train.n)))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)
