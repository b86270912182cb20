#!/usr/bin/env bash
# Your own model and images: MobileNetV2 vs ResNet-18 trained on a digits ImageFolder (PNG files),
# then network-quantized at W4 and W2 (GPTQ, CD; BN correction), exported packed (.safetensors),
# reloaded and evaluated. Writes results/own-model/own_model.{json,txt}.
# The recorded settings (2 shared CPU cores, 1 thread): 32 px, 5 epochs, 64 calibration images,
# CD budget 10 s per network. Run from the repository root.
set -euo pipefail
PY=${PYTHON:-python}
"$PY" experiments/own_model.py --image-size 32 --epochs 5 --calib 64 --solve-budget 10 \
    --archs mobilenet_v2 resnet18 --bits 4 2 --methods gptq cd --threads 1 --out results/own-model "$@"
# MobileNetV2 is undertrained after 5 epochs at 32 px (58 %); 15 epochs reach 98 %: quantized again (GPTQ)
"$PY" experiments/own_model.py --image-size 32 --epochs 15 --calib 64 --archs mobilenet_v2 --bits 4 2 \
    --methods gptq --threads 1 --out results/own-model/mobilenet_v2-15-epochs "$@"

# The same through the CLI, for one arch (the commands of the README section 'Your own model and data'):
#   qubo-nn pretrain --dataset imagefolder --data-root DIR --arch mobilenet_v2 --image-size 32 --epochs 5 --threads 1
#   qubo-nn quantize --scope network --dataset imagefolder --data-root DIR --arch mobilenet_v2 --image-size 32 \
#       --checkpoint CKPT.pt --bits 4 --method gptq --bn-correct --out mnv2-w4.safetensors
#   qubo-nn eval --arch mobilenet_v2 --weights mnv2-w4.safetensors --dataset imagefolder --data-root DIR --image-size 32
