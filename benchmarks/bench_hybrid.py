"""Hybrid (SGD warm-up + pipelined QUBO sweep + SGD fine-tuning) vs SGD: wall time and overlap.

On the synthetic CIFAR-100-shaped feature set (``qubo_nn.data.featureset.synthetic_features``,
default 50,000 × 512, 100 classes): the SGD baseline runs E epochs; the hybrid runs W epochs,
the QUBO sweep(s) of :func:`qubo_nn.workflows.head_optimize.hybrid_sweeps`, then E − W epochs (same schedule,
same shuffles, same init). Times are optimizer times: the SGD steps of each epoch (train_sgd's
``wall_time_s``, per-epoch monitoring evaluations excluded) plus, for the hybrid, the whole
QUBO phase (``total_wall_s``: its setup pass, the pipelined section and its final exact
evaluation). The overlap is the QUBO phase's ``overlap`` (see qubo_nn.workflows.head_optimize: the fraction of
the shorter of device time and anneal time hidden behind the other).

Targets: hybrid wall time within 10× of SGD's; overlap >= 80%.

Defaults are those of experiments/cifar100.sh for this shape: 2 bits per weight (1,026
variables per row block), window 0.5, neal 1 read × 100 sweeps, one anneal worker, Hessian
blocks on a 10,000-sample subsample (``--subsample 0`` for all samples).

Usage:
  python benchmarks/bench_hybrid.py                 # full size (50,000 × 512 × 100)
  python benchmarks/bench_hybrid.py --reduced       # 10,000 × 512 × 20: a quick check
  python benchmarks/bench_hybrid.py --n 20000 --classes 50 --bits 2 --num-sweeps 100 --workers 1
Writes results/bench_hybrid.json and .txt (atomically; ``--tag`` appends a suffix to the names).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from qubo_nn.data.featureset import synthetic_features
from qubo_nn.core.head import Head, evaluate
from qubo_nn.workflows.head_optimize import HybridConfig, hybrid_sweeps
from qubo_nn.workflows.build import BuildConfig
from qubo_nn.runtime import atomic_write_json, atomic_write_text, machine_info, resolve_device, versions
from qubo_nn.train.sgd import SGDConfig, train_sgd

TARGET_RATIO = 10.0
TARGET_OVERLAP = 0.80
REDUCED = {"n": 10_000, "n_test": 2_000, "dim": 512, "classes": 20}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reduced", action="store_true", help=f"small preset: {REDUCED}")
    p.add_argument("--n", type=int, default=50_000, help="training samples")
    p.add_argument("--n-test", type=int, default=10_000, help="test samples")
    p.add_argument("--dim", type=int, default=512, help="feature dimension D")
    p.add_argument("--classes", type=int, default=100, help="classes C (= row blocks)")
    p.add_argument("--epochs", type=int, default=10, help="total SGD epochs E of both methods")
    p.add_argument("--warmup", type=int, default=2, help="hybrid: SGD epochs before the QUBO phase")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--bits", type=int, default=2, help="bits per weight")
    p.add_argument("--window", type=float, default=0.5, help="grid window in diagonal Newton steps")
    p.add_argument("--sweeps", type=int, default=1, help="QUBO sweeps")
    p.add_argument("--sampler", default="neal")
    p.add_argument("--num-reads", type=int, default=1)
    p.add_argument("--num-sweeps", type=int, default=100, help="annealing sweeps per read (neal)")
    p.add_argument("--polish", action="store_true", help="polish samples with steepest descent")
    p.add_argument("--workers", type=int, default=1, help="anneals in flight")
    p.add_argument("--device-threads", type=int, default=None,
                   help="torch threads during the QUBO phase [default: CPU cores − workers on CPU, unchanged on GPU]")
    p.add_argument("--subsample", type=int, default=10_000,
                   help="Hessian blocks on this many training samples (0: all); gradients, losses and the "
                        "acceptance test always use all of them")
    p.add_argument("--max-retries", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for everything else (SGD epochs); 1: tiny mini-batch kernels gain nothing "
                        "from more and stall on a busy machine")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results")
    p.add_argument("--tag", default="", help="suffix of the output names (bench_hybrid<tag>.json)")
    args = p.parse_args(argv)
    if args.reduced:
        for k, v in REDUCED.items():
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    machine = machine_info(dev)
    t0 = time.perf_counter()
    train, test = synthetic_features(n=args.n, dim=args.dim, num_classes=args.classes, seed=args.seed,
                                     n_test=args.n_test)
    gen_s = time.perf_counter() - t0
    init = Head.init_like_linear(args.classes, args.dim, args.seed)
    sgd = SGDConfig(epochs=args.epochs, lr=args.lr, schedule=args.schedule, seed=args.seed)
    E, W = args.epochs, args.warmup

    # (a) SGD baseline
    head_a, hist_a = train_sgd(init, train, test, sgd, device=str(dev))
    sgd_s = sum(r["wall_time_s"] for r in hist_a)

    # (b) hybrid
    threads = args.device_threads
    if threads is None and dev.type == "cpu":
        threads = max(1, (os.cpu_count() or 1) - args.workers)
    subsample = min(args.subsample, args.n) if args.subsample else None
    hcfg = HybridConfig(build=BuildConfig(bits=args.bits, window=args.window, subsample=subsample), sampler=args.sampler,
                        sampler_params={"num_reads": args.num_reads, "num_sweeps": args.num_sweeps},
                        polish=args.polish, sweeps=args.sweeps, max_retries=args.max_retries,
                        workers=args.workers, device_threads=threads, seed=args.seed)
    warm = SGDConfig(epochs=W, lr=args.lr, schedule=args.schedule, seed=args.seed)
    head_b, hist_w = train_sgd(init, train, test, warm, device=str(dev), total_epochs=E) if W else (init, [])
    from qubo_nn.cli.experiment_cmd import torch_threads   # the script, not the library, sets threads

    head_b, rec = hybrid_sweeps(head_b, train, hcfg, dev, thread_scope=lambda: torch_threads(threads))
    fine = SGDConfig(epochs=E - W, lr=args.lr, schedule=args.schedule, seed=args.seed)
    head_b, hist_f = train_sgd(head_b, train, test, fine, device=str(dev), start_epoch=W, total_epochs=E) \
        if E > W else (head_b, [])
    warm_s, fine_s = sum(r["wall_time_s"] for r in hist_w), sum(r["wall_time_s"] for r in hist_f)
    hybrid_s = warm_s + rec["total_wall_s"] + fine_s
    final_a = {"train_loss": hist_a[-1]["train_loss"], "test_acc": hist_a[-1]["test_acc"]}
    last_b = hist_f[-1] if hist_f else None
    final_b = ({"train_loss": last_b["train_loss"], "test_acc": last_b["test_acc"]} if last_b else
               {"train_loss": rec["loss_end"], "test_acc": evaluate(head_b, test)[1]})
    attempts = [a for b in rec["blocks"] for a in b["attempts"]]
    per_block = {k: sum(a[k] for a in attempts) / len(attempts)
                 for k in ("hessian_s", "qubo_s", "build_s", "solve_s", "evaluate_s")}
    if hasattr(os, "getloadavg"):
        machine["load_average_1m_end"] = os.getloadavg()[0]
    ratio = hybrid_s / sgd_s
    result = {
        "args": vars(args), "machine": machine, "versions": versions(), "features_generation_s": gen_s,
        "sgd": {"wall_s": sgd_s, "epochs": E, "per_epoch_s": sgd_s / E, **final_a},
        "hybrid": {"wall_s": hybrid_s, "warmup_s": warm_s, "qubo_phase_s": rec["total_wall_s"], "finetune_s": fine_s,
                   **final_b, "qubo_loss_before": rec["loss_start"], "qubo_loss_after": rec["loss_end"],
                   "accepted": rec["accepted"], "blocks_visited": rec["blocks_visited"], "retries": rec["retries"],
                   "variables_per_block": attempts[0]["num_variables"], "device_threads": threads},
        "qubo_timing": {k: rec[k] for k in ("wall_s", "device_s", "anneal_s", "anneal_cpu_s", "intersection_s",
                                            "gap_s", "hidden_s", "overlap", "setup_s", "final_eval_s", "total_wall_s")},
        "per_attempt_mean_s": per_block,
        "ratio_hybrid_over_sgd": ratio, "overlap": rec["overlap"],
        "targets": {"ratio_max": TARGET_RATIO, "overlap_min": TARGET_OVERLAP,
                    "ratio_met": ratio <= TARGET_RATIO, "overlap_met": rec["overlap"] >= TARGET_OVERLAP},
    }
    text = report(result)
    print(text)
    out = Path(args.out)
    atomic_write_json(out / f"bench_hybrid{args.tag}.json", result)
    atomic_write_text(out / f"bench_hybrid{args.tag}.txt", text + "\n")
    return result


def report(r: dict) -> str:
    a, h, q, m = r["args"], r["hybrid"], r["qubo_timing"], r["machine"]
    pb = r["per_attempt_mean_s"]
    lines = [
        f"bench_hybrid: synthetic features {a['n']} × {a['dim']}, {a['classes']} classes; E={a['epochs']} epochs "
        f"(hybrid: {a['warmup']} warm-up + QUBO + {a['epochs'] - a['warmup']} fine-tune)",
        f"machine: {m['cpu']} ({m['cpu_count']} CPUs), device {m['device']}, load avg "
        f"{m.get('load_average_1m_start', float('nan')):.1f} -> {m.get('load_average_1m_end', float('nan')):.1f}",
        f"QUBO: {a['bits']} bits/weight ({h['variables_per_block']} variables/block), window {a['window']}, sampler {a['sampler']} "
        f"num_reads={a['num_reads']} num_sweeps={a['num_sweeps']}{' +polish' if a['polish'] else ''}, "
        f"workers={a['workers']}, sweeps={a['sweeps']}, subsample={a['subsample']}; torch threads {a['threads']} "
        f"(QUBO phase: {r['hybrid']['device_threads']})",
        "",
        f"SGD baseline   : {r['sgd']['wall_s']:8.2f} s  ({r['sgd']['per_epoch_s']:.2f} s/epoch)  "
        f"train loss {r['sgd']['train_loss']:.4f}  test acc {100 * r['sgd']['test_acc']:.2f} %",
        f"hybrid         : {h['wall_s']:8.2f} s  (warm-up {h['warmup_s']:.2f} + QUBO {h['qubo_phase_s']:.2f} + "
        f"fine-tune {h['finetune_s']:.2f})  train loss {h['train_loss']:.4f}  test acc {100 * h['test_acc']:.2f} %",
        f"QUBO phase     : loss {h['qubo_loss_before']:.4f} -> {h['qubo_loss_after']:.4f}, accepted "
        f"{h['accepted']}/{h['blocks_visited']} blocks, {h['retries']} retries",
        f"pipelined      : wall {q['wall_s']:.2f} s = device {q['device_s']:.2f} + anneal {q['anneal_s']:.2f} "
        f"− overlap {q['intersection_s']:.2f} + gap {q['gap_s']:.2f}  (setup {q['setup_s']:.2f}, "
        f"final eval {q['final_eval_s']:.2f})",
        f"per attempt    : hessian {pb['hessian_s']:.3f} + qubo {pb['qubo_s']:.3f} s build, solve {pb['solve_s']:.3f} s, "
        f"evaluate {pb['evaluate_s']:.3f} s",
        "",
        f"hybrid / SGD wall time = {r['ratio_hybrid_over_sgd']:.2f}x  (target <= {TARGET_RATIO:.0f}x: "
        f"{'met' if r['targets']['ratio_met'] else 'MISSED'})",
        f"overlap = hidden {q['hidden_s']:.2f} s / min(device, anneal) {min(q['device_s'], q['anneal_s']):.2f} s "
        f"= {100 * r['overlap']:.1f} %  (target >= {100 * TARGET_OVERLAP:.0f} %: "
        f"{'met' if r['targets']['overlap_met'] else 'MISSED'})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
