"""Your own model and images, end to end: MobileNetV2 vs ResNet-18 on a digits ImageFolder.

1. The scikit-learn digits (the built-in ``digits`` split) are written as PNG files into
   ``<data>/train/<class>/*.png`` and ``<data>/val/<class>/*.png``: an ImageFolder like a user's.
2. Each arch is trained from scratch on it (``qubo-nn pretrain --dataset imagefolder``).
3. Each trained network is quantized layer by layer (``quantize_network``: BN folded, first and
   last layer at 8 bits) at W4 and W2 with GPTQ (act-order) and CD (GPTQ, then coordinate descent
   on each (row, group) problem within ``--solve-budget`` seconds), then BN-corrected; the result
   is exported as packed codes + row scales (``.safetensors``), reloaded and evaluated again.

Records test accuracy and loss (fp32, quantized before and after the BN correction, reloaded),
model bytes (fp32 state dict vs the packed file), stored bits per weight, and wall times, in
``<out>/own_model.json`` and ``<out>/own_model.txt`` (atomically).

Usage (see own_model.sh):
  python experiments/own_model.py [--image-size 32] [--epochs 6] [--calib 128] [--solve-budget 30] \
      [--archs mobilenet_v2 resnet18] [--bits 4 2] [--methods gptq cd] [--out results/own-model]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qubo_nn.data import datasets as data
from qubo_nn.io.packed import float_bytes, load_packed
from qubo_nn.nets.backbones import build_model
from qubo_nn.runtime import atomic_write_json, atomic_write_text, versions
from qubo_nn.train.pretrain import PretrainConfig, evaluate_model, load_split, materialize, pretrain
from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, calibration_indices, quantize_network


def write_digits_imagefolder(root: Path) -> Path:
    """The digits split as 8-bit grey PNGs: root/train/<class>/<i>.png, root/val/<class>/<i>.png."""
    from PIL import Image

    for split, folder in (("train", "train"), ("test", "val")):
        images, labels = data._digits(split)
        for i, (img, label) in enumerate(zip(images, labels)):
            f = root / folder / f"digit{int(label)}" / f"{i:04d}.png"
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(img[0].numpy() * 255).astype(np.uint8)).save(f)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="where to write the digits ImageFolder [a temp dir]")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--solve-budget", type=float, default=30.0)
    ap.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet18"])
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 2])
    ap.add_argument("--methods", nargs="+", default=["gptq", "cd"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/own-model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root = write_digits_imagefolder(Path(args.data) if args.data else Path(tempfile.mkdtemp()) / "digits")
    record = {"settings": vars(args) | {"data": "digits as PNGs (train/ and val/ ImageFolder)"}, "archs": {},
              "versions": versions(), "torch_threads": torch.get_num_threads()}
    for arch in args.archs:
        pcfg = PretrainConfig(dataset="imagefolder", data_root=str(root), arch=arch, image_size=args.image_size,
                              epochs=args.epochs, device="cpu")
        res = pretrain(pcfg, progress=True)
        C = data.num_classes("imagefolder", str(root))
        model = build_model(arch, str(res.path), num_classes=C)
        train_ds, test_ds = load_split(pcfg, "train"), load_split(pcfg, "test")
        X_test, y_test = materialize(test_ds)
        fp_bytes = float_bytes(model.state_dict())
        entry = {"pretrain": {"test_acc": res.info["test_acc"], "test_loss": res.info["test_loss"],
                              "seconds": res.info["seconds"], "epochs": args.epochs, "cache_hit": res.hit},
                 "fp32_bytes": fp_bytes, "params": int(sum(p.numel() for p in model.parameters())), "runs": []}
        record["archs"][arch] = entry
        for bits in args.bits:
            for method in args.methods:
                cfg = NetworkQuantizeConfig(bits=bits, method=method, calib=args.calib, solve_budget_s=args.solve_budget,
                                            bn_correct=True, device="cpu", seed=0)
                calib, _ = materialize(train_ds, calibration_indices(len(train_ds), cfg.calib, 0))
                t0 = time.perf_counter()
                q = quantize_network(model, calib, X_test, y_test, cfg, progress=False)
                wall = time.perf_counter() - t0
                with tempfile.TemporaryDirectory() as tmp:
                    exp = q.save(Path(tmp) / f"{arch}-w{bits}-{method}.safetensors")
                    state, _ = load_packed(exp["path"])
                reloaded = build_model(arch, "none", num_classes=C)
                reloaded.load_state_dict(state)
                r_loss, r_acc = evaluate_model(reloaded, X_test, y_test)
                rec = q.record
                run = {"bits": bits, "method": method, "fp32": rec["reference"],
                       "before_bn_correct": rec["bn_correct"]["before"], "quantized": rec["quantized"],
                       "reloaded": {"test_loss": r_loss, "test_acc": r_acc},
                       "bytes_fp32": fp_bytes, "bytes_packed": exp["bytes"],
                       "compression": fp_bytes / exp["bytes"], "code_bits_per_weight": exp["code_bits_per_weight"],
                       "stored_bits_per_weight": exp["stored_bits_per_weight"],
                       "max_abs_weight_diff_packed": exp["max_abs_weight_diff"], "wall_s": wall,
                       "coverage": [L.get("coverage") for L in rec["layers"] if "coverage" in L]}
                entry["runs"].append(run)
                print(f"{arch} W{bits} {method}: {run['quantized']['test_acc']:.2f} % (before BN correction "
                      f"{run['before_bn_correct']['test_acc']:.2f} %, fp32 {run['fp32']['test_acc']:.2f} %), "
                      f"{fp_bytes:,} -> {exp['bytes']:,} bytes, {wall:.0f} s", flush=True)
                atomic_write_json(out / "own_model.json", record)
    lines = [f"digits ImageFolder, {args.image_size} px, {args.epochs} epochs from scratch; calib {args.calib}; "
             f"first/last layer 8 bit; BN correction on; CD budget {args.solve_budget:g} s; {args.threads} thread(s)",
             f"{'arch':<14}{'run':<10}{'fp32 %':>8}{'q before BN %':>15}{'q %':>8}{'reload %':>9}{'bytes fp32':>12}"
             f"{'bytes packed':>14}{'bits/w':>8}{'wall s':>8}"]
    for arch, e in record["archs"].items():
        lines.append(f"{arch:<14}{'pretrain':<10}{e['pretrain']['test_acc']:>8.2f}{'':>15}{'':>8}{'':>9}"
                     f"{e['fp32_bytes']:>12,}{'':>14}{'32':>8}{e['pretrain']['seconds']:>8.0f}")
        for r in e["runs"]:
            lines.append(f"{arch:<14}{r['method'] + ' W' + str(r['bits']):<10}{r['fp32']['test_acc']:>8.2f}"
                         f"{r['before_bn_correct']['test_acc']:>15.2f}{r['quantized']['test_acc']:>8.2f}"
                         f"{r['reloaded']['test_acc']:>9.2f}{r['bytes_fp32']:>12,}{r['bytes_packed']:>14,}"
                         f"{r['stored_bits_per_weight']:>8.2f}{r['wall_s']:>8.0f}")
    atomic_write_text(out / "own_model.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
