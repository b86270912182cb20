"""``qubo-nn eval``: test loss and accuracy of any checkpoint (``.pt`` or packed ``.safetensors``)."""
from __future__ import annotations

from typing import Any

import click

from qubo_nn.cli.common import device_option, emit, handle_errors, json_option, seed_option

_DATASETS = ("digits", "cifar100", "synthetic", "imagefolder")   # datasets.DATASETS (checked by a test)


@click.command()
@click.option("--arch", default="resnet18", show_default=True, metavar="NAME",
              help="Any torchvision classification model (resnet18, mobilenet_v2, efficientnet_b0, ...).")
@click.option("--weights", required=True,
              help="Checkpoint: a .pt state dict (pretrain, quantize network, your own) or a packed "
                   ".safetensors of 'quantize network --out FILE.safetensors'; 'imagenet'/'none' too.")
@click.option("--dataset", type=click.Choice(_DATASETS), default="digits", show_default=True,
              help="Whose test split to evaluate on.")
@click.option("--image-size", type=click.IntRange(8, 1024), default=64, show_default=True,
              help="Images are resized to SIZE × SIZE pixels (as for training).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="imagefolder: DIR with train/ and val/ (or test/) class folders; cifar100: the data folder.")
@click.option("--download", is_flag=True, help="Download CIFAR-100 when it is not under --data-root.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Images per pass.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads [default: torch's].")
@device_option
@seed_option
@json_option
@handle_errors
def eval_command(threads: int | None, as_json: bool, **opts: Any) -> None:
    """Report test loss and accuracy of a checkpoint (weights are read with weights_only: no code runs).

    \b
    Example:
      qubo-nn eval --arch mobilenet_v2 --weights net-w4.safetensors --dataset imagefolder --data-root imgs/
    """
    import torch

    from qubo_nn.train.pretrain import EvalConfig, evaluate_checkpoint

    if threads is not None:
        torch.set_num_threads(threads)
    res = evaluate_checkpoint(EvalConfig(**opts))
    text = (f"{res['arch']} on {res['dataset']} test ({res['n_test']} images, {res['image_size']} px): "
            f"loss {res['test_loss']:.4f}, accuracy {res['test_acc']:.2f} %")
    if "bytes" in res:
        text += f"\n  file {res['bytes']:,} bytes, sha256 {res['sha256'][:16]}…"
    if "packed" in res:
        pk = res["packed"]
        text += (f"\n  packed: {pk['stored_bits_per_weight']:.2f} bits per quantized weight stored "
                 f"(codes {pk['code_bits_per_weight']:.2f}), fp32 state {pk['float_bytes']:,} bytes")
    emit(res, as_json, text)
