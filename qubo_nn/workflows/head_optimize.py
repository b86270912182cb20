"""Pipelined hybrid optimizer of the FC head: block QUBOs annealed on CPU threads (or Ray tasks).

One sweep visits every block of :func:`qubo_nn.workflows.build.plan_blocks`. For each block the
*device* (GPU when present, else the main thread's CPU) computes the local model at the
current head (:meth:`HeadStats.block`), encodes it and builds the BQM; a *CPU worker thread*
anneals it (:func:`qubo_nn.samplers.sample`; neal releases the GIL); the device decodes the
best sample and evaluates the TRUE training loss of the step (:meth:`HeadStats.trial_loss`: exact,
from the current logits, without moving the head). Every decision is the one step policy of
:mod:`qubo_nn.steps.policy` (the same as ``decode`` and BatchNorm tuning): the step is accepted
iff loss_after < loss_before − ``accept_tol``, on the trial loss and again on the incremental
loss after :meth:`HeadStats.update` (else undone). Otherwise, and when the best sample predicts
no gain over the current weights, the block is retried with more damping (μ × ``damping_growth``;
the local model recomputed at the then-current head, re-encoded, BQM rebuilt) up to
``max_retries`` times, after which the old weights are kept. The sampler gets the block's
integer form too (``integer_form``) when it takes one, so the level samplers (``gptq``, ``cd``,
``pipeline``, ``decompose``) run inside the hybrid like the annealers. The pipelined sweep
itself lives in :mod:`qubo_nn.steps.sweep`.

Pipelining (``workers`` = W anneals in flight). The schedule is fixed, not timing-driven, so a
run is reproducible: while block k anneals, the device evaluates block k−1 and then builds
block k+1 (with W workers: W blocks anneal, one more is built ahead). Consequence, documented
as *staleness*: block k+1's local model (gradient, Hessian, L0) is computed before block k's
step is applied (and, with W workers, before up to W earlier steps). This is safe because the
blocks of one sweep touch disjoint weights (checked), so the decoded weights of block k+1 are
still "old values + its own step", and every step is accepted or undone on the exactly
re-evaluated loss at the then-current head. Only the *prediction* is stale; each block record
says how many steps were applied between its build and its evaluation (``stale_steps``).
A retry is built at the current head (no staleness for its model beyond the in-flight blocks).

Incremental losses drift by float rounding; every sweep starts from a fresh :class:`HeadStats`
(one exact pass) and the final loss is recomputed with :func:`qubo_nn.core.head.evaluate`.

Time accounting of a sweep's pipelined section (from the start of its first build to the end
of its last evaluation, ``wall_s``), all from :func:`time.perf_counter` intervals:

- ``device_s`` = |D|: total length of the device-stage intervals D (builds and evaluations,
  all on the main thread, so they never overlap each other);
- ``anneal_s`` = |A|: length of the union A of the anneal intervals (time during which at least
  one anneal runs; equals the sum of the anneal times when ``workers == 1``); ``anneal_cpu_s``
  is the plain sum over anneals (thread-seconds);
- ``intersection_s`` = |D ∩ A| and ``gap_s`` = wall − |D ∪ A| (neither stage running:
  scheduling, waking up, handing samples over), so that exactly

      wall_s = device_s + anneal_s − intersection_s + gap_s;

- ``hidden_s`` = device_s + anneal_s − wall_s = intersection_s − gap_s: the time a serial
  loop would have spent on top of this one;
- ``overlap`` = hidden_s / min(device_s, anneal_s): 1.0 means the shorter stage was hidden
  entirely behind the longer one, 0 means no gain over running the stages one after another.

Outside the pipelined sections: ``setup_s`` (one full pass per sweep for the fresh
HeadStats and the block plan) and ``final_eval_s``; ``total_wall_s`` is the whole call.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ContextManager

import torch

from qubo_nn.core.head import Head, check_compatible, evaluate
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import ExecutorConfig, open_executor
from qubo_nn.runtime import resolve_device
from qubo_nn.steps.policy import DEFAULT_ACCEPT_TOL, StepPolicy
from qubo_nn.steps.sweep import SamplerCaps, check_disjoint as _check_disjoint, interval_accounting, run_sweep
from qubo_nn.workflows.build import BuildConfig

__all__ = ["DEFAULT_SAMPLER_PARAMS", "HybridConfig", "default_build", "hybrid_sweeps", "interval_accounting",
           "_check_disjoint"]

DEFAULT_SAMPLER_PARAMS = {"num_reads": 1, "num_sweeps": 100}


def default_build() -> BuildConfig:
    """The builder's settings for hybrid steps: 4 bits and a window of 0.5 diagonal Newton steps.

    Why 0.5 (the builder's default is 2): in optimize mode the current weight sits at level
    2^(b−1) (or 2^(b−1) − 1), where the one-level move downhill flips all b bits; the one-flip
    moves are the top bit (±2^(b−1) levels, i.e. the far end of the window) and the low bits
    uphill. With window = 2 the top-bit flip lands at twice the diagonal Newton step, where a
    lone weight's predicted change is exactly zero (positive with damping), so the current
    bits are a single-flip local minimum and short anneals rarely beat them (digits: 4 of 10
    row blocks accepted at 100 sweeps). At 0.5 the top-bit flip is a descent move
    (change −(3/8)·g²/H per weight) and all 10 blocks were accepted, with a larger total gain.
    """
    return BuildConfig(bits=4, window=0.5)


@dataclass
class HybridConfig:
    """Settings of :func:`hybrid_sweeps`.

    ``build``: how blocks become QUBOs (its ``device`` is ignored: the ``device`` argument of
    :func:`hybrid_sweeps` wins). ``sampler`` / ``sampler_params`` / ``polish``: passed to
    :func:`qubo_nn.samplers.sample`. ``warm_start``: offer the current weights' bits as an
    initial state where the sampler takes ``initial_states``. ``sweeps``: at most this many
    sweeps; ``tol``: stop after a sweep that lowered the training loss by less (nats).
    ``accept_tol``: a step is accepted only if the true loss fell by more than this (nats; below
    it, incremental float32 rounding could hide a rise). ``max_retries``, ``damping_growth``:
    a rejected step is retried with μ × growth^r, r = 1..max_retries. ``workers``: anneals in
    flight. ``executor``/``ray_address``: where they run (:mod:`qubo_nn.execution.executors`: CPU threads,
    or Ray tasks that get each BQM as compact arrays; the same samples either way; with Ray
    the anneal intervals of the time accounting are the workers' clocks, comparable with the
    driver's only on one machine). ``device_threads``: torch intra-op threads wanted while the sweeps run
    (None: leave as is); a recorded setting that the CLI applies (through ``thread_scope``), never
    this library. On a CPU-only machine, cores − workers keeps the stages from fighting.
    ``seed``: seeds the samplers, ``child_seed(seed, sweep, block, attempt)``
    (:func:`qubo_nn.steps.policy.step_seed`).
    """

    build: BuildConfig = field(default_factory=default_build)
    sampler: str = "neal"
    sampler_params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER_PARAMS))
    polish: bool = False
    warm_start: bool = True
    sweeps: int = 1
    tol: float = 1e-4
    accept_tol: float = DEFAULT_ACCEPT_TOL
    max_retries: int = 2
    damping_growth: float = 4.0
    workers: int = 1
    device_threads: int | None = None
    seed: int = 0
    executor: str = "threads"
    ray_address: str | None = None

    def executor_config(self) -> ExecutorConfig:
        """The anneal stage's executor: ``workers`` anneals at a time, no more in flight."""
        return ExecutorConfig(executor=self.executor, workers=self.workers, ray_address=self.ray_address,
                              max_in_flight=self.workers)

    def validate(self) -> None:
        self.build.validate()
        for name in ("sweeps", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise QuboNNError(f"{name} must be an integer >= 1, got {v!r}")
        self.policy().validate()
        if not (self.tol >= 0 and self.accept_tol >= 0):
            raise QuboNNError(f"tol and accept_tol must be >= 0, got {self.tol!r} and {self.accept_tol!r}")
        if self.device_threads is not None and (not isinstance(self.device_threads, int) or self.device_threads < 1):
            raise QuboNNError(f"device_threads must be None or an integer >= 1, got {self.device_threads!r}")
        if not isinstance(self.sampler_params, dict):
            raise QuboNNError(f"sampler_params must be a dict, got {type(self.sampler_params).__name__}")
        self.executor_config().validate()

    def policy(self) -> StepPolicy:
        """The step policy of every block: :mod:`qubo_nn.steps.policy`."""
        return StepPolicy(self.accept_tol, self.max_retries, self.damping_growth)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HybridConfig":
        d = dict(d)
        d["build"] = BuildConfig(**d.get("build", {}))
        return cls(**d)


def hybrid_sweeps(head: Head, train_feats: FeatureSet, cfg: HybridConfig, device: str | torch.device = "auto",
                  progress: bool = False, callback: Callable[[dict, Head], None] | None = None,
                  thread_scope: Callable[[], ContextManager] | None = None) -> tuple[Head, dict]:
    """Improve ``head`` by pipelined block-QUBO sweeps; return the new head and a JSON-able record.

    ``callback(block_record, head)`` is called after each block's final decision (accepted,
    kept after retries, or no predicted gain) with the head at that moment. ``thread_scope``:
    a context manager factory entered around the sweeps (the CLI passes one that applies
    ``cfg.device_threads``; this function never changes process-wide settings). The record:

    - ``blocks``: one :func:`qubo_nn.steps.policy.step_record` per (sweep, block): ``accepted``,
      ``reason``, ``loss_before``/``loss_after``, ``predicted_change`` (E(x) − L0, the damped model
      the sampler minimised) / ``true_change`` (exact trial loss − loss before), ``damping``,
      ``retries`` and ``attempts`` (each with damping, energies, losses, seed and
      ``build_s``/``solve_s``/``evaluate_s``);
    - ``sweeps``: per sweep losses and the time accounting of the module docstring;
    - top level: ``loss_start``, ``loss_end`` (exact, :func:`qubo_nn.core.head.evaluate`),
      ``acc_end``, ``stopped`` ("sweeps" or "tol"), and the time totals over all sweeps.
    """
    from qubo_nn import samplers

    cfg.validate()
    check_compatible(head, train_feats)
    dev = resolve_device(device)
    bcfg = replace(cfg.build, device=str(dev))
    caps = SamplerCaps.of(samplers.get_sampler(cfg.sampler))
    t_call = time.perf_counter()
    record: dict[str, Any] = {"config": cfg.to_dict(), "device": str(dev), "blocks": [], "sweeps": [],
                              "warm_start_used": bool(cfg.warm_start and caps.takes_initial),
                              "integer_form_used": caps.takes_form}
    current = head
    with (thread_scope() if thread_scope is not None else contextlib.nullcontext()):
        with open_executor(cfg.executor_config()) as pool:
            for sweep in range(cfg.sweeps):
                current, srec = run_sweep(current, train_feats, cfg, bcfg, dev, sweep, pool, caps,
                                          record["blocks"], progress, callback)
                record["sweeps"].append(srec)
                if sweep == 0:
                    record["loss_start"] = srec["loss_before"]
                if srec["gain"] < cfg.tol:
                    record["stopped"] = "tol"
                    break
            else:
                record["stopped"] = "sweeps"
    t0 = time.perf_counter()
    out = current.to(head.W.device, head.W.dtype)
    record["loss_end"], record["acc_end"] = evaluate(current, train_feats, l2=bcfg.l2)
    record["final_eval_s"] = time.perf_counter() - t0
    record["loss_end_incremental"] = record["sweeps"][-1]["loss_after"]
    record.update(_totals(record["sweeps"]))
    record["total_wall_s"] = time.perf_counter() - t_call
    return out, record


def _totals(sweeps: list[dict]) -> dict[str, float]:
    keys = ("wall_s", "device_s", "anneal_s", "anneal_cpu_s", "intersection_s", "gap_s", "hidden_s", "setup_s")
    tot = {k: float(sum(s[k] for s in sweeps)) for k in keys}
    shorter = min(tot["device_s"], tot["anneal_s"])
    tot["overlap"] = tot["hidden_s"] / shorter if shorter > 0 else 0.0
    tot["accepted"] = int(sum(s["accepted"] for s in sweeps))
    tot["blocks_visited"] = int(sum(s["blocks"] for s in sweeps))
    tot["retries"] = int(sum(s["retries"] for s in sweeps))
    return tot
