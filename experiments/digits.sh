#!/usr/bin/env bash
# The embedded default study: scikit-learn's digits (1,797 real images, 10 classes) upscaled to
# 64×64, ResNet-18 with random weights (no download), FC head trained by SGD vs the hybrid
# (SGD warm-up + QUBO sweep + SGD fine-tuning) vs the L-BFGS optimum, 3 seeds.
# Runs offline in a few minutes on a 2-core CPU. Rerun the same command to resume.
#
#   experiments/digits.sh                  # writes results/digits-default
#   OUT=runs/digits-mine experiments/digits.sh --seeds 5
set -euo pipefail
cd "$(dirname "$0")/.."
QUBO_NN=${QUBO_NN:-.venv/bin/qubo-nn}
OUT=${OUT:-results/digits-default}
exec "$QUBO_NN" experiment --dataset digits --arch resnet18 --weights none --image-size 64 --out "$OUT" "$@"
