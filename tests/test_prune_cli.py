"""``qubo-nn prune`` end to end on a random ResNet-18 checkpoint (no pretraining in tests)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")   # small kernels: one thread on a shared CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from qubo_nn.nets.backbones import build_model

    path = tmp_path_factory.mktemp("ckpt") / "rand.pt"
    torch.save({"state_dict": build_model("resnet18", "none", num_classes=10, seed=0).state_dict()}, path)
    return path


def test_prune_writes_a_loadable_checkpoint_and_solvable_qubos(checkpoint, tmp_path):
    from qubo_nn.nets.backbones import build_model
    from qubo_nn.io.bqm_files import read_bqm

    out, qubos = tmp_path / "out", tmp_path / "qubos"
    res = CliRunner().invoke(main, ["prune", "--weights", str(checkpoint), "--layer", "layer1.0.conv2", "--keep", "0.25",
                                    "--method", "greedy", "--calib", "24", "--no-bn", "--out", str(out),
                                    "--export", str(qubos), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["ok"] and summary["layers"][0]["k"] == 16
    report = json.loads((out / "report.json").read_text())
    mask = np.array(report["layers"][0]["mask"])
    model = build_model("resnet18", str(out / "pruned.pt"), num_classes=10)
    dropped = np.setdiff1d(np.arange(64), mask)
    assert torch.all(model.layer1[0].conv1.weight[dropped] == 0)
    assert torch.all(model.layer1[0].conv2.weight[:, dropped] == 0)
    assert 0 < report["macs"]["kept_fraction"] < 1
    # the exported QUBO's energy of the chosen mask is the reported reconstruction error
    bqm = read_bqm(qubos / "layer1.0.conv2.bqm")
    meta = json.loads((qubos / "layer1.0.conv2.prune.json").read_text())
    assert meta["k"] == 16 and meta["n"] == 64
    s = {i: int(i in set(mask.tolist())) for i in range(64)}
    row = report["layers"][0]
    assert bqm.energy(s) == pytest.approx(row["error_before_refit"] * row["yy"], rel=1e-9)
    sol = CliRunner().invoke(main, ["solve", str(qubos / "layer1.0.conv2.bqm"), "--sampler", "steepest",
                                    "--out", str(tmp_path / "sol")])
    assert sol.exit_code == 0, sol.output


@pytest.mark.parametrize("args,message", [
    (["--params", "[1]"], "--params must be a JSON object, got list"),
    (["--penalty", "big"], "--penalty must be a number or 'safe', got 'big'"),
    (["--layer", "fc"], "expected 'all' or layer names among"),
    (["--layer", "layer1.0.conv2, layer2.0.conv2,layer1.0.conv2"],
     "--layer: expected each layer once, got layer1.0.conv2 more than once"),
])
def test_prune_bad_input_exits_2(checkpoint, tmp_path, args, message):
    res = CliRunner().invoke(main, ["prune", "--weights", str(checkpoint), "--calib", "4", "--out", str(tmp_path)]
                             + args)
    assert res.exit_code == 2
    assert message in res.output


def test_keep_help_states_the_floor_of_one_channel():
    """The help's formula is the library's: k = max(1, round(keep·n)) (keep 0.0001 of 64 keeps 1)."""
    from qubo_nn.workflows.prune.select import keep_count

    res = CliRunner().invoke(main, ["prune", "--help"])
    assert "k = max(1, round(keep·n))" in " ".join(res.output.split())
    assert [keep_count(64, k) for k in (0.0001, 0.01, 0.25, 1.0)] == [1, 1, 16, 64]


def test_cli_literals_match_the_library():
    from qubo_nn.cli import prune_cmd
    from qubo_nn.workflows.prune import METHODS, PENALTY_MODES

    assert prune_cmd._METHODS == METHODS and prune_cmd._PENALTY_MODES == PENALTY_MODES
