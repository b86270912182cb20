"""The one step policy of every block step (hybrid sweeps, ``decode``, BatchNorm tuning).

Pure functions, no torch state, no I/O. A *step* replaces the weights ``idx`` of a model whose
true loss is L (nats per sample) by the decoded best sample of the block's QUBO.

- **Acceptance** (:func:`accept`), the one rule: accept iff ``loss_after < loss_before − tol``,
  ``tol ≥ 0`` (default :data:`DEFAULT_ACCEPT_TOL` = 1e-6 nats). Strict, so a step that changes
  nothing is never "accepted"; the tolerance keeps float32 rounding of an incremental loss from
  passing a rise as a fall. NaN losses are never accepted. The rule is applied twice
  (:func:`try_step`): to the exact trial loss before the step is applied, and again to the loss
  the state reports after applying it; if the two disagree the step is undone (the old rules:
  the hybrid checked both with a tolerance, BatchNorm tuning only the first, ``decode`` only
  the first and with tolerance 0).
- **Predicted change** (:func:`predicted_change`), the one formula: E(x) − L0, the BQM energy of
  the sample minus the loss at the model's point, i.e. the *damped* model
  gᵀΔ + ½Δᵀ(H + μI)Δ. Damped because that is the function the sampler minimised (so the record
  says what the solver was asked) and because it is one subtraction for every sampler and
  every file (the BQM carries L0 in its offset). It is compared with the true change
  ``loss_after − loss_before`` of the same step.
- **Gate** (:func:`predicts_gain`): a sample is only tried if its energy is below the energy of
  the current weights' bits (else nothing can be gained on the model: "no predicted gain").
- **Retries** (:func:`retry_damping`): attempt r uses μ_r = μ_0 · growth^r; an undamped model
  (μ_0 = 0) retries from ``floor`` (the callers pass 1e-3 · mean diag H).
- **Seeds** (:func:`step_seed`): :func:`qubo_nn.runtime.child_seed` (seed, sweep, block, attempt).
  This replaced ``hybrid._derive_seed``, which took the TOP 31 bits of the same SeedSequence
  word (``>> 1``); child_seed takes the LOW 31 bits (``% 2**31``), so every anneal of the hybrid
  and of BatchNorm tuning got a new seed at the change (same seed, same result still holds).
- **Records** (:func:`attempt_record`, :func:`step_record`): every caller reports a step in the
  same words (see :data:`STEP_KEYS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import child_seed

#: nats: a step must lower the true loss by more than this
DEFAULT_ACCEPT_TOL = 1e-6
#: an undamped model's retries start from this fraction of mean diag H
UNDAMPED_RETRY_FLOOR = 1e-3
#: the keys of every step record (a block's final decision), whoever made it
STEP_KEYS = ("accepted", "reason", "loss_before", "loss_after", "true_change", "predicted_change", "damping",
             "retries", "attempts")

REASON_FELL = "loss fell"
REASON_ROSE = "loss did not fall"
REASON_NO_GAIN = "no predicted gain"
REASON_FORCED = "forced"


@dataclass(frozen=True)
class StepPolicy:
    """``accept_tol`` (nats, ≥ 0), ``max_retries`` (≥ 0 retries after the first attempt),
    ``damping_growth`` (> 1: μ × growth per retry)."""

    accept_tol: float = DEFAULT_ACCEPT_TOL
    max_retries: int = 2
    damping_growth: float = 4.0

    def validate(self) -> None:
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise QuboNNError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not self.damping_growth > 1:
            raise QuboNNError(f"damping_growth must be > 1, got {self.damping_growth!r}")
        if not self.accept_tol >= 0:
            raise QuboNNError(f"accept_tol must be >= 0, got {self.accept_tol!r}")

    def accept(self, loss_before: float, loss_after: float) -> bool:
        return accept(loss_before, loss_after, self.accept_tol)

    def damping(self, mu: float, attempt: int, floor: float = 0.0) -> float:
        return retry_damping(mu, attempt, self.damping_growth, floor)

    def may_retry(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` (0 = first) may be followed by another."""
        return attempt < self.max_retries


def accept(loss_before: float, loss_after: float, tol: float = DEFAULT_ACCEPT_TOL) -> bool:
    """The one acceptance rule: ``loss_after < loss_before − tol`` (strict; NaN never passes)."""
    return bool(float(loss_after) < float(loss_before) - float(tol))


def predicts_gain(energy_best: float, energy_current: float) -> bool:
    """Whether the best sample's energy is below the current weights' (strictly)."""
    return bool(energy_best < energy_current)


def predicted_change(energy: float, L0: float) -> float:
    """E(x) − L0 (nats): the damped local model's change of the loss for sample x."""
    return float(energy) - float(L0)


def retry_damping(mu: float, attempt: int, growth: float, floor: float = 0.0) -> float:
    """μ_r = μ_0 · growth^r; attempt 0 is μ_0 itself; an undamped μ_0 = 0 retries from ``floor``."""
    if attempt == 0:
        return float(mu)
    base = mu if mu > 0 else floor
    return float(base * growth ** attempt)


def step_seed(seed: int, sweep: int, block: int, attempt: int) -> int:
    """The sampler seed of one attempt: ``child_seed(seed, sweep, block, attempt)`` in [0, 2³¹)."""
    return child_seed(seed, sweep, block, attempt)


def best_sample(sampleset, n: int) -> np.ndarray:
    """The lowest-energy sample of ``sampleset`` as a 0/1 int8 vector over variables 0..n−1."""
    rec = sampleset.record
    i = int(np.argmin(rec.energy))
    x = np.zeros(n, dtype=np.int8)
    x[np.asarray(list(sampleset.variables), dtype=np.int64)] = rec.sample[i]
    return x


def sample_energies(bqm, *xs: np.ndarray) -> list[float]:
    """BQM energies of 0/1 vectors over variables 0..n−1 (one dimod call)."""
    n = len(xs[0])
    return [float(e) for e in bqm.energies((np.stack(xs), range(n)))]


def try_step(state: Any, idx, values, loss_before: float, tol: float) -> tuple[bool, float, float]:
    """Apply ``values`` at ``idx`` to ``state`` iff :func:`accept` holds for its exact trial loss
    AND for the loss ``state`` reports once the step is applied (else the step is undone).

    ``state`` has ``trial_loss(idx, values)``, ``update(idx, values)``, ``loss`` and ``theta``
    (:class:`~qubo_nn.curvature.head_stats.HeadStats`, BatchNorm tuning's tail state).
    Returns (accepted, trial loss, loss after: ``state.loss``, unchanged when rejected).
    """
    trial = float(state.trial_loss(idx, values))
    if not accept(loss_before, trial, tol):
        return False, trial, loss_before
    old = state.theta[idx.to(state.theta.device)].clone()
    state.update(idx, values)
    if accept(loss_before, state.loss, tol):
        return True, trial, float(state.loss)
    state.update(idx, old)   # the incremental loss disagrees with the trial (rounding): stay safe
    return False, trial, float(state.loss)


def attempt_record(attempt: int, damping: float | None, energy_best: float, energy_current: float, L0: float,
                   **extra: Any) -> dict[str, Any]:
    """One attempt's record: energies and the predicted change E(x_best) − L0 (see the module)."""
    return {"attempt": int(attempt), "damping": None if damping is None else float(damping), "energy_best": float(energy_best),
            "energy_current": float(energy_current), "predicted_change": predicted_change(energy_best, L0), **extra}


def decide(att: dict[str, Any], accepted: bool, reason: str, loss_before: float, loss_after: float,
           trial: float | None = None) -> dict[str, Any]:
    """Fill an attempt record with its decision: accepted, reason, losses, true change (of the trial)."""
    att.update(accepted=bool(accepted), reason=reason, loss_before=float(loss_before), loss_after=float(loss_after),
               trial_loss=None if trial is None else float(trial),
               true_change=(0.0 if trial is None else float(trial) - float(loss_before)))
    return att


def step_record(attempts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A block's final decision (:data:`STEP_KEYS`) from its attempt records (the last decides)."""
    last = attempts[-1]
    return {**extra, "accepted": bool(last["accepted"]), "reason": last["reason"],
            "loss_before": last["loss_before"], "loss_after": last["loss_after"],
            "true_change": last["true_change"], "predicted_change": last["predicted_change"],
            "damping": last["damping"], "retries": len(attempts) - 1, "attempts": attempts}
