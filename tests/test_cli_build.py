"""``qubo-nn build``: help, tiny builds on synthetic features, bad options."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from qubo_nn.io.blocks import read_block
from qubo_nn.io.manifest import read_manifest
from qubo_nn.core.head import Head

TINY = ["--dataset", "synthetic-features", "--n-train", "120", "--n-test", "10", "--device", "cpu",
        "--no-progress"]


def run(*args: str):
    return CliRunner().invoke(main, ["build", *args])


def test_help_lists_the_options():
    res = run("--help")
    assert res.exit_code == 0
    for opt in ("--head", "--warmup-epochs", "--blocks", "--per-block", "--block-size", "--num-blocks", "--saliency",
                "--bits", "--window", "--step-rule", "--damping-abs", "--damping", "--encoding", "--max-disk", "--overwrite", "--l2", "--subsample",
                "--dtype", "--seed", "--format", "--out", "--json", "--dataset", "--arch", "--weights",
                "--image-size", "--data-root", "--cache-dir", "--device"):
        assert opt in res.output, opt


def test_tiny_build_with_the_default_head(tmp_path):
    out = tmp_path / "q"
    res = run(*TINY, "--warmup-epochs", "1", "--blocks", "topk", "--block-size", "12", "--num-blocks", "2",
              "--bits", "2", "--format", "coo", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output.strip().splitlines()[-1])
    assert obj["ok"] and obj["totals"]["blocks"] == 2 and obj["totals"]["variables"] == 48
    assert len(obj["warmup"]) == 1
    man = read_manifest(out)
    assert man["features"]["dataset"] == "synthetic-features" and man["features"]["n_train"] == 120
    assert man["config"]["bits"] == 2 and man["file_format"] == "coo"
    bqm, enc, side = read_block(man["blocks"][0]["path"], head_digest=man["head_digest"])
    assert bqm.num_variables == 24 and enc.bits == 2
    assert bqm.energy({v: int(b) for v, b in enumerate(enc.current_bits())}) == pytest.approx(man["L0"], rel=1e-6)


def test_tiny_build_from_a_head_file(tmp_path):
    head = Head.init_like_linear(100, 512, seed=3)
    torch.save(head.state_dict(), tmp_path / "head.pt")
    res = run(*TINY, "--head", str(tmp_path / "head.pt"), "--blocks", "topk", "--saliency", "obd", "--block-size", "9",
              "--num-blocks", "3", "--bits", "1", "--seed", "7", "--out", str(tmp_path / "q"))
    assert res.exit_code == 0, res.output
    assert "built 3 blocks (dimod)" in res.output and "27 variables" in res.output and "manifest:" in res.output
    man = read_manifest(tmp_path / "q" / "manifest.json")
    assert len(man["blocks"]) == 3 and man["config"]["seed"] == 7 and man["config"]["saliency"] == "obd"
    sd = torch.load(tmp_path / "q" / "head.pt", weights_only=True)
    assert torch.equal(sd["weight"], head.W)


def test_bad_options_exit_nonzero_with_a_message(tmp_path):
    res = run(*TINY, "--bits", "0", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "Invalid value for '--bits'" in res.output
    res = run(*TINY, "--format", "json", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "Invalid value for '--format'" in res.output
    res = run(*TINY, "--blocks", "topk", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "block kind 'topk' needs size >= 1" in res.output
    res = run(*TINY, "--head", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "does not exist" in res.output
    torch.save(Head.zeros(10, 512).state_dict(), tmp_path / "small.pt")
    res = run(*TINY, "--head", str(tmp_path / "small.pt"), "--out", str(tmp_path / "a"), "--json")
    assert res.exit_code == 2
    assert "head is 10 classes × 512 features but the feature set has 100 classes × 512 features" in res.output
    assert json.loads(res.output.splitlines()[0])["ok"] is False
    torch.save({"w": torch.zeros(2)}, tmp_path / "bad.pt")
    res = run(*TINY, "--head", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "head checkpoint must hold 'weight' and 'bias'" in res.output
    res = run(*TINY, "--bits", "16", "--max-qubo-gib", "0.5", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "a dense QUBO of 8208 variables needs about 1.5 GiB, over the limit" in res.output
    assert not (tmp_path / "a" / "manifest.json").exists()
