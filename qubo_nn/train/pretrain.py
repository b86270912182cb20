"""Train (or fine-tune) a whole torchvision classifier on a dataset's training split; cached checkpoints.

:func:`pretrain` trains every parameter of a torchvision classifier (:func:`backbones.build_model`)
with mini-batch SGD (Nesterov momentum, weight decay, a one-cycle learning rate per step:
``torch.optim.lr_scheduler.OneCycleLR``) and cross-entropy on the ``train`` split, with a
light augmentation: each image is shifted by a random integer offset in
[−``max_shift``, ``max_shift``]² pixels (edges replicated). ``weights="none"`` trains from the
seeded random init; ``"imagenet"`` or a checkpoint path fine-tunes (a new seeded fc when the
class count differs).

The checkpoint ``<dataset>-<arch>-<S>px-<key>.pt`` holds ``{"state_dict": ...}`` (the whole
model, fc included), which ``--weights PATH`` accepts everywhere
(:func:`backbones.load_checkpoint`); its sidecar ``.json`` holds the config, the per-epoch
history, the test loss/accuracy, the wall time, the load average and the file's sha256. The
key hashes the settings that change the trained weights (dataset identity, arch, weights
identity, image size, recipe, seed, limit) and, on CPU, torch's thread count
(``torch.get_num_threads()``, set by ``--threads``): a CPU reduction sums in a thread-dependent
order, and over a few thousand SGD steps that float rounding moves the test accuracy by up to
about 0.6 percentage points on digits (99.72 % with 1 thread, 99.17 % with 2: 2 of 360 test
images), so runs with other thread counts are different cache entries, and the record holds
``torch_threads``. Another machine (other CPU, BLAS or GPU) should expect the same tolerance:
within about ±1 percentage point of the recorded accuracy, not bit-identical weights. The
device type and worker count are not in the key. A second call with the
same settings returns the stored checkpoint after checking its sha256.

The embedded default (digits, 64 × 64, ResNet-18 from scratch, 6 epochs of batch 32) is the
recipe measured in ``results/pretrain/`` (≥ 97 % test accuracy in minutes on 2 CPU cores).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_model, check_arch, weights_identity
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import (atomic_path, atomic_write_json, resolve_device, sha256_file, torch_generator,
    versions)

CHECKPOINT_FORMAT = 1
IN_MEMORY_BYTES = 1 << 30    # an imagefolder whose decoded train split fits in 1 GiB is decoded once, not per epoch


@dataclass
class PretrainConfig:
    """Dataset, backbone and recipe of :func:`pretrain` (see the module docstring)."""

    dataset: str = "digits"
    arch: str = "resnet18"
    weights: str = "none"
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 4
    seed: int = 0
    limit: int | None = None
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    num_workers: int = 0
    cache_dir: str | None = None

    def validate(self) -> None:
        if self.dataset not in data.DATASETS:
            raise QuboNNError(f"dataset must be one of {data.DATASETS}, got {self.dataset!r}")
        check_arch(self.arch)
        data.check_image_size(self.image_size)
        for name, low in (("epochs", 0), ("batch_size", 1), ("max_shift", 0), ("num_workers", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise QuboNNError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise QuboNNError(f"limit must be a positive integer or None, got {self.limit!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise QuboNNError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise QuboNNError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise QuboNNError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass
class PretrainResult:
    """The checkpoint file, whether it came from the cache, its sidecar's content, seconds."""

    path: Path
    hit: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def test_acc(self) -> float:
        return float(self.info["test_acc"])


def default_checkpoint_dir() -> Path:
    """``$QUBO_NN_CHECKPOINTS`` or ``~/.cache/qubo-nn/checkpoints``."""
    env = os.environ.get("QUBO_NN_CHECKPOINTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qubo-nn" / "checkpoints"


def checkpoint_settings(cfg: PretrainConfig) -> dict[str, Any]:
    """The settings that change the trained weights (hashed into the cache key)."""
    recipe = {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "max_shift",
                                           "seed", "limit", "image_size")}
    settings = {"format": CHECKPOINT_FORMAT, "data": data.dataset_identity(cfg.dataset, cfg.seed, cfg.data_root),
                "arch": cfg.arch, "weights": weights_identity(cfg.arch, cfg.weights, cfg.seed), "recipe": recipe}
    if resolve_device(cfg.device).type == "cpu":
        # CPU kernels sum in a thread-count dependent order; over an SGD run that moves the result
        # (digits ResNet-18: 99.72 % with 1 thread, 99.17 % with torch's default 2): keyed, not shared
        settings["cpu_threads"] = torch.get_num_threads()
    return settings


def checkpoint_path(cfg: PretrainConfig) -> Path:
    """Where :func:`pretrain` stores (and looks for) the checkpoint of ``cfg``."""
    key = hashlib.sha256(json.dumps(checkpoint_settings(cfg), sort_keys=True).encode()).hexdigest()
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_checkpoint_dir()
    return root / f"{cfg.dataset}-{cfg.arch}-{cfg.image_size}px-{key[:20]}.pt"


def pretrain(cfg: PretrainConfig, progress: bool = False) -> PretrainResult:
    """Train ``cfg.arch`` on ``cfg.dataset``'s train split (cached); see the module docstring."""
    t0 = time.perf_counter()
    cfg.validate()
    settings = checkpoint_settings(cfg)
    path = checkpoint_path(cfg)
    info = _cached(path, settings)
    if info is not None:
        return PretrainResult(path, True, time.perf_counter() - t0, info)
    info = _train(cfg, settings, progress)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": info.pop("_state_dict")}, tmp)
        info["sha256"] = sha256_file(tmp)
    atomic_write_json(path.with_suffix(".json"), info)
    return PretrainResult(path, False, time.perf_counter() - t0, info)


def load_split(cfg: PretrainConfig, split: str):
    """Dataset ``split`` of ``cfg`` (first ``cfg.limit`` images when set)."""
    ds = data.load_dataset(cfg.dataset, split, cfg.image_size, cfg.data_root, cfg.download, cfg.seed)
    if cfg.limit is not None and cfg.limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(cfg.limit))
    return ds


def materialize(ds, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N × 3 × S × S, labels N) of ``ds`` (all items, or ``indices``), read once."""
    idx = range(len(ds)) if indices is None else [int(i) for i in indices]
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.long)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) of ``model`` (eval mode) on ``images``/``labels``."""
    model.eval()
    device = torch.device(device)
    loss, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        logits = model(images[i:i + batch_size].to(device)).double().cpu()
        y = labels[i:i + batch_size]
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(labels), 1)
    return loss / n, 100.0 * correct / n


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N × C × H × W) shifted by its own random offset in [−m, m]² (edges replicated)."""
    if max_shift == 0:
        return x
    m = max_shift
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    offs = torch.randint(0, 2 * m + 1, (x.shape[0], 2), generator=gen).tolist()
    H, W = x.shape[-2:]
    return torch.stack([padded[i, :, dy:dy + H, dx:dx + W] for i, (dy, dx) in enumerate(offs)])


def _train(cfg: PretrainConfig, settings: dict[str, Any], progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    train_ds, test_ds = load_split(cfg, "train"), load_split(cfg, "test")
    C = data.num_classes(cfg.dataset, cfg.data_root)
    X_test, y_test = materialize(test_ds)
    base = getattr(train_ds, "dataset", train_ds)
    in_memory = isinstance(base, data.LowResImages) or (
        cfg.dataset == "imagefolder" and len(train_ds) * 3 * cfg.image_size ** 2 * 4 <= IN_MEMORY_BYTES)
    X_train, y_train = materialize(train_ds) if in_memory else (None, None)
    model = build_model(cfg.arch, cfg.weights, num_classes=C, seed=cfg.seed, progress=progress)
    model = model.to(device).to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    sched = None
    if cfg.epochs > 0:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                    pct_start=0.25)
    gen = torch_generator(cfg.seed)
    history = []
    with tqdm(total=cfg.epochs * steps_per_epoch, desc="pretrain", unit="step", disable=not progress) as bar:
        for epoch in range(cfg.epochs):
            model.train()
            total, seen = 0.0, 0
            for xb, yb in _batches(train_ds, X_train, y_train, cfg, gen, epoch):
                xb = random_shift(xb, cfg.max_shift, gen).to(device, memory_format=torch.channels_last)
                yb = yb.to(device)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(yb)
                seen += len(yb)
                bar.update(1)
            test_loss, test_acc = evaluate_model(model, X_test, y_test, device=device)
            history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "test_loss": test_loss,
                            "test_acc": test_acc, "wall_time_s": time.perf_counter() - t0})
            bar.set_postfix(test_acc=f"{test_acc:.1f}")
    test_loss, test_acc = evaluate_model(model, X_test, y_test, device=device)
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    return {"format": CHECKPOINT_FORMAT, "key": checkpoint_path(cfg).stem.rsplit("-", 1)[-1], "settings": settings,
            "config": asdict(cfg), "num_classes": C, "history": history, "test_loss": test_loss,
            "test_acc": test_acc, "n_train": len(train_ds), "n_test": len(test_ds), "device": str(device),
            "torch_threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
            "loadavg": list(os.getloadavg()), "versions": versions(),
            "_state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}}


def _batches(ds, X, y, cfg: PretrainConfig, gen: torch.Generator, epoch: int):
    """Shuffled mini-batches (images, labels): from memory for small datasets, else a DataLoader."""
    if X is not None:
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            yield X[idx], y[idx]
        return
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                                         generator=torch_generator(cfg.seed + epoch))
    yield from loader


def _cached(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of a valid cached checkpoint (same settings, sha256 matches), else None."""
    side = path.with_suffix(".json")
    if not (path.is_file() and side.is_file()):
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if info.get("settings") != json.loads(json.dumps(settings)) or sha256_file(path) != info.get("sha256"):
        return None
    return info


@dataclass
class EvalConfig:
    """Which checkpoint to evaluate on which test split (:func:`evaluate_checkpoint`)."""

    arch: str = "resnet18"
    weights: str = "none"
    dataset: str = "digits"
    image_size: int = 64
    data_root: str | None = None
    download: bool = False
    limit: int | None = None
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.dataset not in data.DATASETS:
            raise QuboNNError(f"dataset must be one of {data.DATASETS}, got {self.dataset!r}")
        check_arch(self.arch)
        data.check_image_size(self.image_size)
        for name in ("batch_size",) + (("limit",) if self.limit is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise QuboNNError(f"{name} must be a positive integer, got {v!r}")


def evaluate_checkpoint(cfg: EvalConfig) -> dict[str, Any]:
    """Test loss (mean cross-entropy) and accuracy (%) of ``cfg.weights`` (a ``.pt`` state dict or a
    packed ``.safetensors`` network; 'imagenet'/'none' too) as ``cfg.arch`` on ``cfg.dataset``'s test
    split. The head keeps the checkpoint's class count; it must equal the dataset's. Also returns the
    file's bytes and sha256 and, for a packed file, its stored bits per weight."""
    from qubo_nn.nets.backbones import head_name, weights_kind

    t0 = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.device)
    C = data.num_classes(cfg.dataset, cfg.data_root)
    model = build_model(cfg.arch, cfg.weights, num_classes=C, seed=cfg.seed)
    hname = head_name(model)
    out: dict[str, Any] = {"arch": cfg.arch, "dataset": cfg.dataset, "image_size": cfg.image_size,
                           "num_classes": C, "weights": str(cfg.weights)}
    if weights_kind(cfg.weights) == "path":
        from qubo_nn.nets.backbones import load_checkpoint

        p = Path(cfg.weights).expanduser()
        state = load_checkpoint(p)
        if f"{hname}.weight" in state and int(state[f"{hname}.weight"].shape[0]) != C:
            raise QuboNNError(f"expected a checkpoint with {C} classes for {cfg.dataset}, got "
                              f"{int(state[f'{hname}.weight'].shape[0])} in {hname}.weight")
        if f"{hname}.weight" not in state:
            raise QuboNNError(f"expected a whole-model checkpoint (with {hname}.weight) to evaluate, got a "
                              "backbone-only one")
        out.update(bytes=p.stat().st_size, sha256=sha256_file(p), weights_identity=f"sha256:{sha256_file(p)}")
        if p.suffix == ".safetensors":
            from qubo_nn.io.packed import read_header

            h = read_header(p)
            out["packed"] = {"float_bytes": h["float_bytes"], "quantized_weights": h["quantized_weights"],
                             "code_bits_per_weight": 8.0 * h["code_bytes"] / max(h["quantized_weights"], 1),
                             "stored_bits_per_weight": 8.0 * (h["code_bytes"] + h["scale_bytes"])
                             / max(h["quantized_weights"], 1),
                             "bits": sorted({L["bits"] for L in h["layers"].values()})}
    pcfg = PretrainConfig(dataset=cfg.dataset, arch=cfg.arch, image_size=cfg.image_size, data_root=cfg.data_root,
                          download=cfg.download, limit=cfg.limit, seed=cfg.seed)
    X, y = materialize(load_split(pcfg, "test"))
    loss, acc = evaluate_model(model.to(device), X, y, batch_size=cfg.batch_size, device=device)
    out.update(test_loss=loss, test_acc=acc, n_test=int(len(y)), device=str(device),
               seconds=time.perf_counter() - t0)
    return out
