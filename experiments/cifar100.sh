#!/usr/bin/env bash
# The real study: CIFAR-100 at 64×64 through an ImageNet-pretrained ResNet-18 (frozen), FC head
# (100 × 512) trained by SGD vs the hybrid (SGD warm-up + QUBO sweeps + SGD fine-tuning) vs the
# L-BFGS optimum of the head, 3 seeds. For a machine with the data and weights:
#
#   - CIFAR-100: the extracted 'cifar-100-python' folder under $QUBO_NN_DATA
#     (default ~/.cache/qubo-nn/data), or pass --download when online;
#   - ResNet-18 ImageNet weights: torchvision's file in the torch hub cache
#     (~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth), downloaded when online.
#
# Features are extracted once (GPU when present; ~50,000 + 10,000 images) and cached under
# $QUBO_NN_CACHE; every optimizer then runs on the cached tensors. The QUBO phase anneals 100
# row blocks (513 weights × BITS bits each) on CPU threads while the GPU builds the next block.
# Rerun the same command to resume an interrupted run.
#
#   experiments/cifar100.sh                       # writes results/cifar100-imagenet
#   WORKERS=4 BITS=4 experiments/cifar100.sh --epochs 30 --warmup-epochs 5
#   OUT=results/cifar100-4bit BITS=4 SUBSAMPLE=50000 experiments/cifar100.sh
set -euo pipefail
cd "$(dirname "$0")/.."
QUBO_NN=${QUBO_NN:-.venv/bin/qubo-nn}
OUT=${OUT:-results/cifar100-imagenet}
BITS=${BITS:-2}
SUBSAMPLE=${SUBSAMPLE:-10000}   # Hessian blocks on 10,000 of the 50,000 images (losses use all)
WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))}
exec "$QUBO_NN" experiment --dataset cifar100 --arch resnet18 --weights imagenet --image-size 64 \
    --epochs 10 --warmup-epochs 2 --seeds 3 --bits "$BITS" --subsample "$SUBSAMPLE" --workers "$WORKERS" --out "$OUT" "$@"
