#!/usr/bin/env bash
# The comparison on the realistic CIFAR-100-shaped synthetic features (issue 9's "honest ground"):
# 50,000 train / 10,000 test × 512 features, 100 classes, not separable (convex optimum ≈ 63 %
# test accuracy, 1.07 nats training loss). SGD vs the hybrid (2 SGD epochs, one QUBO sweep over
# the 100 class rows at 2 bits, Hessian blocks on a 10,000-sample subsample, 8 SGD epochs) vs SGD
# given the hybrid's time vs the L-BFGS optimum, seeds 0, 1, 2. Rerun the same command to resume.
#
#   experiments/synthetic.sh               # writes results/synthetic-experiment
set -euo pipefail
cd "$(dirname "$0")/.."
QUBO_NN=${QUBO_NN:-.venv/bin/qubo-nn}
OUT=${OUT:-results/synthetic-experiment}
exec "$QUBO_NN" experiment --dataset synthetic-features --bits 2 --subsample 10000 --workers 2 \
    --no-progress --out "$OUT" "$@"
