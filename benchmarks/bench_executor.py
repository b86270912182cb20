"""Threads vs Ray for the block solves of a whole head, and a simulated multi-node Ray cluster.

Head (as bench_samplers' full-head throughput): CIFAR-100-shaped synthetic features
(``realistic_features``: 50,000 × 512, 100 classes), a seeded fresh fc head after
``--warmup-epochs`` of SGD (lr 0.05); every class row (512 weights + bias) at 4 bits = 100
blocks of 2,052 variables, written by ``build_to_dir`` (not timed). Then, one after another in
the same run, ``solve(manifest)`` with neal's defaults (seed 0) on:

1. ``threads``: ``--workers`` threads (timed);
2. ``ray``: a local Ray instance of ``--workers`` CPUs. Its start (``ray.init``) and shutdown are
   timed apart from the solve, so the record holds both ratios to threads' time: the steady
   state (solve only, the instance already running) and the whole ``qubo-nn solve --executor
   ray`` cost (start + solve + shutdown). Target: Ray ≤ 1.15 × threads.
3. ``cluster``: ``ray.cluster_utils.Cluster`` with ``--nodes`` nodes of 1 CPU each on this machine
   (separate raylets and object stores; what a multi-machine cluster looks like to the
   driver, without the network); the driver joins it with ``ray_address`` like
   ``qubo-nn solve --ray-address``. The node id of every block's task is recorded.

Every run's samples are compared block by block with the threads run (must be identical: same
per-block seeds). The load average is recorded before each phase (the 2-core machine is shared).

Usage: python benchmarks/bench_executor.py [--n 50000] [--classes 100] [--bits 4] [--workers 2]
       [--nodes 4] [--warmup-epochs 1] [--seed 0] [--out results] [--quick]
``--quick``: n = 5,000, 10 classes, 2 bits, 2 nodes (a check of the script).
Writes results/bench_executor.json and .txt (atomically).
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from qubo_nn.data.featureset import realistic_features
from qubo_nn.workflows.build import build_to_dir
from qubo_nn.core.head import Head, evaluate
from qubo_nn.workflows.build import BuildConfig
from qubo_nn.runtime import atomic_write_json, atomic_write_text, machine_info, versions
from qubo_nn.workflows.solve import SolveConfig, read_samples, solve

TARGET_RATIO = 1.15
LINES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    LINES.append(text)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def current_head(n: int, classes: int, warmup_epochs: int, seed: int):
    train, _ = realistic_features(n_train=n, n_test=1000, dim=512, num_classes=classes, seed=seed)
    head = Head.init_like_linear(classes, 512, seed=seed)
    if warmup_epochs:
        from qubo_nn.train.sgd import SGDConfig, train_sgd

        head, _ = train_sgd(head, train, None, SGDConfig(epochs=warmup_epochs, lr=0.05, seed=seed), device="cpu")
    return head, train


def timed_solve(man: Path, out: Path, cfg: SolveConfig) -> dict:
    la = load()
    t0 = time.perf_counter()
    s = solve(man, out, cfg)
    wall = time.perf_counter() - t0
    rows = s["blocks"]
    return {"solve_s": wall, "load_before": la, "blocks": len(rows),
            "per_block_s": wall / len(rows),
            "read_s_mean": float(np.mean([r["timings"]["read_s"] for r in rows])),
            "unpack_s_mean": float(np.mean([r["timings"]["unpack_s"] for r in rows])),
            "sample_s_mean": float(np.mean([r["timings"]["sample_s"] for r in rows])),
            "predicted_loss": s["totals"].get("predicted_loss"),
            "nodes": [r["node"] for r in rows], "summary": s}


def same_samples(a: Path, b: Path, sa: dict, sb: dict) -> bool:
    for ra, rb in zip(sa["blocks"], sb["blocks"]):
        x, y = read_samples(a / ra["samples"]), read_samples(b / rb["samples"])
        if not (np.array_equal(x.record.sample, y.record.sample) and np.array_equal(x.record.energy, y.record.energy)):
            return False
    return len(sa["blocks"]) == len(sb["blocks"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.classes, args.bits, args.nodes = 5000, 10, 2, 2
    import ray
    from ray.cluster_utils import Cluster

    machine = machine_info("cpu")
    say(f"bench_executor{' --quick (reduced size)' if args.quick else ''}: {machine['cpu'] or 'cpu'}, "
        f"{machine['cpu_count']} CPUs, load average {load():.1f}; ray {ray.__version__}")
    t_all = time.perf_counter()
    head, train = current_head(args.n, args.classes, args.warmup_epochs, args.seed)
    loss0, acc0 = evaluate(head, train)
    say(f"realistic features {args.n} × 512, {args.classes} classes; head after {args.warmup_epochs} SGD epoch(s): "
        f"loss {loss0:.4f}, accuracy {acc0:.3f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    result: dict = {"config": vars(args), "versions": {**versions(), "ray": ray.__version__}, "machine": machine,
                    "head": {"loss": loss0, "accuracy": acc0}}
    try:
        t0 = time.perf_counter()
        man = build_to_dir(head, train, BuildConfig(bits=args.bits, device="cpu", seed=args.seed), tmp / "build")
        build_s = time.perf_counter() - t0
        say(f"build (not timed against the target): {args.classes} blocks at {args.bits} bits in {build_s:.0f} s")
        result["build_s"] = build_s
        cfg = SolveConfig(workers=args.workers, seed=args.seed)

        # 1. threads
        thr = timed_solve(man, tmp / "threads", cfg)
        say(f"\nthreads ({args.workers}): {thr['solve_s']:.1f} s = {thr['per_block_s']:.2f} s per block "
            f"(driver read {thr['read_s_mean']:.2f} s, sampling {thr['sample_s_mean']:.2f} s per block; "
            f"load {thr['load_before']:.1f})")

        # 2. Ray, local instance
        la = load()
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        start_s = time.perf_counter() - t0
        try:
            rl = timed_solve(man, tmp / "ray", cfg.__class__(**{**cfg.__dict__, "executor": "ray"}))
        finally:
            t0 = time.perf_counter()
            ray.shutdown()
            stop_s = time.perf_counter() - t0
        rl.update(start_s=start_s, shutdown_s=stop_s, load_before_start=la,
                  identical_to_threads=same_samples(tmp / "threads", tmp / "ray", thr["summary"], rl["summary"]))
        steady = rl["solve_s"] / thr["solve_s"]
        whole = (start_s + rl["solve_s"] + stop_s) / thr["solve_s"]
        say(f"ray (local, {args.workers} CPUs): start {start_s:.1f} s, solve {rl['solve_s']:.1f} s, shutdown "
            f"{stop_s:.1f} s (driver read+pack {rl['read_s_mean']:.2f} s, worker unpack {rl['unpack_s_mean']:.2f} s, "
            f"sampling {rl['sample_s_mean']:.2f} s per block; load {rl['load_before']:.1f})")
        say(f"  samples identical to threads: {rl['identical_to_threads']}")
        say(f"  overhead ratio ray/threads: {steady:.3f} (instance running), {whole:.3f} (with start and shutdown); "
            f"target <= {TARGET_RATIO}: {'met' if steady <= TARGET_RATIO else 'NOT met'} (steady), "
            f"{'met' if whole <= TARGET_RATIO else 'NOT met'} (whole)")

        # 3. simulated multi-node cluster
        la = load()
        t0 = time.perf_counter()
        node_args = {"num_cpus": 1, "object_store_memory": 256 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args=node_args)
        for _ in range(args.nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        cluster_start_s = time.perf_counter() - t0
        try:
            cl = timed_solve(man, tmp / "cluster",
                             cfg.__class__(**{**cfg.__dict__, "executor": "ray", "ray_address": cluster.address}))
        finally:
            cluster.shutdown()
        per_node = collections.Counter(cl["nodes"])
        cl.update(start_s=cluster_start_s, load_before_start=la, nodes_used=len(per_node),
                  tasks_per_node={k[:12]: v for k, v in sorted(per_node.items())},
                  identical_to_threads=same_samples(tmp / "threads", tmp / "cluster", thr["summary"], cl["summary"]))
        say(f"\ncluster: {args.nodes} nodes × 1 CPU on this machine (start {cluster_start_s:.1f} s): solve "
            f"{cl['solve_s']:.1f} s; tasks per node {dict(cl['tasks_per_node'])}; samples identical to threads: "
            f"{cl['identical_to_threads']}")
        for name, run in (("threads", thr), ("ray", rl), ("cluster", cl)):
            run.pop("summary")
            result[name] = run
        result["ratio_ray_over_threads"] = {"steady": steady, "with_start_and_shutdown": whole,
                                            "target": TARGET_RATIO, "steady_met": steady <= TARGET_RATIO,
                                            "whole_met": whole <= TARGET_RATIO}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["machine"]["load_average_1m_end"] = load()
    result["wall_time_s"] = time.perf_counter() - t_all
    out = Path(args.out)
    atomic_write_json(out / "bench_executor.json", result)
    atomic_write_text(out / "bench_executor.txt", "\n".join(LINES) + "\n")
    say(f"\nwrote {out / 'bench_executor'}.json/.txt ({result['wall_time_s']:.0f} s; load average at the end "
        f"{result['machine']['load_average_1m_end']:.1f})")


if __name__ == "__main__":
    main()
