"""Issue 21: your own images (imagefolder), any torchvision classifier, eval, grouped-conv Grams.

The digits ImageFolder is the built-in digits split written as 8-bit PNGs, so the two loaders
must agree up to the PNG rounding: |Δpixel| ≤ 0.5/255 in [0, 1], i.e. ≤ 0.5/255/0.224 ≈ 0.0088
after the ImageNet normalization (std ≥ 0.224).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from qubo_nn.cli.main import main
from qubo_nn.curvature.layer_gram import GramAccumulator, capture_gram
from qubo_nn.data import datasets as data
from qubo_nn.data.features import FeatureConfig, cache_settings, get_features
from qubo_nn.errors import QuboNNError
from qubo_nn.nets.backbones import build_backbone, build_model, check_arch, feature_dim, head_name

PNG_TOL = 0.5 / 255 / min(data.IMAGENET_STD) + 1e-6


def write_digits(root, single_folder=False, per_split=None):
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels = data._digits(split)
        for i, (img, label) in enumerate(zip(images[:per_split], labels[:per_split])):
            sub = root / f"d{int(label)}" if single_folder else root / folder / f"d{int(label)}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(img[0].numpy() * 255).astype(np.uint8)).save(sub / f"{split}{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits-folder"))


def _index(path: str) -> int:
    return int(os.path.basename(path)[-8:-4])


def test_imagefolder_gives_the_digits_images_features_and_accuracy(digits_dir, cache_dir, one_thread):
    own = data.load_dataset("imagefolder", "test", 16, digits_dir)     # 16 px: both loaders resize
    ref = data.load_dataset("digits", "test", 16)
    assert len(own) == len(ref) == 360 and data.num_classes("imagefolder", digits_dir) == 10
    idx = [_index(p) for p, _ in own.samples]
    assert sorted(idx) == list(range(360))
    x_own = torch.stack([own[j][0] for j in range(len(own))])
    x_ref = torch.stack([ref[i][0] for i in idx])
    assert float((x_own - x_ref).abs().max()) <= PNG_TOL
    assert [own[j][1] for j in range(len(own))] == [ref[i][1] for i in idx]
    # features through the cache, and the accuracy of one classifier on them (nearest class mean)
    res = {}
    for name in ("imagefolder", "digits"):
        cfg = FeatureConfig(dataset=name, data_root=str(digits_dir) if name == "imagefolder" else None,
                            image_size=8, device="cpu")     # 8 px (the digits' own size): a quick backbone pass
        res[name] = get_features(cfg)
    trn = {n: {int(_index(p)): i for i, (p, _) in enumerate(data.load_dataset("imagefolder", s, 8, digits_dir).samples)}
           for n, s in (("train", "train"), ("test", "test"))}
    for split in ("train", "test"):
        a = getattr(res["imagefolder"], split).X
        b = getattr(res["digits"], split).X[[i for i, _ in sorted(trn[split].items(), key=lambda t: t[1])]]
        rel = float((a - b).norm() / b.norm())
        assert rel < 1e-2, rel          # features differ only by the PNG rounding of the inputs

    def ncm_accuracy(r):
        means = torch.stack([r.train.X[r.train.y == c].mean(0) for c in range(10)])
        return float((torch.cdist(r.test.X, means).argmin(1) == r.test.y).float().mean() * 100)

    acc_own, acc_ref = ncm_accuracy(res["imagefolder"]), ncm_accuracy(res["digits"])
    assert abs(acc_own - acc_ref) <= 100 * 2 / 360, (acc_own, acc_ref)   # at most 2 of 360 test images


def test_cache_identity_is_a_digest_of_the_file_list_not_the_path(tmp_path):
    first = write_digits(tmp_path / "first", per_split=60)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    ident = data.dataset_identity("imagefolder", data_root=first)
    assert data.dataset_identity("imagefolder", data_root=moved) == ident
    assert str(first) not in str(cache_settings(FeatureConfig(dataset="imagefolder", data_root=str(first))))
    Image.new("L", (8, 8)).save(moved / "train" / "d3" / "extra.png")
    changed = data.dataset_identity("imagefolder", data_root=moved)
    assert changed["files_sha256"] != ident["files_sha256"] and changed["n_files"]["train"] == 61
    grown = moved / "val" / "d1" / next(iter(sorted(os.listdir(moved / "val" / "d1"))))
    grown.write_bytes(grown.read_bytes() + b"\0")        # same names, one size changed
    assert data.dataset_identity("imagefolder", data_root=moved)["files_sha256"] != changed["files_sha256"]


def test_one_folder_gets_a_seeded_recorded_stratified_split(tmp_path):
    root = write_digits(tmp_path / "one", single_folder=True, per_split=100)
    train = data.load_dataset("imagefolder", "train", 8, root)
    test = data.load_dataset("imagefolder", "test", 8, root)
    assert (len(train), len(test)) == (160, 40)
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    counts = np.bincount(test.targets, minlength=10)
    full = np.bincount(train.targets, minlength=10) + counts
    assert np.all(np.abs(counts - 0.2 * full) <= 1)
    ident = data.dataset_identity("imagefolder", data_root=root)
    assert ident["split"] == {"rule": "stratified", "test_fraction": 0.2, "random_state": 0, "folder": "."}
    assert [p for p, _ in data.load_dataset("imagefolder", "test", 8, root).samples] == [p for p, _ in test.samples]


def test_bad_folders_and_images_are_refused_naming_the_file(tmp_path):
    with pytest.raises(QuboNNError, match="needs --data-root"):
        data.num_classes("imagefolder")
    with pytest.raises(QuboNNError, match="expected an image folder at --data-root, got .*no such directory"):
        data.load_dataset("imagefolder", "train", 8, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuboNNError, match="expected class folders"):
        data.load_dataset("imagefolder", "train", 8, tmp_path / "empty")
    one = tmp_path / "one" / "train" / "cat"
    one.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a.png")
    with pytest.raises(QuboNNError, match=r"expected at least 2 class folders in .*got 1 \(\['cat'\]\)"):
        data.load_dataset("imagefolder", "train", 8, tmp_path / "one")
    (tmp_path / "one" / "train" / "dog").mkdir()
    with pytest.raises(QuboNNError, match=r"expected image files in every class folder .*got none in \['dog'\]"):
        data.load_dataset("imagefolder", "train", 8, tmp_path / "one")
    (tmp_path / "one" / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    for c in ("cat", "dog"):
        (tmp_path / "one" / "val" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "one" / "val" / c / "v.png")
    ds = data.load_dataset("imagefolder", "train", 8, tmp_path / "one")
    with pytest.raises(QuboNNError, match=r"expected a readable image file, got .*broken\.png"):
        [ds[i] for i in range(len(ds))]
    out = CliRunner().invoke(main, ["features", "--dataset", "imagefolder", "--data-root", str(tmp_path / "one"),
                                    "--image-size", "8", "--device", "cpu", "--cache-dir", str(tmp_path / "c")])
    assert out.exit_code == 2 and "broken.png" in out.output


# --- any torchvision classifier ---------------------------------------------------------------

# one per family (ResNet-34/50 and MobileNetV3-Large share their builders with ResNet-18 and -V3-Small)
ARCH_CASES = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
              pytest.param("vgg11_bn", marks=pytest.mark.slow)]     # 129 M parameters: ~10 s to initialise


@pytest.mark.parametrize("arch", ARCH_CASES)
def test_arch_builds_splits_extracts_and_takes_one_pretrain_step(arch, tmp_path, one_thread):
    from qubo_nn.train.pretrain import PretrainConfig, pretrain

    res = pretrain(PretrainConfig(dataset="synthetic", arch=arch, image_size=32, epochs=1, limit=4, batch_size=4,
                                  cache_dir=str(tmp_path / "ck"), device="cpu"))   # one SGD step
    assert len(res.info["history"]) == 1 and np.isfinite(res.info["test_loss"])
    model = build_model(arch, str(res.path), num_classes=10)
    extractor, head = build_backbone(arch, str(res.path))
    hname = head_name(model)
    assert isinstance(model.get_submodule(hname), nn.Linear) and isinstance(extractor.get_submodule(hname), nn.Identity)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = extractor(x)
        assert feats.shape == (2, feature_dim(arch)) and head.W.shape == (10, feature_dim(arch))
        torch.testing.assert_close(feats @ head.W.T + head.b, model(x), rtol=1e-4, atol=1e-5)


# quantizing at W4 with GPTQ: the depthwise (MobileNetV2), squeeze-excitation (V3) and grouped (RegNet)
# patterns; the ResNets' dense 3 × 3 layers (D = 4,608) take minutes here and are covered by
# test_network_quantize and the recorded run results/own-model/
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf"])
def test_arch_quantizes_at_w4_with_gptq(arch, one_thread):
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, quantize_network

    model = build_model(arch, num_classes=10, seed=0)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4)
    res = quantize_network(model, x, x, y, NetworkQuantizeConfig(bits=4, calib=4, device="cpu", batch_size=4))
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(res.levels) == sorted(convs)
    for L in res.record["layers"]:
        assert 0 <= L["rel_error"] < 0.5, L
        k = res.levels[L["layer"]]
        assert int(k.min()) >= -(1 << (L["bits"] - 1)) and int(k.max()) < (1 << (L["bits"] - 1))
    grouped = [L for L in res.record["layers"] if L.get("conv_groups", 1) > 1]
    assert grouped      # every one of these archs has grouped or depthwise convs


def test_arch_names_are_checked_and_a_conv_classifier_is_refused():
    assert check_arch("mobilenet_v2") == "mobilenet_v2"
    with pytest.raises(QuboNNError, match="arch must be a torchvision classification model name.*got 'resnet9'"):
        check_arch("resnet9")
    with pytest.raises(QuboNNError, match="expected a classifier whose last layer is an nn.Linear, got SqueezeNet"):
        build_backbone("squeezenet1_0")


# --- grouped / depthwise convolutions: one Gram per group -------------------------------------

@pytest.mark.parametrize("cin,cout,groups", [(4, 4, 4), (4, 6, 2)])      # depthwise; 2 groups of 3 rows
def test_grouped_conv_gram_is_the_autograd_hessian_per_group(cin, cout, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, padding=1, stride=2, groups=groups, bias=False).double()
    x = torch.randn(3, cin, 7, 7, dtype=torch.float64)
    acc = GramAccumulator(conv)
    acc.add(x)
    H = acc.hessian()
    D = cin // groups * 9
    assert acc.grouped and H.shape == (groups, D, D)
    w0 = conv.weight.detach().clone()
    y0 = torch.nn.functional.conv2d(x, w0, stride=2, padding=1, groups=groups)

    def loss(flat):
        y = torch.nn.functional.conv2d(x, flat.reshape(w0.shape), stride=2, padding=1, groups=groups)
        return ((y - y0) ** 2).sum()

    full = torch.func.hessian(loss)(w0.reshape(-1))                        # (C_out·D) × (C_out·D)
    per = cout // groups
    for r in range(cout):
        for r2 in range(cout):
            block = full[r * D:(r + 1) * D, r2 * D:(r2 + 1) * D]
            if r == r2:
                torch.testing.assert_close(block, H[r // per], rtol=1e-10, atol=1e-10)
            else:
                assert float(block.abs().max()) == 0.0   # rows never couple in ‖(Ŵ − W)X‖²
    assert acc.count == 3 * 4 * 4


def test_capture_gram_of_a_depthwise_layer_in_a_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten())
    xs = [torch.randn(2, 3, 5, 5) for _ in range(2)]
    acc = capture_gram(net, "2", xs)
    inputs = torch.cat([net[1](net[0](x)) for x in xs]).detach().double()
    cols = torch.nn.functional.unfold(inputs, 3)                     # N × (4·9) × L
    for g in range(4):
        Xg = cols[:, g * 9:(g + 1) * 9].permute(1, 0, 2).reshape(9, -1)
        torch.testing.assert_close(acc.gram[g], Xg @ Xg.T, rtol=1e-5, atol=1e-5)


def test_batched_grouped_gptq_equals_gptq_per_group():
    from qubo_nn.workflows.head_quantize import grid_scale
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, gptq_grouped, round_layer

    g = torch.Generator().manual_seed(0)
    G, per, D = 6, 2, 20
    X = torch.randn(G, D, 50, dtype=torch.float64, generator=g)
    H = 2 * X @ X.transpose(1, 2)
    W = torch.randn(G * per, D, dtype=torch.float64, generator=g)
    s = grid_scale(W, 3, "mse")
    cfg = NetworkQuantizeConfig(bits=3, group_size=8)
    k, info = gptq_grouped(W, H, s, 3, cfg)
    parts = [round_layer(W[i * per:(i + 1) * per], H[i], s[i * per:(i + 1) * per], 3, cfg) for i in range(G)]
    assert torch.equal(k, torch.cat([p[0] for p in parts]))
    assert info["energy"] == pytest.approx(sum(p[1]["energy"] for p in parts), rel=1e-6)


# --- eval -----------------------------------------------------------------------------------

def test_eval_reports_the_loss_and_accuracy_of_a_checkpoint(digits_dir, tmp_path, one_thread):
    import json

    from qubo_nn.train.pretrain import evaluate_model, load_split, materialize, PretrainConfig

    model = build_model("mobilenet_v3_small", num_classes=10, seed=3)
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    out = CliRunner().invoke(main, ["eval", "--arch", "mobilenet_v3_small", "--weights", str(path), "--dataset",
                                    "imagefolder", "--data-root", str(digits_dir), "--image-size", "16", "--limit", "40",
                                    "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    X, y = materialize(load_split(PretrainConfig(dataset="imagefolder", data_root=str(digits_dir), image_size=16,
                                                 limit=40), "test"))
    loss, acc = evaluate_model(model, X, y)
    assert got["n_test"] == 40 and got["test_loss"] == pytest.approx(loss, rel=1e-6) and got["test_acc"] == acc
    bad = CliRunner().invoke(main, ["eval", "--arch", "resnet18", "--weights", str(path), "--dataset", "digits"])
    assert bad.exit_code == 2 and "does not fit resnet18" in bad.output
