"""Feature cache: miss, hit, corruption detected and rebuilt, one entry per setting."""
from __future__ import annotations

import json
import re
import time

import pytest
import torch

from qubo_nn.data import features
from qubo_nn.nets.backbones import build_backbone
from qubo_nn.data.datasets import load_dataset
from qubo_nn.errors import QuboNNError
from qubo_nn.data.features import FeatureConfig, get_features

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT = 24


def tiny(cache_dir, **kw) -> FeatureConfig:
    base = dict(dataset="synthetic", image_size=32, limit=LIMIT, batch_size=16, device="cpu", cache_dir=str(cache_dir))
    return FeatureConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One extraction shared by the cache tests (the backbone is the slow part)."""
    cache = tmp_path_factory.mktemp("cache")
    return cache, get_features(tiny(cache))


def test_miss_extracts_the_backbone_features(first):
    cache, res = first
    assert not res.hit and res.rebuilt is None
    assert res.path.parent == cache and res.path.exists() and res.path.with_suffix(".json").exists()
    assert res.train.X.shape == (LIMIT, 512) and res.test.X.shape == (LIMIT, 512)
    assert res.train.X.dtype == torch.float32 and res.train.y.dtype == torch.int64
    assert res.train.num_classes == 10
    # reference: the same backbone applied to the stacked images directly (no loader, no cache)
    ds = load_dataset("synthetic", "train", image_size=32, seed=0)
    images = torch.stack([ds[i][0] for i in range(LIMIT)])
    model, _ = build_backbone("resnet18", "none", seed=0)
    with torch.no_grad():
        torch.testing.assert_close(res.train.X, model(images), atol=1e-5, rtol=1e-5)
    assert res.train.y.tolist() == [ds[i][1] for i in range(LIMIT)]
    meta = res.train.meta
    assert meta["split"] == "train" and meta["weights_identity"] == "none:seed=0" and meta["image_size"] == 32
    assert "torch" in meta["versions"] and "torchvision" in meta["versions"]


def test_hit_is_fast_and_returns_the_same_tensors(first):
    cache, res = first
    t0 = time.perf_counter()
    again = get_features(tiny(cache))
    assert time.perf_counter() - t0 < 1.0 and again.hit and again.path == res.path
    assert torch.equal(again.train.X, res.train.X) and torch.equal(again.test.y, res.test.y)
    assert again.test.meta["split"] == "test"


def _copy_entry(first, tmp_path):
    cache, res = first
    for suffix in (".pt", ".json"):
        src = res.path.with_suffix(suffix)
        (tmp_path / src.name).write_bytes(src.read_bytes())
    return tiny(tmp_path), tmp_path / res.path.name, res


@pytest.mark.parametrize("damage, reason", [
    ("truncate", r"cache file has \d+ bytes, sidecar says \d+ \(truncated\?\)"),
    ("flip", r"cache file's sha256 does not match its sidecar \(altered or corrupted\)"),
    ("sidecar", r"cache entry incomplete \(.*\.json missing\)"),
    ("garbled-sidecar", r"cache entry unreadable \(JSONDecodeError"),
])
def test_damaged_entry_is_detected_and_rebuilt(first, tmp_path, damage, reason):
    cfg, path, res = _copy_entry(first, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flip":                      # same size, one byte inside the feature data altered
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        path.write_bytes(bytes(blob))
    elif damage == "sidecar":
        path.with_suffix(".json").unlink()
    else:
        path.with_suffix(".json").write_text("{not json")
    rebuilt = get_features(cfg)
    assert not rebuilt.hit
    assert rebuilt.rebuilt is not None and re.search(reason, rebuilt.rebuilt)
    torch.testing.assert_close(rebuilt.train.X, res.train.X, atol=1e-6, rtol=0)
    assert get_features(cfg).hit               # the rebuilt entry is valid again


def test_different_settings_get_different_entries(first, tmp_path):
    cache, res = first
    base = features.cache_path(tiny(cache))
    assert base == res.path
    variants = [dict(image_size=40), dict(seed=1), dict(limit=LIMIT + 1), dict(arch="resnet34"),
                dict(dataset="digits")]
    paths = {features.cache_path(tiny(cache, **kw)) for kw in variants}
    assert len(paths) == len(variants) and base not in paths
    # settings that do not change the features share the entry
    assert features.cache_path(tiny(cache, batch_size=3, device="auto")) == base
    # checkpoints are identified by content (sha256), not by path
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    model, _ = build_backbone("resnet18", "none", seed=0)
    torch.save(model.state_dict(), a)
    b.write_bytes(a.read_bytes())
    assert features.cache_path(tiny(cache, weights=str(a))) == features.cache_path(tiny(cache, weights=str(b)))
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}, b)
    assert features.cache_path(tiny(cache, weights=str(a))) != features.cache_path(tiny(cache, weights=str(b)))


def test_second_setting_is_cached_beside_the_first(cache_dir):
    one = get_features(tiny(cache_dir, limit=8, image_size=16))
    two = get_features(tiny(cache_dir, limit=8, image_size=16, seed=1))
    assert one.path != two.path and not two.hit
    assert not torch.equal(one.train.X, two.train.X)          # other backbone init, other images
    side = json.loads(two.path.with_suffix(".json").read_text())
    assert side["shapes"]["train_X"] == [8, 512] and side["meta"]["seed"] == 1
    assert features.default_cache_dir() == cache_dir and one.path.parent == cache_dir   # $QUBO_NN_CACHE


def test_synthetic_features_need_no_backbone():
    res = get_features(FeatureConfig(dataset="synthetic-features", n_train=300, n_test=50, seed=2))
    assert res.path is None and not res.hit
    assert res.train.X.shape == (300, 512) and res.test.X.shape == (50, 512) and res.train.num_classes == 100
    again = get_features(FeatureConfig(dataset="synthetic-features", n_train=300, n_test=50, seed=2))
    assert torch.equal(res.train.X, again.train.X)
    assert FeatureConfig().n_train == 50_000 and FeatureConfig().n_test == 10_000


@pytest.mark.parametrize("kw, message", [
    (dict(dataset="imagenet"), r"dataset must be one of \('digits', 'cifar100', 'synthetic', 'imagefolder', "
                               r"'synthetic-features', 'synthetic-separable'\), got 'imagenet'"),
    (dict(arch="vit"), r"arch must be a torchvision classification model name .*got 'vit'"),
    (dict(batch_size=0), r"batch_size must be a positive integer, got 0"),
    (dict(limit=0), r"limit must be a positive integer or None, got 0"),
    (dict(image_size=2), r"image_size must be an integer in \[8, 1024\], got 2"),
    (dict(weights="missing.pt"), r"got 'missing\.pt' \(no such file\)"),
])
def test_bad_config_is_refused(cache_dir, kw, message):
    with pytest.raises(QuboNNError, match=message):
        get_features(tiny(cache_dir, **kw))
