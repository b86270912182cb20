"""Issue 19: discrete (binary / ternary) heads trained by ptq, tuned STE and annealed QUBO steps.

    python experiments/discrete_heads.py --dataset digits --grid binary --out results/discrete/digits
    python experiments/discrete_heads.py --dataset synthetic-features --grid ternary --n-train 50000 \
        --out results/discrete/realistic

Resumes: finished (method, seed) records with the same config are loaded, not recomputed.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from qubo_nn.study.discrete import DiscreteExperimentConfig, format_table, run_discrete_experiment
from qubo_nn.workflows.train_discrete import DiscreteConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits", choices=("digits", "synthetic-features"))
    ap.add_argument("--grid", default="binary", choices=("binary", "ternary"))
    ap.add_argument("--methods", default="ptq,ste,qubo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512, help="synthetic-features: feature dimension")
    ap.add_argument("--num-classes", type=int, default=100, help="synthetic-features: classes")
    ap.add_argument("--subsample", type=int, default=None, help="Hessian blocks from this many training samples")
    ap.add_argument("--sweeps", type=int, default=8)
    ap.add_argument("--rows-per-block", type=int, default=1)
    ap.add_argument("--step-solver", default="qubo", choices=("qubo", "cd", "anneal"))
    ap.add_argument("--alt-rounds", type=int, default=10, help="ptq: code/scale alternation rounds per row")
    ap.add_argument("--patience", type=int, default=2, help="qubo: sweeps without a validation gain before stopping")
    ap.add_argument("--anneal-sweeps", type=int, default=500, help="qubo: Metropolis sweeps per anneal")
    ap.add_argument("--anneal-reads", type=int, default=4, help="qubo: chains per anneal")
    ap.add_argument("--anneal-hot", type=float, default=None,
                    help="qubo --step-solver anneal: starting temperature as a fraction of the start's excess energy (0.3)")
    ap.add_argument("--val-every", type=int, default=0,
                    help="qubo: validation checks every N blocks inside a sweep, the best checkpoint kept (0: off)")
    ap.add_argument("--priors", default="0", help="qubo: prior weights λ/mean diag H toward the fp32 head, tried")
    ap.add_argument("--z", default="0", help="qubo: noise-aware gates (standard errors), tried")
    ap.add_argument("--ste-starts", default="fp32,ptq")
    ap.add_argument("--ste-lrs", default="1e-4,3e-4,1e-3,3e-3")
    ap.add_argument("--ste-epochs", type=int, default=40)
    ap.add_argument("--heldout-reference", action="store_true",
                    help="fit each seed's fp32 reference head on its fit split only (the validation split held out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    floats = lambda text: tuple(float(x) for x in text.split(","))  # noqa: E731
    train = replace(DiscreteConfig(), subsample=a.subsample, sweeps=a.sweeps, rows_per_block=a.rows_per_block,
                    step_solver=a.step_solver, patience=a.patience, val_every=a.val_every, alt_rounds=a.alt_rounds,
                    sampler_params={"num_reads": a.anneal_reads, "num_sweeps": a.anneal_sweeps,
                                    **({} if a.anneal_hot is None else {"hot": a.anneal_hot})},
                    prior_grid=floats(a.priors), z_grid=floats(a.z), ste_starts=tuple(a.ste_starts.split(",")),
                    ste_lrs=floats(a.ste_lrs), ste_epochs=a.ste_epochs)
    cfg = DiscreteExperimentConfig(dataset=a.dataset, grid=a.grid, methods=tuple(a.methods.split(",")),
                                   seeds=tuple(int(s) for s in a.seeds.split(",")), n_train=a.n_train,
                                   n_test=a.n_test, dim=a.dim, num_classes=a.num_classes, train=train,
                                   heldout_reference=a.heldout_reference)
    print(format_table(run_discrete_experiment(cfg, a.out, progress=True)))


if __name__ == "__main__":
    main()
