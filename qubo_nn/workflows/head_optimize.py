"""Pipelined hybrid optimizer of the FC head: block QUBOs annealed on CPU threads (or Ray tasks).

One sweep visits every block of :func:`qubo_nn.workflows.build.plan_blocks`. For each block the
*device* (GPU when present, else the main thread's CPU) computes the local model at the
current head (:meth:`HeadStats.block`), encodes it and builds the BQM; a *CPU worker thread*
anneals it (:func:`qubo_nn.samplers.sample`; neal releases the GIL); the device decodes the
best sample and evaluates the TRUE training loss of the step (:meth:`HeadStats.trial_loss`: exact,
from the current logits, without moving the head). The step is accepted only if the loss fell
by more than ``accept_tol``, and then applied with :meth:`HeadStats.update` (whose incremental
loss must agree, else the step is undone). Otherwise, and when the best sample predicts no
gain over the current weights, the block is retried with more damping (μ × ``damping_growth``;
the local model recomputed at the then-current head, re-encoded, BQM rebuilt) up to
``max_retries`` times, after which the old weights are kept.

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

import collections
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from qubo_nn.execution import block_task
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import ExecutorConfig, open_executor
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.core.head import Head, check_compatible, evaluate
from qubo_nn.workflows.build import BlockQUBO, BuildConfig, make_block_qubo, plan_blocks
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.runtime import resolve_device

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
    driver's only on one machine). ``device_threads``: torch intra-op threads while the sweep runs
    (None: leave as is); on a CPU-only machine, cores − workers keeps the stages from fighting.
    ``seed``: seeds the samplers (one derived seed per sweep, block and attempt).
    """

    build: BuildConfig = field(default_factory=default_build)
    sampler: str = "neal"
    sampler_params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER_PARAMS))
    polish: bool = False
    warm_start: bool = True
    sweeps: int = 1
    tol: float = 1e-4
    accept_tol: float = 1e-6
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
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise QuboNNError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not self.damping_growth > 1:
            raise QuboNNError(f"damping_growth must be > 1, got {self.damping_growth!r}")
        if not (self.tol >= 0 and self.accept_tol >= 0):
            raise QuboNNError(f"tol and accept_tol must be >= 0, got {self.tol!r} and {self.accept_tol!r}")
        if self.device_threads is not None and (not isinstance(self.device_threads, int) or self.device_threads < 1):
            raise QuboNNError(f"device_threads must be None or an integer >= 1, got {self.device_threads!r}")
        if not isinstance(self.sampler_params, dict):
            raise QuboNNError(f"sampler_params must be a dict, got {type(self.sampler_params).__name__}")
        self.executor_config().validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HybridConfig":
        d = dict(d)
        d["build"] = BuildConfig(**d.get("build", {}))
        return cls(**d)


@dataclass
class _Job:
    """One anneal of one block (attempt 0 = first try, r = r-th retry)."""

    block_id: int
    idx: torch.Tensor
    attempt: int
    blk: BlockQUBO | None = None
    build_s: float = 0.0
    built_after: int = 0      # accepted steps applied when the model was built
    seed: int = 0
    initial: np.ndarray | None = None
    result: Any = None        # (SampleSet, t_start, t_end)


def hybrid_sweeps(head: Head, train_feats: FeatureSet, cfg: HybridConfig, device: str | torch.device = "auto",
                  progress: bool = False, callback: Callable[[dict, Head], None] | None = None) -> tuple[Head, dict]:
    """Improve ``head`` by pipelined block-QUBO sweeps; return the new head and a JSON-able record.

    ``callback(block_record, head)`` is called after each block's final decision (accepted,
    kept after retries, or no predicted gain) with the head at that moment. The record:

    - ``blocks``: one entry per (sweep, block): ``accepted``, ``retries``, ``reason``,
      ``predicted_change`` / ``true_change`` (nats, of the final attempt; predicted = the
      undamped local model at build time, true = exact loss change at evaluation) and
      ``attempts`` (each with damping, energies, losses and ``build_s``/``solve_s``/``evaluate_s``);
    - ``sweeps``: per sweep losses and the time accounting of the module docstring;
    - top level: ``loss_start``, ``loss_end`` (exact, :func:`qubo_nn.core.head.evaluate`),
      ``acc_end``, ``stopped`` ("sweeps" or "tol"), and the time totals over all sweeps.
    """
    from qubo_nn import samplers

    cfg.validate()
    check_compatible(head, train_feats)
    dev = resolve_device(device)
    bcfg = replace(cfg.build, device=str(dev))
    sampler = samplers.get_sampler(cfg.sampler)
    takes_initial = "initial_states" in getattr(sampler, "parameters", {})
    t_call = time.perf_counter()
    old_threads = torch.get_num_threads()
    if cfg.device_threads is not None:
        torch.set_num_threads(cfg.device_threads)
    record: dict[str, Any] = {"config": cfg.to_dict(), "device": str(dev), "blocks": [], "sweeps": [],
                              "warm_start_used": bool(cfg.warm_start and takes_initial)}
    current = head
    try:
        with open_executor(cfg.executor_config()) as pool:
            for sweep in range(cfg.sweeps):
                current, srec = _one_sweep(current, train_feats, cfg, bcfg, dev, sweep, pool,
                                           takes_initial, record["blocks"], progress, callback)
                record["sweeps"].append(srec)
                if sweep == 0:
                    record["loss_start"] = srec["loss_before"]
                if srec["gain"] < cfg.tol:
                    record["stopped"] = "tol"
                    break
            else:
                record["stopped"] = "sweeps"
    finally:
        if cfg.device_threads is not None:
            torch.set_num_threads(old_threads)
    t0 = time.perf_counter()
    out = current.to(head.W.device, head.W.dtype)
    record["loss_end"], record["acc_end"] = evaluate(current, train_feats, l2=bcfg.l2)
    record["final_eval_s"] = time.perf_counter() - t0
    record["loss_end_incremental"] = record["sweeps"][-1]["loss_after"]
    record.update(_totals(record["sweeps"]))
    record["total_wall_s"] = time.perf_counter() - t_call
    return out, record


def _one_sweep(head, feats, cfg, bcfg, dev, sweep, pool, takes_initial, block_log, progress, callback):
    t_setup = time.perf_counter()
    stats = HeadStats(head, feats, bcfg.l2, dev, bcfg.dtype, bcfg.chunk, bcfg.subsample, bcfg.seed)
    blocks = plan_blocks(stats, bcfg)
    _check_disjoint(blocks)
    setup_s = time.perf_counter() - t_setup
    loss_before = stats.loss
    pending = collections.deque(_Job(k, idx, 0) for k, idx in enumerate(blocks))
    built: collections.deque[_Job] = collections.deque()
    inflight: collections.deque[tuple[_Job, Any]] = collections.deque()
    dev_iv: list[tuple[float, float]] = []
    anneal_iv: list[tuple[float, float]] = []
    n_accepted = [0]
    per_block: dict[int, dict] = {}
    bar = tqdm(total=len(blocks), desc=f"QUBO sweep {sweep + 1}", unit="block", leave=False, disable=not progress)

    def build(job: _Job) -> None:
        t0 = time.perf_counter()
        scale = cfg.damping_growth ** job.attempt
        rel, ab = bcfg.damping_rel, bcfg.damping_abs
        if job.attempt and rel == 0 and ab == 0:
            rel = 1e-3  # an undamped model gets a small relative damping to grow on retries
        jcfg = replace(bcfg, damping_rel=rel * scale, damping_abs=ab * scale)
        job.blk = make_block_qubo(stats, job.idx, jcfg, job.block_id)
        job.built_after = n_accepted[0]
        job.seed = _derive_seed(cfg.seed, sweep, job.block_id, job.attempt)
        if cfg.warm_start and takes_initial:
            job.initial = job.blk.enc.current_bits().cpu().numpy().astype(np.int8)[None, :]
        t1 = time.perf_counter()
        job.build_s = t1 - t0
        dev_iv.append((t0, t1))
        built.append(job)

    def submit() -> None:
        job = built.popleft()
        bqm = block_task.pack_bqm(job.blk.bqm) if pool.cfg.ships_tasks else job.blk.bqm
        task = {"bqm": bqm, "sampler": cfg.sampler, "params": dict(cfg.sampler_params), "seed": job.seed,
                "polish": cfg.polish, "initial": job.initial}
        inflight.append((job, pool.submit(block_task.sample_task, task)))

    def finish_block(job: _Job, entry: dict) -> None:
        block_log.append(entry)
        bar.update(1)
        if callback is not None:
            callback(entry, stats.head())

    def evaluate_job(job: _Job) -> None:
        t0 = time.perf_counter()
        sampleset, ts, te = job.result
        anneal_iv.append((ts, te))
        blk = job.blk
        x = _best_sample(sampleset, blk.enc.num_variables)
        cur = blk.enc.current_bits().cpu().numpy().astype(np.int8)
        e_best, e_current = (float(e) for e in blk.bqm.energies((np.stack([x, cur]), range(len(x)))))
        moved = int((blk.enc.levels(x) != blk.enc.levels(cur)).sum())
        delta = blk.enc.delta(x).to(blk.model.H)
        predicted = float(blk.model.predict(delta)) - blk.model.L0
        att = {"attempt": job.attempt, "damping": blk.damping, "num_variables": blk.enc.num_variables,
               "energy_best": e_best, "energy_current": e_current, "sample_predicted_change": predicted,
               "predicted_change": predicted,
               "stale_steps": n_accepted[0] - job.built_after, "seed": job.seed,
               "build_s": job.build_s, "hessian_s": blk.timings["hessian_s"], "qubo_s": blk.timings["qubo_s"],
               "solve_s": te - ts, "moved_weights": moved,
               "sampler_params": sampleset.info.get("params"), "sampler_wall_s": sampleset.info.get("wall_time_s")}
        loss_before_step = stats.loss
        if not e_best < e_current or att["moved_weights"] == 0:
            att.update(predicted_change=0.0, true_change=0.0, loss_before=loss_before_step, loss_after=loss_before_step,
                       accepted=False, reason="no predicted gain")
            retry = job.attempt < cfg.max_retries  # more damping = a finer grid: may find a gain
        else:
            new_values = blk.enc.decode(x)
            trial = stats.trial_loss(blk.enc.idx, new_values)
            accepted = trial - loss_before_step < -cfg.accept_tol
            loss_after = loss_before_step
            if accepted:
                old = stats.theta[blk.enc.idx.to(stats.device)].clone()
                stats.update(blk.enc.idx, new_values)
                loss_after = stats.loss
                if not loss_after - loss_before_step < -cfg.accept_tol:  # rounding disagreement: stay safe
                    stats.update(blk.enc.idx, old)
                    accepted, loss_after = False, stats.loss
            att.update(true_change=(loss_after if accepted else trial) - loss_before_step, trial_loss=trial,
                       loss_before=loss_before_step, loss_after=loss_after,
                       accepted=accepted, reason="loss fell" if accepted else "loss did not fall")
            if accepted:
                n_accepted[0] += 1
            retry = not accepted and job.attempt < cfg.max_retries
        t1 = time.perf_counter()
        att["evaluate_s"] = t1 - t0
        dev_iv.append((t0, t1))
        entry = per_block.setdefault(job.block_id, {"sweep": sweep, "block_id": job.block_id,
                                                    "size": int(job.idx.numel()), "attempts": []})
        entry["attempts"].append(att)
        if retry:
            pending.appendleft(_Job(job.block_id, job.idx, job.attempt + 1))
        else:
            entry.update(accepted=att["accepted"], retries=job.attempt, reason=att["reason"],
                         predicted_change=att["predicted_change"], true_change=att["true_change"])
            finish_block(job, entry)

    t_start = time.perf_counter()
    try:
        while True:
            # fill the workers (build on demand), then build one ahead, then wait for the oldest
            while len(inflight) < cfg.workers and (built or pending):
                if not built:
                    build(pending.popleft())
                submit()
            if not built and pending:
                build(pending.popleft())
            if not inflight:
                break
            job, fut = inflight.popleft()
            res = pool.result(fut)[1]
            job.result = (block_task.to_sampleset(res), res["t_start"], res["t_end"])
            if built and len(inflight) < cfg.workers:
                submit()
            evaluate_job(job)
    except BaseException:
        pool.cancel([fut for _, fut in inflight])
        raise
    finally:
        bar.close()
    t_end = time.perf_counter()
    srec = {"sweep": sweep, "blocks": len(blocks), "loss_before": loss_before, "loss_after": stats.loss,
            "gain": loss_before - stats.loss,
            "accepted": sum(1 for e in per_block.values() if e.get("accepted")),
            "retries": sum(e.get("retries", 0) for e in per_block.values()),
            "anneals": len(anneal_iv), "setup_s": setup_s}
    srec.update(interval_accounting(dev_iv, anneal_iv, t_start, t_end))
    return stats.head(), srec


def _best_sample(sampleset, n: int) -> np.ndarray:
    """The lowest-energy sample as a 0/1 vector over variables 0..n−1."""
    rec = sampleset.record
    i = int(np.argmin(rec.energy))
    x = np.zeros(n, dtype=np.int8)
    x[np.asarray(list(sampleset.variables), dtype=np.int64)] = rec.sample[i]
    return x


def _derive_seed(seed: int, sweep: int, block: int, attempt: int) -> int:
    return int(np.random.SeedSequence([int(seed), sweep, block, attempt]).generate_state(1)[0] >> 1)  # < 2**31


def _check_disjoint(blocks: list[torch.Tensor]) -> None:
    allidx = torch.cat([b.reshape(-1) for b in blocks])
    if torch.unique(allidx).numel() != allidx.numel():
        raise QuboNNError("the blocks of a sweep must be disjoint (pipelining applies steps out of build order)")


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
    """Time accounting of a pipelined section [t_start, t_end] (see the module docstring).

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


def _totals(sweeps: list[dict]) -> dict[str, float]:
    keys = ("wall_s", "device_s", "anneal_s", "anneal_cpu_s", "intersection_s", "gap_s", "hidden_s", "setup_s")
    tot = {k: float(sum(s[k] for s in sweeps)) for k in keys}
    shorter = min(tot["device_s"], tot["anneal_s"])
    tot["overlap"] = tot["hidden_s"] / shorter if shorter > 0 else 0.0
    tot["accepted"] = int(sum(s["accepted"] for s in sweeps))
    tot["blocks_visited"] = int(sum(s["blocks"] for s in sweeps))
    tot["retries"] = int(sum(s["retries"] for s in sweeps))
    return tot
