"""Every sampler inside the hybrid: one pipelined sweep of row blocks with neal, gptq, cd and pipeline.

Since the one step policy (issue 18) the hybrid hands each block's integer form to samplers that
take one, so the level samplers (GPTQ act-order, coordinate descent, the annealed pipeline) run
inside it like neal. This benchmark runs one sweep of each from the same head (one SGD epoch from
``Head.init_like_linear``) on a realistic, not separable, feature set
(:func:`qubo_nn.data.featureset.realistic_features`) and reports, per sampler and seed, the exact
training loss after the sweep L, the gain L0 − L, the accepted blocks and the wall time.

Reference: the best known loss E* of the same convex objective, the L-BFGS optimum of the head
(:func:`qubo_nn.train.sgd.convex_optimum`, float64; its convergence flag and max |gradient| are
recorded). Every method is scored by the excess (L − E*)/E* and by the fraction of the gap closed
(L0 − L)/(L0 − E*). No certified lower bound is computed here (without strong convexity L-BFGS's
loss is an upper bound on the optimum; its gradient says how close it is).

Usage: python benchmarks/bench_hybrid_samplers.py [--n 3000 --dim 32 --classes 10 --bits 3 --seeds 3]
Writes results/bench_hybrid_samplers.json and .txt (atomically).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qubo_nn.core.head import Head, evaluate
from qubo_nn.data.featureset import realistic_features
from qubo_nn.runtime import atomic_write_json, atomic_write_text, machine_info, versions
from qubo_nn.train.sgd import SGDConfig, convex_optimum, train_sgd
from qubo_nn.workflows.build import BuildConfig
from qubo_nn.workflows.head_optimize import HybridConfig, hybrid_sweeps

SAMPLERS = {"neal": {"num_reads": 1, "num_sweeps": 100}, "gptq": {}, "cd": {},
            "pipeline": {"num_reads": 1, "num_sweeps": 100}}
DETERMINISTIC = ("gptq", "cd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="training samples")
    p.add_argument("--dim", type=int, default=32, help="feature dimension D")
    p.add_argument("--classes", type=int, default=10, help="classes C (= row blocks of D + 1 weights)")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--window", type=float, default=0.5, help="grid window in diagonal Newton steps")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the random samplers (neal, pipeline)")
    p.add_argument("--out", default="results")
    return p.parse_args(argv)


def run_one(head, train, sampler: str, seed: int, args) -> dict:
    cfg = HybridConfig(build=BuildConfig(bits=args.bits, window=args.window), sampler=sampler,
                       sampler_params=dict(SAMPLERS[sampler]), sweeps=1, seed=seed)
    _, rec = hybrid_sweeps(head, train, cfg, "cpu")
    return {"sampler": sampler, "seed": seed, "loss_start": rec["loss_start"], "loss_end": rec["loss_end"],
            "accepted": rec["accepted"], "blocks": rec["blocks_visited"], "retries": rec["retries"],
            "wall_s": rec["total_wall_s"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)   # a script sets process-wide state; the library never does
    train, _ = realistic_features(n_train=args.n, n_test=10, dim=args.dim, num_classes=args.classes, seed=0)
    head, _ = train_sgd(Head.init_like_linear(args.classes, args.dim, 0), train, None,
                        SGDConfig(epochs=1, lr=0.01, seed=0), device="cpu")
    L0 = evaluate(head, train)[0]
    t0 = time.perf_counter()
    _, opt = convex_optimum(train, device="cpu", max_iter=500)
    ref_s = time.perf_counter() - t0
    E = opt["loss"]
    runs = [run_one(head, train, s, seed, args) for s in SAMPLERS
            for seed in (range(1) if s in DETERMINISTIC else range(args.seeds))]
    for r in runs:
        r["excess"] = (r["loss_end"] - E) / E
        r["gap_closed"] = (L0 - r["loss_end"]) / (L0 - E)
    res = {"config": vars(args), "L0": L0, "best_known": {"loss": E, "converged": opt["converged"],
                                                           "grad_max": opt["grad_max"], "wall_s": ref_s},
           "start_excess": (L0 - E) / E, "runs": runs, "machine": machine_info("cpu"), "versions": versions()}
    out = Path(args.out)
    atomic_write_json(out / "bench_hybrid_samplers.json", res)
    text = format_text(res)
    atomic_write_text(out / "bench_hybrid_samplers.txt", text + "\n")
    print(text)
    return res


def format_text(res: dict) -> str:
    c, b = res["config"], res["best_known"]
    lines = [f"one hybrid sweep per sampler: N={c['n']}, D={c['dim']}, C={c['classes']} row blocks, "
             f"{c['bits']} bits, window {c['window']}",
             f"start loss L0 {res['L0']:.5f} (excess {100 * res['start_excess']:.2f} %); best known E* "
             f"{b['loss']:.5f} (L-BFGS, converged {b['converged']}, max |grad| {b['grad_max']:.1e})",
             f"{'sampler':<9} {'seeds':>5} {'loss after':>11} {'excess %':>9} {'gap closed %':>13} "
             f"{'accepted':>9} {'wall s':>7}"]
    for s in SAMPLERS:
        rs = [r for r in res["runs"] if r["sampler"] == s]
        mean = lambda k: sum(r[k] for r in rs) / len(rs)   # noqa: E731
        lines.append(f"{s:<9} {len(rs):>5} {mean('loss_end'):>11.5f} {100 * mean('excess'):>9.3f} "
                     f"{100 * mean('gap_closed'):>13.2f} {mean('accepted'):>5.1f}/{rs[0]['blocks']:<3} "
                     f"{mean('wall_s'):>7.2f}")
    best = min(SAMPLERS, key=lambda s: min(r["loss_end"] for r in res["runs"] if r["sampler"] == s))
    lines.append(f"lowest loss after one sweep: {best}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
