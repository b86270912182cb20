"""Whole-network layer-wise rounding: written levels, GPTQ equivalence, the reported errors, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from qubo_nn.nets.backbones import build_model, load_checkpoint
from qubo_nn.cli.main import main
from qubo_nn.curvature.sequential import sequential_groups
from qubo_nn.errors import QuboNNError
from qubo_nn.core.layout import column_plan, row_view
from qubo_nn.train.pretrain import PretrainConfig, evaluate_model, pretrain
from qubo_nn.core.kernels import gptq, gptq_rows
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.core.scales import grid_scale, qrange
from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, quantize_network, round_layer


class TinyRes(nn.Module):
    """conv-BN-ReLU, conv-BN, a residual add, a 1×1 downsample conv-BN, pooling, fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.down, self.bnd = nn.Conv2d(6, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(self.bnd(self.down(y)).mean((2, 3)))


def _net_and_data():
    torch.manual_seed(0)
    net = TinyRes()
    for bn in (net.bn1, net.bn2, net.bnd):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(12, 3, 8, 8, generator=g)
    test = torch.randn(10, 3, 8, 8, generator=g)
    return net.eval(), calib, test, torch.randint(0, 4, (10,), generator=g)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantized_network_equals_the_network_with_the_written_levels(tmp_path, method, one_thread):
    net, calib, test, labels = _net_and_data()
    cfg = NetworkQuantizeConfig(bits=3, method=method, first_last_bits=4, calib=12, group_size=20, device="cpu")
    res = quantize_network(net, calib, test, labels, cfg)
    assert [L["layer"] for L in res.record["layers"]] == ["conv1", "conv2", "down", "fc"]
    assert [L["bits"] for L in res.record["layers"]] == [4, 3, 3, 4]
    path = tmp_path / "q.pt"
    res.save(path)
    state = load_checkpoint(path)                       # what --weights PATH reads
    raw = torch.load(path, weights_only=True)
    for name, bits in res.bits.items():
        k = raw["levels"][name].long()
        assert int(k.min()) >= -(2 ** (bits - 1)) and int(k.max()) <= 2 ** (bits - 1) - 1
        written = raw["scales"][name][:, None] * k.float()
        assert torch.equal(row_view(state[f"{name}.weight"]), written)
    fresh = TinyRes()
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(test), res.model(test), rtol=0, atol=0)
    loss, acc = evaluate_model(fresh, test, labels)
    assert loss == pytest.approx(res.record["quantized"]["test_loss"], rel=1e-12)
    assert acc == res.record["quantized"]["test_acc"]


def test_first_layer_error_is_the_reconstruction_error_of_its_inputs(one_thread):
    net, calib, test, labels = _net_and_data()
    res = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(bits=2, method="gptq", calib=12,
                                                                           device="cpu", first_last_bits=2))
    from qubo_nn.nets.bn import fold_batchnorm

    folded, _ = fold_batchnorm(net)
    W = folded.conv1.weight.detach().double()
    Wq = res.model.conv1.weight.detach().double()
    x = calib.double()
    ref = ((F.conv2d(x, W - Wq, padding=1) ** 2).sum() / (F.conv2d(x, W, padding=1) ** 2).sum()).item()
    # the Gram sums float32 chunk products (the network runs in float32) into float64
    assert res.record["layers"][0]["rel_error"] == pytest.approx(ref, rel=1e-5)


def test_grouped_gptq_with_feedback_equals_full_row_gptq_in_act_order():
    rng = np.random.default_rng(0)
    D, R, bits = 24, 5, 3
    X = rng.standard_normal((D, 40))
    H = torch.tensor(2 * X @ X.T)
    W = torch.tensor(rng.standard_normal((R, D)))
    scale = grid_scale(W, bits, "maxabs")
    cfg = NetworkQuantizeConfig(bits=bits, method="gptq", group_size=7, damping=0.01, factor_dtype="float64")
    k, info = round_layer(W, H, scale, bits, cfg)
    assert info["groups"] == 4
    plan = column_plan(D, D, torch.diagonal(H))
    mu = sequential_groups(H, plan, 0.01).damping
    order = torch.as_tensor(plan.order)
    Hp = H[order][:, order]
    for r in range(R):   # reference: the head path's one-row GPTQ on the act-ordered row, no groups
        Ht = Hp.numpy() + mu * np.eye(D)
        ref = gptq(IntegerProblem(Ht, W[r, order].numpy(), float(scale[r]), *qrange(bits)), act_order=False)
        assert np.array_equal(k[r, order].numpy(), ref)


def test_gptq_rows_single_column_is_rounding():
    w = torch.tensor([[0.26], [-0.74]], dtype=torch.float64)
    k = gptq_rows(w.numpy(), np.ones((1, 1)), np.array([[0.5], [0.5]]), -2, 1)
    assert k.tolist() == [[1], [-1]]


@pytest.mark.parametrize("field,value,match", [
    ("method", "greedy", r"method must be one of \('rtn', 'gptq', 'cd', 'qubo'\), got 'greedy'"),
    ("bits", 9, "bits must be an integer in"),
    ("damping", 0.0, "damping must be > 0"),
    ("group_size", 0, "group_size must be a positive integer, got 0"),
])
def test_config_validation(field, value, match):
    with pytest.raises(QuboNNError, match=match):
        NetworkQuantizeConfig(**{field: value}).validate()


def test_cli_network_scope_writes_a_checkpoint_that_weights_path_loads(tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))   # the record names paths under the home directory with ~
    ck = pretrain(PretrainConfig(dataset="synthetic", image_size=16, epochs=0, limit=8, cache_dir=str(tmp_path),
                                 device="cpu")).path
    out = tmp_path / "net.pt"
    args = ["quantize", "network", "--method", "rtn", "--bits", "4", "--checkpoint", str(ck),
            "--dataset", "synthetic", "--image-size", "16", "--calib", "8", "--scale", "maxabs", "--device", "cpu", "--out", str(out),
            "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output.strip().splitlines()[-1])
    assert len(rec["layers"]) == 21 and rec["folded_pairs"] == 20
    assert rec["checkpoint"] == "~/" + str(ck.relative_to(tmp_path)) and rec["out"] == "~/net.pt"
    model = build_model("resnet18", str(out), num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    bad = CliRunner().invoke(main, ["quantize", "head", "--calib", "8", "--dataset", "synthetic"])
    assert bad.exit_code == 2 and "--calib applies to `qubo-nn quantize network` only" in bad.output


@pytest.mark.parametrize("method", ["cd", "qubo"])
def test_cd_and_qubo_never_lose_to_gptq_on_a_single_group_and_zero_budget_is_gptq(method, one_thread):
    net, calib, test, labels = _net_and_data()
    base = dict(bits=2, first_last_bits=2, calib=12, group_size=1000, device="cpu", factor_dtype="float64")
    gptq = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(method="gptq", **base))
    full = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(method=method, solve_budget_s=1e3, **base))
    first = full.record["layers"][0]
    assert first["coverage"] == 1.0 and first["rows_solved"] == 6
    # layer 0 sees the same inputs in both runs; one group per row: each row's answer is kept only
    # when its energy is not above GPTQ's, so the layer's energy cannot be higher
    assert first["energy"] <= gptq.record["layers"][0]["energy"] * (1 + 1e-12)
    none = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(method=method, solve_budget_s=1e-9, **base))
    assert all(L["coverage"] == 0.0 for L in none.record["layers"])
    for name in gptq.levels:
        assert torch.equal(none.levels[name], gptq.levels[name])


def test_calibration_indices_is_one_seeded_sorted_draw():
    """The one calibration draw (network quantize, prune, the head's Hessian subsample): the first
    ``size`` of a seeded randperm, sorted; all of them when size >= n."""
    from qubo_nn.runtime import calibration_indices

    idx = calibration_indices(100, 10, 3)
    assert torch.equal(idx, torch.randperm(100, generator=torch.Generator().manual_seed(3))[:10].sort().values)
    assert torch.equal(idx, calibration_indices(100, 10, 3)) and not torch.equal(idx, calibration_indices(100, 10, 4))
    assert calibration_indices(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
