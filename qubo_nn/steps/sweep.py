"""One pipelined sweep of the hybrid over disjoint blocks (see :mod:`qubo_nn.workflows.head_optimize`).

While block k anneals on a worker (thread or Ray task), the device evaluates block k−1 and then
builds block k+1; with W workers, W anneals are in flight and one more is built ahead. The
schedule is fixed (not timing-driven), so a run is reproducible. Every decision goes through
:mod:`qubo_nn.steps.policy` (acceptance, retries, seeds, records).
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from qubo_nn.core.bqm import build_bqm, integer_form
from qubo_nn.core.encoding import optimize_encoding
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.errors import QuboNNError
from qubo_nn.execution import block_task
from qubo_nn.steps import policy as sp
from qubo_nn.workflows.build import BlockQUBO, BuildConfig, damping_for, plan_blocks


@dataclass
class SamplerCaps:
    """What the sweep offers a sampler: ``initial_states`` (warm start), ``integer_form`` (levels)."""

    takes_initial: bool
    takes_form: bool

    @classmethod
    def of(cls, sampler) -> "SamplerCaps":
        params = getattr(sampler, "parameters", {}) or {}
        return cls("initial_states" in params, "integer_form" in params)


@dataclass
class Job:
    """One anneal of one block (attempt 0 = first try, r = r-th retry)."""

    block_id: int
    idx: torch.Tensor
    attempt: int
    blk: BlockQUBO | None = None
    form: Any = None
    build_s: float = 0.0
    built_after: int = 0      # accepted steps applied when the model was built
    seed: int = 0
    initial: np.ndarray | None = None
    result: Any = None        # (SampleSet, t_start, t_end)


def encode_block(model, bcfg: BuildConfig, mu: float, with_form: bool):
    """(Encoding, BQM, IntegerForm or None) of a local model at damping μ, in optimize mode."""
    enc = optimize_encoding(model, bcfg.bits, bcfg.window, mu, bcfg.step_rule, bcfg.step, kind=bcfg.encoding)
    bqm = build_bqm(model, enc, mu, bcfg.bqm_dtype, bcfg.max_qubo_bytes)
    return enc, bqm, (integer_form(model, enc, mu) if with_form else None)


def attempt_damping(model, bcfg: BuildConfig, policy: sp.StepPolicy, attempt: int) -> float:
    """μ of attempt r: the build's μ_0 grown by the policy (undamped: from 1e-3 · mean diag H)."""
    floor = sp.UNDAMPED_RETRY_FLOOR * float(model.H.diagonal().mean())
    return policy.damping(damping_for(model, bcfg), attempt, floor)


def build_block(stats: HeadStats, job: Job, bcfg: BuildConfig, policy: sp.StepPolicy, with_form: bool) -> None:
    """The local model at the current head, encoded at the attempt's damping, into ``job.blk``/``job.form``."""
    t0 = time.perf_counter()
    model = stats.block(job.idx)
    if stats.device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    mu = attempt_damping(model, bcfg, policy, job.attempt)
    enc, bqm, job.form = encode_block(model, bcfg, mu, with_form)
    job.blk = BlockQUBO(job.block_id, model, enc, bqm, mu, {"hessian_s": t1 - t0, "qubo_s": time.perf_counter() - t1})


def check_disjoint(blocks: list[torch.Tensor]) -> None:
    allidx = torch.cat([b.reshape(-1) for b in blocks])
    if torch.unique(allidx).numel() != allidx.numel():
        raise QuboNNError("the blocks of a sweep must be disjoint (pipelining applies steps out of build order)")


class Sweep:
    """The state of one sweep: queues, the head's :class:`HeadStats`, intervals and block records."""

    def __init__(self, stats: HeadStats, blocks: list[torch.Tensor], cfg, bcfg: BuildConfig, sweep: int, pool,
                 caps: SamplerCaps, block_log: list, bar, callback: Callable | None):
        self.stats, self.cfg, self.bcfg, self.sweep, self.pool, self.caps = stats, cfg, bcfg, sweep, pool, caps
        self.policy = sp.StepPolicy(cfg.accept_tol, cfg.max_retries, cfg.damping_growth)
        self.pending = collections.deque(Job(k, idx, 0) for k, idx in enumerate(blocks))
        self.built: collections.deque[Job] = collections.deque()
        self.inflight: collections.deque[tuple[Job, Any]] = collections.deque()
        self.dev_iv: list[tuple[float, float]] = []
        self.anneal_iv: list[tuple[float, float]] = []
        self.n_accepted = 0
        self.attempts: dict[int, list[dict]] = {}
        self.finished: list[dict] = []
        self.block_log, self.bar, self.callback = block_log, bar, callback

    def build(self, job: Job) -> None:
        t0 = time.perf_counter()
        build_block(self.stats, job, self.bcfg, self.policy, self.caps.takes_form)
        job.built_after = self.n_accepted
        job.seed = sp.step_seed(self.cfg.seed, self.sweep, job.block_id, job.attempt)
        if self.cfg.warm_start and self.caps.takes_initial:
            job.initial = job.blk.enc.current_bits().cpu().numpy().astype(np.int8)[None, :]
        t1 = time.perf_counter()
        job.build_s = t1 - t0
        self.dev_iv.append((t0, t1))
        self.built.append(job)

    def submit(self) -> None:
        job = self.built.popleft()
        ships = self.pool.cfg.ships_tasks
        task = {"bqm": block_task.pack_bqm(job.blk.bqm) if ships else job.blk.bqm, "sampler": self.cfg.sampler,
                "params": dict(self.cfg.sampler_params), "seed": job.seed, "polish": self.cfg.polish,
                "initial": job.initial}
        if job.form is not None:
            task["form"] = job.form.arrays() if ships else job.form
        self.inflight.append((job, self.pool.submit(block_task.sample_task, task)))

    def evaluate(self, job: Job) -> None:
        t0 = time.perf_counter()
        sampleset, ts, te = job.result
        self.anneal_iv.append((ts, te))
        att = self._attempt(job, sampleset, te - ts)
        retry = not att["accepted"] and self.policy.may_retry(job.attempt)
        t1 = time.perf_counter()
        att["evaluate_s"] = t1 - t0
        self.dev_iv.append((t0, t1))
        self.attempts.setdefault(job.block_id, []).append(att)
        if retry:
            self.pending.appendleft(Job(job.block_id, job.idx, job.attempt + 1))
        else:
            self._finish(job)

    def _attempt(self, job: Job, sampleset, solve_s: float) -> dict[str, Any]:
        """Decode the best sample and decide it with the policy; the attempt's record."""
        blk, stats = job.blk, self.stats
        x = sp.best_sample(sampleset, blk.enc.num_variables)
        cur = blk.enc.current_bits().cpu().numpy().astype(np.int8)
        e_best, e_cur = sp.sample_energies(blk.bqm, x, cur)
        moved = int((blk.enc.levels(x) != blk.enc.levels(cur)).sum())
        att = sp.attempt_record(job.attempt, blk.damping, e_best, e_cur, blk.model.L0,
                                num_variables=blk.enc.num_variables, stale_steps=self.n_accepted - job.built_after,
                                seed=job.seed, build_s=job.build_s, hessian_s=blk.timings["hessian_s"],
                                qubo_s=blk.timings["qubo_s"], solve_s=solve_s, moved_weights=moved,
                                sampler_params=sampleset.info.get("params"),
                                sampler_wall_s=sampleset.info.get("wall_time_s"))
        before = stats.loss
        if not sp.predicts_gain(e_best, e_cur) or moved == 0:
            return sp.decide(att, False, sp.REASON_NO_GAIN, before, before)
        ok, trial, after = sp.try_step(stats, blk.enc.idx, blk.enc.decode(x), before, self.policy.accept_tol)
        self.n_accepted += ok
        return sp.decide(att, ok, sp.REASON_FELL if ok else sp.REASON_ROSE, before, after, trial)

    def _finish(self, job: Job) -> None:
        entry = sp.step_record(self.attempts.pop(job.block_id), sweep=self.sweep, block_id=job.block_id,
                               size=int(job.idx.numel()))
        self.finished.append(entry)
        self.block_log.append(entry)
        self.bar.update(1)
        if self.callback is not None:
            self.callback(entry, self.stats.head())

    def _next_result(self) -> Job:
        job, fut = self.inflight.popleft()
        res = self.pool.result(fut)[1]
        job.result = (block_task.to_sampleset(res), res["t_start"], res["t_end"])
        return job

    def run(self) -> tuple[float, float]:
        """Fill the workers (build on demand), build one ahead, wait for the oldest, evaluate it;
        until nothing is pending. Returns the section's (t_start, t_end)."""
        t_start = time.perf_counter()
        try:
            while True:
                while len(self.inflight) < self.cfg.workers and (self.built or self.pending):
                    if not self.built:
                        self.build(self.pending.popleft())
                    self.submit()
                if not self.built and self.pending:
                    self.build(self.pending.popleft())
                if not self.inflight:
                    break
                job = self._next_result()
                if self.built and len(self.inflight) < self.cfg.workers:
                    self.submit()
                self.evaluate(job)
        except BaseException:
            self.pool.cancel([fut for _, fut in self.inflight])
            raise
        return t_start, time.perf_counter()


def run_sweep(head, feats, cfg, bcfg: BuildConfig, dev, sweep: int, pool, caps: SamplerCaps, block_log: list,
              progress: bool, callback: Callable | None):
    """One sweep from a fresh :class:`HeadStats` of ``head``; returns (new head, sweep record)."""
    t_setup = time.perf_counter()
    stats = HeadStats(head, feats, bcfg.l2, dev, bcfg.dtype, bcfg.chunk, bcfg.subsample, bcfg.seed)
    blocks = plan_blocks(stats, bcfg)
    check_disjoint(blocks)
    setup_s = time.perf_counter() - t_setup
    loss_before = stats.loss
    bar = tqdm(total=len(blocks), desc=f"QUBO sweep {sweep + 1}", unit="block", leave=False, disable=not progress)
    sw = Sweep(stats, blocks, cfg, bcfg, sweep, pool, caps, block_log, bar, callback)
    try:
        t_start, t_end = sw.run()
    finally:
        bar.close()
    srec = {"sweep": sweep, "blocks": len(blocks), "loss_before": loss_before, "loss_after": stats.loss,
            "gain": loss_before - stats.loss, "accepted": sum(1 for e in sw.finished if e["accepted"]),
            "retries": sum(e["retries"] for e in sw.finished), "anneals": len(sw.anneal_iv), "setup_s": setup_s}
    srec.update(interval_accounting(sw.dev_iv, sw.anneal_iv, t_start, t_end))
    return stats.head(), srec


def _union(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(iv: list[tuple[float, float]]) -> float:
    return float(sum(b - a for a, b in iv))


def _intersect(u: list[tuple[float, float]], v: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out, i, j = [], 0, 0
    while i < len(u) and j < len(v):
        a, b = max(u[i][0], v[j][0]), min(u[i][1], v[j][1])
        if a < b:
            out.append((a, b))
        if u[i][1] < v[j][1]:
            i += 1
        else:
            j += 1
    return out


def interval_accounting(device_iv: list[tuple[float, float]], anneal_iv: list[tuple[float, float]],
                        t_start: float, t_end: float) -> dict[str, float]:
    """Time accounting of a pipelined section [t_start, t_end] (see :mod:`qubo_nn.workflows.head_optimize`).

    Returns ``wall_s``, ``device_s`` (|D|), ``anneal_s`` (|A|, union), ``anneal_cpu_s`` (sum),
    ``intersection_s`` (|D ∩ A|), ``gap_s`` (wall − |D ∪ A|), ``hidden_s`` (device + anneal −
    wall) and ``overlap`` (hidden / min(device, anneal); 0 when either stage is empty), with
    wall = device + anneal − intersection + gap exactly (up to float rounding).
    """
    D, A = _union(device_iv), _union(anneal_iv)
    device_s, anneal_s = _length(D), _length(A)
    inter = _length(_intersect(D, A))
    wall = t_end - t_start
    gap = wall - (device_s + anneal_s - inter)
    hidden = device_s + anneal_s - wall
    shorter = min(device_s, anneal_s)
    return {"wall_s": wall, "device_s": device_s, "anneal_s": anneal_s,
            "anneal_cpu_s": float(sum(b - a for a, b in anneal_iv)), "intersection_s": inter, "gap_s": gap,
            "hidden_s": hidden, "overlap": hidden / shorter if shorter > 0 else 0.0}
