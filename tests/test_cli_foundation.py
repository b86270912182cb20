"""``qubo-nn features`` and ``qubo-nn train`` through click's test runner."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from qubo_nn.core.head import Head

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dataset", "synthetic", "--image-size", "16", "--limit", "12", "--batch-size", "8", "--no-progress"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command, options", [
    ("features", ["--dataset", "--arch", "--weights", "--image-size", "--data-root", "--download", "--cache-dir",
                  "--device", "--batch-size", "--json"]),
    ("train", ["--dataset", "--weights", "--epochs", "--lr", "--momentum", "--weight-decay", "--schedule", "--seed",
               "--out", "--json"]),
])
def test_help_lists_every_option_with_help_text(runner, command, options):
    res = runner.invoke(main, [command, "--help"])
    assert res.exit_code == 0
    for opt in options:
        assert opt in res.output
    cmd = main.commands[command]
    assert all(p.help for p in cmd.params if p.name != "help")


def test_features_json_then_cache_hit(runner, cache_dir):
    first = runner.invoke(main, ["features", *TINY, "--json"])
    assert first.exit_code == 0, first.output
    obj = json.loads(first.stdout.strip().splitlines()[-1])
    assert obj["ok"] and not obj["hit"] and obj["shapes"]["train_X"] == [12, 512]
    assert obj["path"].startswith(str(cache_dir)) and obj["seconds"] > 0
    second = runner.invoke(main, ["features", *TINY, "--json"])
    assert json.loads(second.stdout.strip().splitlines()[-1])["hit"]
    text = runner.invoke(main, ["features", *TINY])
    assert "cache hit" in text.output and "train (12, 512)" in text.output


def test_train_reports_epochs_and_writes_the_head(runner, cache_dir, tmp_path):
    out = tmp_path / "head.pt"
    res = runner.invoke(main, ["train", *TINY, "--epochs", "2", "--seed", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["epoch"] for r in obj["history"]] == [1, 2] and obj["config"]["seed"] == 1
    head = Head.from_state_dict(torch.load(out, weights_only=True))
    assert head.W.shape == (10, 512)
    text = runner.invoke(main, ["train", *TINY, "--epochs", "1", "--out", str(out)])
    assert text.exit_code == 0 and "epoch   1/1" in text.output and f"head written to {out}" in text.output


@pytest.mark.parametrize("args, message", [
    (["features", "--dataset", "imagenet"], "Invalid value for '--dataset': 'imagenet' is not one of"),
    (["features", "--weights", "no/such/file.pt"], "got 'no/such/file.pt' (no such file)"),
    (["train", "--weights", "no/such/file.pt"], "got 'no/such/file.pt' (no such file)"),
    (["train", "--schedule", "linear"], "Invalid value for '--schedule'"),
    (["train", "--lr", "0"], "Invalid value for '--lr'"),
    (["features", "--image-size", "4"], "Invalid value for '--image-size'"),
])
def test_bad_options_exit_non_zero_with_a_message(runner, args, message):
    res = runner.invoke(main, args)
    assert res.exit_code == 2
    assert message in res.output


def test_missing_cifar100_exits_2_naming_the_remedy(runner, tmp_path):
    res = runner.invoke(main, ["features", "--dataset", "cifar100", "--data-root", str(tmp_path), "--json"])
    assert res.exit_code == 2
    obj = json.loads(res.stdout.strip().splitlines()[0])
    assert not obj["ok"] and "--data-root pointing at the folder containing the extracted" in obj["error"]
