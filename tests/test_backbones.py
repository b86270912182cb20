"""Backbones: the extractor/head split, each weights mode, checkpoints and their errors."""
from __future__ import annotations

import copy
import functools
import hashlib
import time
import urllib.error

import pytest
import torch
import torchvision

from qubo_nn.nets import backbones
from qubo_nn.nets.backbones import build_backbone, weights_identity
from qubo_nn.errors import OfflineError, QuboNNError

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def seeded_resnet(arch="resnet18", seed=0, num_classes=1000):
    """torchvision's model under torch.manual_seed(seed) (cached: callers must not modify it)."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_none_splits_into_extractor_and_head_of_the_same_model(arch, dim, images):
    extractor, head = build_backbone(arch, "none", seed=3)
    reference = seeded_resnet(arch, seed=3)                  # torchvision's init under the same seed
    with torch.no_grad():
        feats = extractor(images)
        assert feats.shape == (2, dim) and (feats >= 0).all()   # post-ReLU average pool
        assert head.W.shape == (1000, dim) and head.b.shape == (1000,)
        torch.testing.assert_close(feats @ head.W.T + head.b, reference(images), atol=1e-5, rtol=1e-5)
    assert not extractor.training


def test_none_is_seeded_without_touching_the_global_rng(images):
    state = torch.random.get_rng_state()
    a, _ = build_backbone("resnet18", "none", seed=0)
    assert torch.equal(state, torch.random.get_rng_state())
    b, _ = build_backbone("resnet18", "none", seed=0)
    c, _ = build_backbone("resnet18", "none", seed=1)
    with torch.no_grad():
        assert torch.equal(a(images), b(images)) and not torch.equal(a(images), c(images))
    assert weights_identity("resnet18", "none", 1) == "none:seed=1"


def _round_trip(tmp_path, images, obj, name):
    path = tmp_path / name
    torch.save(obj, path)
    return build_backbone("resnet18", str(path), seed=99)


def test_whole_model_checkpoint_round_trip(tmp_path, images):
    model = seeded_resnet(seed=5, num_classes=7)               # a fine-tuned 7-class model
    sd = model.state_dict()
    with torch.no_grad():
        expected = model(images)
    for name, obj in [("plain.pt", sd), ("wrapped_sd.pt", {"state_dict": sd, "epoch": 3}),
                      ("wrapped_model.pt", {"model": sd}),
                      ("parallel.pt", {f"module.{k}": v for k, v in sd.items()})]:
        extractor, head = _round_trip(tmp_path, images, obj, name)
        assert head.W.shape == (7, 512)
        with torch.no_grad():
            torch.testing.assert_close(extractor(images) @ head.W.T + head.b, expected, atol=1e-6, rtol=1e-6)


def test_backbone_only_checkpoint_round_trip(tmp_path, images):
    model = copy.deepcopy(seeded_resnet(seed=6))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.fc = torch.nn.Identity()
    extractor, head = _round_trip(tmp_path, images, sd, "backbone.pt")
    with torch.no_grad():
        torch.testing.assert_close(extractor(images), model(images), atol=1e-6, rtol=1e-6)
    assert head.W.shape == (1000, 512)                          # fc stays the seeded random init
    digest = hashlib.sha256((tmp_path / "backbone.pt").read_bytes()).hexdigest()
    assert weights_identity("resnet18", str(tmp_path / "backbone.pt")) == f"sha256:{digest}"


def test_bad_weights_are_refused_with_clear_messages(tmp_path):
    with pytest.raises(QuboNNError, match=r"weights must be 'imagenet', 'none' or a path to a checkpoint file, "
                                          r"got '.*nope\.pt' \(no such file\)"):
        build_backbone("resnet18", str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(QuboNNError, match=r"could not read checkpoint '.*junk\.pt' as a torch state dict"):
        build_backbone("resnet18", str(junk))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(QuboNNError, match=r"must hold a state dict \(names -> tensors\), got list"):
        build_backbone("resnet18", str(tmp_path / "list.pt"))
    with pytest.raises(QuboNNError, match=r"arch must be a torchvision classification model name .*got 'vgg'"):
        build_backbone("vgg", "none")


def test_mismatched_checkpoints_name_key_and_shape(tmp_path):
    sd = dict(seeded_resnet().state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(QuboNNError, match=r"does not fit resnet18: key 'layer1\.0\.conv1\.weight' has shape "
                                          r"\(32, 64, 3, 3\), expected \(64, 64, 3, 3\)"):
        build_backbone("resnet18", str(tmp_path / "shape.pt"))
    sd = dict(seeded_resnet().state_dict())
    sd["layer1.2.bn1.bias"] = torch.zeros(64)                 # as in a resnet34 checkpoint
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(QuboNNError, match=r"does not fit resnet18: unexpected keys 'layer1\.2\.bn1\.bias'"):
        build_backbone("resnet18", str(tmp_path / "extra.pt"))
    sd = dict(seeded_resnet().state_dict())
    del sd["layer4.1.bn2.running_var"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(QuboNNError, match=r"does not fit resnet18: missing keys 'layer4\.1\.bn2\.running_var'"):
        build_backbone("resnet18", str(tmp_path / "missing.pt"))


# --- imagenet: the hub cache and the offline path (no network is ever used here) ----------

@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(url, timeout=10.0):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(backbones, "probe_url", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_imagenet_offline_without_cache_fails_fast_with_remedy(hub):
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match=r"ImageNet weights for resnet18 are not in the torch cache .* could not "
                                           r"be downloaded .*pass --weights none \(random init\) or a checkpoint path"):
        build_backbone("resnet18", "imagenet")
    assert time.perf_counter() - t0 < 5.0


def test_imagenet_weights_come_from_the_hub_cache(hub, monkeypatch, images):
    model = seeded_resnet(seed=11)
    hub.mkdir(parents=True)
    tmp = hub / "tmp.pth"
    torch.save(model.state_dict(), tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(hub / f"resnet18-{prefix}.pth")
    monkeypatch.setattr(backbones, "_imagenet_url",
                        lambda arch: f"https://download.pytorch.org/models/resnet18-{prefix}.pth")
    extractor, head = build_backbone("resnet18", "imagenet")
    with torch.no_grad():
        torch.testing.assert_close(extractor(images) @ head.W.T + head.b, model(images), atol=1e-6, rtol=1e-6)
    assert weights_identity("resnet18", "imagenet") == \
        f"imagenet:ResNet18_Weights.IMAGENET1K_V1:resnet18-{prefix}.pth"


def test_imagenet_cache_file_with_wrong_hash_is_refused(hub):
    hub.mkdir(parents=True)
    torch.save(seeded_resnet().state_dict(), hub / "resnet18-f37072fd.pth")   # the published name, other bytes
    with pytest.raises(QuboNNError, match=r"do not match their published sha256 prefix f37072fd"):
        build_backbone("resnet18", "imagenet")
