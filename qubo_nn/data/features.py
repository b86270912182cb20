"""Backbone features, extracted once per (dataset, split, backbone, image size) and cached.

:func:`get_features` runs the frozen backbone (eval mode, no grad, batched) over both
splits and stores the features in ``cache_dir`` (default ``$QUBO_NN_CACHE`` or
``~/.cache/qubo-nn/features``) as two files per entry:

- ``<name>.pt``: ``{"train_X", "train_y", "test_X", "test_y"}`` (float32 N × D, int64 N);
- ``<name>.json``: the settings, metadata, shapes and the sha256 of the ``.pt`` file.

The entry name ends in a key: a hash of the settings that change the features (dataset
identity, architecture, weights identity (checkpoint sha256, published file, or seed),
image size, limit); an ``imagefolder`` is identified by a digest of its file list and file
sizes (:func:`datasets.dataset_identity`), never by its path. Device and batch size are not in the key (in eval mode they change
features only by float rounding); package versions are stored, not keyed. A ``.pt`` whose
sha256 does not match its sidecar (truncated, altered) is never used: it is rebuilt.

``dataset="synthetic-features"`` returns :func:`~qubo_nn.data.featureset.realistic_features`
(CIFAR-100 shaped, not separable: ``n_train`` × D, 100 classes) and ``"synthetic-separable"``
:func:`~qubo_nn.data.featureset.separable_features` (the old separable set); no backbone, no cache:
both are generated deterministically from ``seed`` (a few seconds).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_backbone, check_arch, feature_dim, weights_identity
from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import SYNTHETIC_GENERATORS, FeatureSet, synthetic_by_name
from qubo_nn.runtime import atomic_path, atomic_write_json, resolve_device, sha256_file, versions

FEATURE_DATASETS = data.DATASETS + tuple(SYNTHETIC_GENERATORS)
CACHE_FORMAT = 1
SYNTHETIC_FEATURE_CLASSES = 100


@dataclass
class FeatureConfig:
    """Which features: dataset, backbone, image size; where and how to compute them.

    ``seed`` seeds the random backbone (``weights="none"``) and the synthetic datasets.
    ``limit`` keeps the first ``limit`` images of each split (tests, quick looks).
    ``n_train``/``n_test`` size the synthetic feature sets only.
    """

    dataset: str = "digits"
    arch: str = "resnet18"
    weights: str = "none"
    image_size: int = 64
    data_root: str | None = None
    download: bool = False
    device: str = "auto"
    batch_size: int = 128
    seed: int = 0
    cache_dir: str | None = None
    limit: int | None = None
    n_train: int = 50_000
    n_test: int = 10_000

    def validate(self) -> None:
        if self.dataset not in FEATURE_DATASETS:
            raise QuboNNError(f"dataset must be one of {FEATURE_DATASETS}, got {self.dataset!r}")
        check_arch(self.arch)
        data.check_image_size(self.image_size)
        for name in ("batch_size", "n_train", "n_test"):
            if _not_positive_int(getattr(self, name)):
                raise QuboNNError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.limit is not None and _not_positive_int(self.limit):
            raise QuboNNError(f"limit must be a positive integer or None, got {self.limit!r}")


@dataclass
class FeatureResult:
    """Train/test features, the cache file (None when nothing is cached), hit or not, seconds.

    ``rebuilt`` says why an existing cache entry was not used (None when there was none).
    """

    train: FeatureSet
    test: FeatureSet
    path: Path | None
    hit: bool
    seconds: float
    rebuilt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """``$QUBO_NN_CACHE`` or ``~/.cache/qubo-nn/features``."""
    env = os.environ.get("QUBO_NN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qubo-nn" / "features"


def cache_settings(cfg: FeatureConfig) -> dict[str, Any]:
    """The settings that change the features (hashed into the cache key)."""
    return {
        "format": CACHE_FORMAT,
        "data": data.dataset_identity(cfg.dataset, cfg.seed, cfg.data_root),
        "arch": cfg.arch,
        "weights": weights_identity(cfg.arch, cfg.weights, cfg.seed),
        "image_size": cfg.image_size,
        "limit": cfg.limit,
    }


def cache_path(cfg: FeatureConfig) -> Path:
    """Path of the ``.pt`` file of ``cfg``'s cache entry (its sidecar: same name, ``.json``)."""
    key = _key(cache_settings(cfg))
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return root / f"{cfg.dataset}-{cfg.arch}-{cfg.image_size}px-{key[:20]}.pt"


def get_features(cfg: FeatureConfig, progress: bool = False) -> FeatureResult:
    """Train and test features of ``cfg``: from the cache when a valid entry exists, else extracted.

    Extraction runs the backbone once per split on ``cfg.device`` (auto = CUDA when present)
    in batches of ``cfg.batch_size``; features are stored float32 (N × D), labels int64.
    """
    t0 = time.perf_counter()
    cfg.validate()
    if cfg.dataset in SYNTHETIC_GENERATORS:
        train, test = synthetic_by_name(cfg.dataset, cfg.n_train, cfg.n_test, feature_dim(cfg.arch),
                                        SYNTHETIC_FEATURE_CLASSES, cfg.seed)
        return FeatureResult(train, test, None, False, time.perf_counter() - t0, meta=dict(train.meta))
    settings = cache_settings(cfg)
    path = cache_path(cfg)
    check_cache_dir(path.parent)   # before the backbone runs, not after
    loaded, reason = _load(path, _key(settings))
    if loaded is not None:
        train, test, meta = loaded
        return FeatureResult(train, test, path, True, time.perf_counter() - t0, meta=meta)
    train, test, meta = _extract(cfg, settings, progress)
    _store(path, train, test, meta)
    return FeatureResult(train, test, path, False, time.perf_counter() - t0, rebuilt=reason, meta=meta)


def check_cache_dir(root: str | os.PathLike) -> None:
    """Refuse a cache folder that cannot be one: it, or a folder above it, is a regular file, or the
    nearest existing folder is not writable (``$QUBO_NN_CACHE``/``--cache-dir`` set wrongly)."""
    root = Path(root).expanduser().absolute()
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise QuboNNError(f"feature cache folder {str(root)!r}: {str(probe)!r} is a file, expected a folder "
                          f"(check $QUBO_NN_CACHE or --cache-dir)")
    if probe != root and not os.access(probe, os.W_OK):
        raise QuboNNError(f"feature cache folder {str(root)!r} cannot be created: {str(probe)!r} is not "
                          f"writable (check $QUBO_NN_CACHE or --cache-dir)")


def _not_positive_int(v: Any) -> bool:
    return not isinstance(v, int) or isinstance(v, bool) or v < 1


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _extract(cfg: FeatureConfig, settings: dict[str, Any], progress: bool):
    device = resolve_device(cfg.device)
    splits = {s: data.load_dataset(cfg.dataset, s, cfg.image_size, cfg.data_root, cfg.download, cfg.seed)
              for s in data.SPLITS}
    model, _ = build_backbone(cfg.arch, cfg.weights, seed=cfg.seed, progress=progress)
    model = model.to(device).eval()
    C = data.num_classes(cfg.dataset, cfg.data_root)
    meta = {"dataset": cfg.dataset, "arch": cfg.arch, "weights": str(cfg.weights),
            "weights_identity": settings["weights"], "image_size": cfg.image_size, "num_classes": C,
            "seed": cfg.seed, "limit": cfg.limit, "key": _key(settings), "device": str(device),
            "versions": versions()}
    out = []
    for split, ds in splits.items():
        if cfg.limit is not None and cfg.limit < len(ds):
            ds = torch.utils.data.Subset(ds, range(cfg.limit))
        X, y = _run_backbone(model, ds, cfg.batch_size, device, progress, f"features {split}")
        out.append(FeatureSet(X, y, C, {**meta, "split": split}))
    return out[0], out[1], meta


@torch.no_grad()
def _run_backbone(model, ds, batch_size, device, progress, desc):
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0,
                                         pin_memory=device.type == "cuda")
    Xs, ys = [], []
    with tqdm(total=len(ds), desc=desc, unit="img", disable=not progress) as bar:
        for images, labels in loader:
            Xs.append(model(images.to(device, non_blocking=True)).float().cpu())
            ys.append(labels.long())
            bar.update(len(labels))
    return torch.cat(Xs), torch.cat(ys)


def _store(path: Path, train: FeatureSet, test: FeatureSet, meta: dict[str, Any]) -> None:
    payload = {"train_X": train.X.contiguous(), "train_y": train.y, "test_X": test.X.contiguous(), "test_y": test.y}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        digest, size = sha256_file(tmp), tmp.stat().st_size
    shapes = {k: list(v.shape) for k, v in payload.items()}
    atomic_write_json(path.with_suffix(".json"), {"format": CACHE_FORMAT, "key": meta["key"], "sha256": digest,
                                                  "bytes": size, "shapes": shapes, "meta": meta})


def _load(path: Path, key: str):
    """((train, test, meta), None) for a valid entry, else (None, why it is not usable or None)."""
    side = path.with_suffix(".json")
    if not path.exists() and not side.exists():
        return None, None
    try:
        info = json.loads(side.read_text())
        if info.get("format") != CACHE_FORMAT or info.get("key") != key:
            return None, "cache sidecar is from another format or key"
        if path.stat().st_size != info["bytes"]:
            return None, f"cache file has {path.stat().st_size} bytes, sidecar says {info['bytes']} (truncated?)"
        if sha256_file(path) != info["sha256"]:
            return None, "cache file's sha256 does not match its sidecar (altered or corrupted)"
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if {k: list(v.shape) for k, v in payload.items()} != info["shapes"]:
            return None, "cache file's tensor shapes do not match its sidecar"
        meta = info["meta"]
        C = meta["num_classes"]
        train = FeatureSet(payload["train_X"], payload["train_y"], C, {**meta, "split": "train"})
        test = FeatureSet(payload["test_X"], payload["test_y"], C, {**meta, "split": "test"})
    except FileNotFoundError as exc:
        return None, f"cache entry incomplete ({exc.filename} missing)"
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, OSError, EOFError,
            pickle.UnpicklingError, QuboNNError) as exc:
        return None, f"cache entry unreadable ({type(exc).__name__}: {exc})"
    return (train, test, meta), None


def config_dict(cfg: FeatureConfig) -> dict[str, Any]:
    """``cfg`` as a JSON-able dict (recorded next to results that use these features)."""
    return asdict(cfg)
