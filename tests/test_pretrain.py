"""qubo-nn pretrain: a checkpoint that --weights PATH loads, a cache hit, the recipe's pieces."""
from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from qubo_nn.data import datasets as data
from qubo_nn.nets.backbones import build_backbone, build_model
from qubo_nn.cli import pretrain_cmd
from qubo_nn.cli.main import main
from qubo_nn.errors import QuboNNError
from qubo_nn.data.features import FeatureConfig, get_features
from qubo_nn.train.pretrain import PretrainConfig, checkpoint_path, pretrain, random_shift


def _tiny(tmp_path, **kw) -> PretrainConfig:
    base = dict(dataset="synthetic", image_size=16, epochs=1, limit=16, batch_size=16, cache_dir=str(tmp_path / "ck"),
                device="cpu")
    return PretrainConfig(**{**base, **kw})


def test_one_step_checkpoint_loads_as_weights_and_second_call_is_a_cache_hit(tmp_path, one_thread):
    cfg = _tiny(tmp_path)
    first = pretrain(cfg)
    assert not first.hit and first.path.is_file() and first.path == checkpoint_path(cfg)
    assert len(first.info["history"]) == 1 and first.info["n_train"] == 16
    t0 = time.perf_counter()
    second = pretrain(cfg)
    assert second.hit and time.perf_counter() - t0 < 1.0
    assert second.info["sha256"] == first.info["sha256"]
    # --weights PATH: the backbone + head reproduce the trained model exactly
    model = build_model("resnet18", str(first.path), num_classes=10)
    extractor, head = build_backbone("resnet18", str(first.path))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(extractor(x) @ head.W.T + head.b, model(x), rtol=1e-5, atol=1e-5)
    # the weights changed from the random init they started at
    init = build_model("resnet18", "none", num_classes=10, seed=0)
    assert not torch.equal(init.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])


def test_features_accept_the_checkpoint(tmp_path, cache_dir, one_thread):
    res = pretrain(_tiny(tmp_path))
    feats = get_features(FeatureConfig(dataset="synthetic", image_size=16, weights=str(res.path), limit=8,
                                       device="cpu"))
    assert feats.train.X.shape == (8, 512) and feats.meta["weights_identity"].startswith("sha256:")


def test_altered_checkpoint_is_retrained_not_trusted(tmp_path, one_thread):
    cfg = _tiny(tmp_path, epochs=0)
    first = pretrain(cfg)
    first.path.write_bytes(first.path.read_bytes()[:-10])
    again = pretrain(cfg)
    assert not again.hit and again.info["sha256"] == json.loads(first.path.with_suffix(".json").read_text())["sha256"]


def test_key_changes_with_recipe_but_not_with_device(tmp_path):
    a = checkpoint_path(_tiny(tmp_path))
    assert checkpoint_path(_tiny(tmp_path, lr=0.01)) != a
    assert checkpoint_path(_tiny(tmp_path, seed=1)) != a
    assert checkpoint_path(_tiny(tmp_path, device="auto", num_workers=2)) == a


def test_fine_tune_from_a_checkpoint_with_another_class_count(tmp_path, one_thread):
    src = build_model("resnet18", "none", num_classes=7, seed=3)
    path = tmp_path / "seven.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    model = build_model("resnet18", str(path), num_classes=10, seed=0)
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.state_dict()["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])


def test_random_shift_moves_each_image_by_its_own_offset():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    g2 = torch.Generator().manual_seed(0)
    offs = torch.randint(0, 5, (2, 2), generator=g2).tolist()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i, (dy, dx) in enumerate(offs):
        assert torch.equal(y[i], padded[i, :, dy:dy + 6, dx:dx + 6])
    assert torch.equal(random_shift(x, 0, g), x)


@pytest.mark.parametrize("field,value,match", [
    ("dataset", "mnist", "dataset must be one of"),
    ("epochs", -1, "epochs must be an integer >= 0, got -1"),
    ("lr", 0.0, "lr must be > 0, got 0.0"),
    ("momentum", 1.0, r"momentum must lie in \[0, 1\), got 1.0"),
    ("limit", 0, "limit must be a positive integer or None, got 0"),
])
def test_config_validation(tmp_path, field, value, match):
    with pytest.raises(QuboNNError, match=match):
        pretrain(_tiny(tmp_path, **{field: value}))


def test_cli_literals_match_the_library():
    from qubo_nn.cli import eval_cmd

    assert pretrain_cmd._DATASETS == data.DATASETS == eval_cmd._DATASETS


def test_cli_pretrain_json_and_bad_weights(tmp_path, one_thread):
    runner = CliRunner()
    args = ["pretrain", "--dataset", "synthetic", "--image-size", "16", "--epochs", "0", "--limit", "8",
            "--cache-dir", str(tmp_path / "ck"), "--device", "cpu", "--no-progress", "--json"]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    rec = json.loads(out.output.strip().splitlines()[-1])
    assert rec["ok"] and not rec["hit"]
    again = json.loads(runner.invoke(main, args).output.strip().splitlines()[-1])
    assert again["hit"] and again["path"] == rec["path"]
    bad = runner.invoke(main, args[:-1] + ["--weights", str(tmp_path / "missing.pt")])
    assert bad.exit_code == 2 and "weights must be 'imagenet', 'none' or a path" in bad.output


def test_cpu_thread_count_is_in_the_key_and_the_record(tmp_path, one_thread):
    # issue 23 item 17: 1 and 2 threads train to different weights (float summation order): not one entry
    one = checkpoint_path(_tiny(tmp_path))
    torch.set_num_threads(2)
    two = checkpoint_path(_tiny(tmp_path))
    torch.set_num_threads(1)
    assert one != two
    from qubo_nn.train.pretrain import checkpoint_settings

    assert checkpoint_settings(_tiny(tmp_path))["cpu_threads"] == 1
