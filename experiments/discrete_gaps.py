"""Issue 19 diagnosis: are the qubo steps limited by the annealer? For a few class rows of the ptq start
(where the qubo sweeps begin), the step problem of :func:`qubo_nn.workflows.discrete_steps.block_problem` is
solved by CD alone (from GPTQ act-order), by the recorded step solver (batched anneal from the current
codes, no polish) and by a long run of it, and by the neal + CD pipeline (``step_solver="qubo"``); the energies (predicted objective,
nats) and the TRUE training-loss change of each answer are written to ``gaps-<grid>.json`` / ``.md``.

    python experiments/discrete_gaps.py --dataset synthetic-features --n-train 50000 --dim 512 --grid binary \
        --subsample 8192 --rows 0,1,2,3,4 --out results/discrete/realistic
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.runtime import atomic_path, atomic_write_json, child_seed, to_jsonable
from qubo_nn.samplers.level_solvers import solve_levels, solve_levels_batch
from qubo_nn.study.discrete import DiscreteExperimentConfig, _fp32_reference, load_discrete_features
from qubo_nn.core.spins import codes_of_levels
from qubo_nn.workflows.discrete_steps import _flat_idx, block_problem
from qubo_nn.workflows.train_discrete import DiscreteConfig, DiscreteHead, ptq_start, split_fit_val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic-features", choices=("digits", "synthetic-features"))
    ap.add_argument("--grid", default="binary", choices=("binary", "ternary"))
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--subsample", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="0,1,2,3,4")
    ap.add_argument("--short", default="2,100", help="reads,sweeps of the recorded anneal")
    ap.add_argument("--long", default="8,2000", help="reads,sweeps of the long anneal")
    ap.add_argument("--alt-rounds", type=int, default=10, help="ptq (when no saved start): alternation rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="output file stem (default gaps-<grid>)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ecfg = DiscreteExperimentConfig(dataset=a.dataset, grid=a.grid, n_train=a.n_train, n_test=a.n_test, dim=a.dim,
                                    num_classes=a.num_classes)
    train, test, finfo = load_discrete_features(ecfg)
    out = Path(a.out)
    head, _, _ = _fp32_reference(train, test, finfo, out)
    cfg = replace(DiscreteConfig(), grid=a.grid, seed=a.seed, subsample=a.subsample, alt_rounds=a.alt_rounds)
    saved = out / "per-seed" / f"{a.grid}-start-seed{a.seed}.pt"
    if saved.exists():      # the experiment's own ptq start (same features, grid and seed)
        d = torch.load(saved, weights_only=False)
        dh, l2 = DiscreteHead(d["start"]["codes"], d["start"]["alpha"], d["start"]["b"], a.grid), d["l2"]
    else:
        start = ptq_start(head, train, cfg)
        dh, l2 = start.start, start.l2
    fit, _ = split_fit_val(train, cfg.val_fraction, cfg.seed)
    stats = HeadStats(dh.head(), fit, l2=l2, device="cpu", dtype="float64", subsample=cfg.subsample,
                      seed=child_seed(cfg.seed, 0))
    settings = {"cd": None}
    for name, txt in (("anneal (recorded)", a.short), ("anneal (long)", a.long)):
        r, sw = (int(x) for x in txt.split(","))
        settings[name] = {"num_reads": r, "num_sweeps": sw}
    settings["neal + CD pipeline"] = {"num_reads": 4, "num_sweeps": 500}
    rows_out = []
    for c in (int(x) for x in a.rows.split(",")):
        p, alpha, k_now = block_problem(stats, dh, [c], cfg)
        e_now = float(p.energy(k_now))
        row = {"row": c, "energy_current": e_now, "solvers": {}}
        for name, params in settings.items():
            t0 = time.perf_counter()
            if params is None:
                k, _ = solve_levels(p, "cd")
            elif name == "neal + CD pipeline":
                k, _ = solve_levels(p, "qubo", sampler=cfg.sampler, seed=child_seed(cfg.seed, c), params=params)
            else:       # the step solver of the recorded runs: batched anneal from the current codes, no polish
                (k, _), = solve_levels_batch([p], [child_seed(cfg.seed, c)], k_start=[k_now], polish=False, **params)
            wall = time.perf_counter() - t0
            new_w = torch.from_numpy(alpha * codes_of_levels(k, cfg.grid)).to(torch.float64)
            true = float(stats.trial_loss(_flat_idx([c], dh.codes.shape[1]), new_w)) - stats.loss
            row["solvers"][name] = {"predicted_change": float(p.energy(k)) - e_now, "true_change": true,
                                    "flips": int(np.sum(k != k_now)), "wall_time_s": wall}
        rows_out.append(row)
        print(row, flush=True)
    rec = {"dataset": a.dataset, "grid": a.grid, "seed": a.seed, "subsample": a.subsample, "settings": settings,
           "features": finfo, "rows": rows_out}
    stem = a.name or f"gaps-{a.grid}"
    atomic_write_json(out / f"{stem}.json", to_jsonable(rec))
    lines = [f"# step problems at the ptq start, {a.dataset} {a.grid} seed {a.seed} (nats, fit split; Hessian "
             f"blocks from {a.subsample or 'all'} samples)", "",
             "| row | solver | predicted change | true change | codes changed | wall (s) |", "|---|---|---|---|---|---|"]
    for r in rows_out:
        for name, v in r["solvers"].items():
            lines.append(f"| {r['row']} | {name} | {v['predicted_change']:.3e} | {v['true_change']:.3e} | "
                         f"{v['flips']} | {v['wall_time_s']:.2f} |")
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
