"""``qubo-nn pretrain``: train (or fine-tune) a whole torchvision classifier on a dataset; cached checkpoint."""
from __future__ import annotations

from typing import Any

import click

from qubo_nn.cli.common import device_option, emit, handle_errors, json_option, seed_option

# literal copies keep `qubo-nn --help` free of torch imports; tests check they match the library
_DATASETS = ("digits", "cifar100", "synthetic", "imagefolder")


@click.command()
@click.option("--dataset", type=click.Choice(_DATASETS), default="digits", show_default=True,
              help="Images to train on (digits: bundled with scikit-learn, no download).")
@click.option("--arch", default="resnet18", show_default=True, metavar="NAME",
              help="Any torchvision classification model (resnet18, mobilenet_v2, efficientnet_b0, vgg11_bn, ...).")
@click.option("--weights", default="none", show_default=True,
              help="Start: 'none' (seeded random init: train from scratch), 'imagenet' or a checkpoint path "
                   "(fine-tune; a new fc when the class count differs).")
@click.option("--image-size", type=click.IntRange(8, 1024), default=64, show_default=True,
              help="Images are resized to SIZE × SIZE pixels.")
@click.option("--epochs", type=click.IntRange(min=0), default=6, show_default=True, help="Passes over the train split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per SGD step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Peak learning rate of the one-cycle schedule (SGD, Nesterov momentum 0.9).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True, help="L2 weight decay.")
@click.option("--max-shift", type=click.IntRange(min=0), default=4, show_default=True,
              help="Augmentation: random shift of each image by up to this many pixels (0 = none).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images of each split.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="imagefolder: DIR with train/ and val/ (or test/) class folders; cifar100: folder containing "
                   "the extracted 'cifar-100-python' [default: $QUBO_NN_DATA or ~/.cache/qubo-nn/data].")
@click.option("--download", is_flag=True, help="Download CIFAR-100 when it is not under --data-root.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Checkpoint folder [default: $QUBO_NN_CHECKPOINTS or ~/.cache/qubo-nn/checkpoints].")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (datasets too large to hold in memory, e.g. cifar100).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads [default: torch's]; 1 is fastest on a CPU other jobs also load. On CPU the "
                   "count is part of the checkpoint's key (the result depends on it by float rounding).")
@device_option
@seed_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar (stderr).")
@json_option
@handle_errors
def pretrain_command(threads: int | None, progress: bool, as_json: bool, **opts: Any) -> None:
    """Train the whole network on the train split (or fine-tune with --weights) and store a
    checkpoint that --weights PATH accepts everywhere; a second call with the same settings is
    a cache hit.

    \b
    Example:
      qubo-nn pretrain --dataset digits --epochs 6
    """
    import torch

    from qubo_nn.train.pretrain import PretrainConfig, pretrain

    if threads is not None:
        torch.set_num_threads(threads)
    res = pretrain(PretrainConfig(**opts), progress=progress)
    info = res.info
    state = "cache hit" if res.hit else f"trained in {info['seconds']:.1f} s on {info['device']}"
    emit({"path": res.path, "hit": res.hit, "seconds": res.seconds, "test_acc": info["test_acc"],
          "test_loss": info["test_loss"], "record": res.path.with_suffix(".json")}, as_json,
         f"checkpoint: {res.path}\n  {state}\n  test accuracy {info['test_acc']:.2f} %, "
         f"test loss {info['test_loss']:.4f}\n  use it with --weights {res.path}")
