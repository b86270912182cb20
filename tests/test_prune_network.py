"""Network-level pruning on a tiny torchvision ResNet: the reported errors are the errors the
pruned network really makes (measured at each block's BN output), masks zero whole channels,
BatchNorm re-estimation is a plain average, multiply-adds are counted by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.prune.network import (PruneConfig, apply_mask, conv_macs, layer_io, prunable_layers,
    prune_network, reestimate_batchnorm, resolve_layers)

pytestmark = pytest.mark.usefixtures("one_thread")   # small kernels: one thread on a shared CPU


@pytest.fixture(scope="module")
def tiny():
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():          # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    model.eval().requires_grad_(False)
    images = torch.randn(8, 3, 32, 32, generator=g)
    return model, images


def _bn_gap(pruned, original, pl, images):
    """Measured ‖bn2_pruned − bn2_original‖² and ‖γ/σ · conv2_original‖² at one block."""
    _, out_p = layer_io(pruned, pl.consumer_bn, images, want_input=False)
    _, out_o = layer_io(original, pl.consumer_bn, images, want_input=False)
    _, y = layer_io(original, pl.consumer, images, want_input=False)
    bn = original.get_submodule(pl.consumer_bn)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(1, -1, 1, 1)
    return float(((out_p - out_o).double() ** 2).sum()), float(((scale * y).double() ** 2).sum())


def test_prunable_layers_and_names(tiny):
    model, _ = tiny
    layers = prunable_layers(model)
    assert [pl.consumer for pl in layers] == [f"layer{i}.0.conv2" for i in range(1, 5)]
    assert [pl.channels for pl in layers] == [64, 128, 256, 512]
    assert layers[0].producer == "layer1.0.conv1" and layers[0].producer_bn == "layer1.0.bn1"
    assert [pl.consumer for pl in resolve_layers(model, "layer2.0.conv2, layer4.0.conv2")] == \
        ["layer2.0.conv2", "layer4.0.conv2"]
    with pytest.raises(QuboNNError, match=r"expected 'all' or layer names among layer1.0.conv2, .*got 'conv1'"):
        resolve_layers(model, "conv1")
    with pytest.raises(QuboNNError, match=r"expected a torchvision ResNet"):
        prunable_layers(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_mask_zeroes_exactly_the_pruned_channels(tiny):
    model, images = tiny
    import copy

    pl = prunable_layers(model)[1]
    mask = np.arange(128) % 3 != 0
    pruned = copy.deepcopy(model)
    apply_mask(pruned, pl, mask)
    x_p, _ = layer_io(pruned, pl.consumer, images, want_output=False)
    x_o, _ = layer_io(model, pl.consumer, images, want_output=False)
    assert torch.all(x_p[:, ~torch.as_tensor(mask)] == 0)
    torch.testing.assert_close(x_p[:, torch.as_tensor(mask)], x_o[:, torch.as_tensor(mask)])
    assert torch.all(pruned.get_submodule(pl.consumer).weight[:, ~torch.as_tensor(mask)] == 0)


@pytest.mark.parametrize("refit", [False, True])
def test_single_layer_report_is_the_measured_error_at_the_bn_output(tiny, refit):
    model, images = tiny
    pl = prunable_layers(model)[0]
    cfg = PruneConfig(layer=pl.consumer, keep=0.5, method="greedy", refit=refit, reestimate_bn=False)
    pruned, rep = prune_network(model, images, cfg)
    row = rep["layers"][0]
    err, yy = _bn_gap(pruned, model, pl, images)
    assert row["yy"] == pytest.approx(yy, rel=1e-4)
    key = "error_after_refit" if refit else "error_before_refit"
    assert row[key] == pytest.approx(err / yy, rel=1e-3)
    if refit:
        assert row["error_after_refit"] < row["error_before_refit"]
    else:
        assert row["error_after_refit"] == pytest.approx(row["error_before_refit"], rel=1e-9)


def test_sequential_whole_network_targets_the_original_network(tiny):
    """Every layer's reported error = the measured gap between the final pruned network and the
    original one at that block's BN output (inputs from the pruned network, targets original)."""
    model, images = tiny
    layers = prunable_layers(model)[:2]          # two layers keep the test fast; the second sees the first's prune
    pruned, rep = prune_network(model, images, PruneConfig(layer=",".join(pl.consumer for pl in layers), keep=0.25,
                                                           method="l1", reestimate_bn=False))
    assert [r["k"] for r in rep["layers"]] == [16, 32]
    for pl, row in zip(layers, rep["layers"]):
        err, yy = _bn_gap(pruned, model, pl, images)
        assert row["error_after_refit"] == pytest.approx(err / yy, rel=2e-3, abs=1e-6)


def test_qubo_method_starts_from_the_best_baseline_and_is_no_worse(tiny):
    model, images = tiny
    cfg = PruneConfig(layer="layer1.0.conv2", keep=0.5, method="qubo", sampler_params={"num_reads": 3, "timeout": 100},
                      reestimate_bn=False, refit=False)
    _, rep = prune_network(model, images, cfg)
    row = rep["layers"][0]
    best_base = min(b["error_before_refit"] for b in row["baselines"].values())
    assert set(row["baselines"]) == {"l1", "greedy", "lasso"}
    assert row["error_before_refit"] <= best_base * (1 + 1e-12)
    assert len(row["mask"]) == 32


def test_bn_reestimation_is_the_calibration_average_and_keeps_pruned_channels_zero():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)).eval().requires_grad_(False)
    net[0].weight[1] = 0
    net[0].bias[1] = 0
    net[1].weight[1] = 0
    net[1].bias[1] = 0
    x = torch.randn(10, 2, 6, 6)
    assert reestimate_batchnorm(net, x, batch_size=10) == 1
    y = net[0](x)
    torch.testing.assert_close(net[1].running_mean, y.mean((0, 2, 3)))
    torch.testing.assert_close(net[1].running_var, y.var((0, 2, 3), unbiased=True))
    assert not net.training and not net[1].training and net[1].momentum == 0.1
    assert torch.all(net(x)[:, 1] == 0)
    reestimate_batchnorm(net, x, batch_size=5)         # cumulative average over equal batches: same mean
    torch.testing.assert_close(net[1].running_mean, y.mean((0, 2, 3)))


def test_conv_macs_counts_nonzero_channels():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).requires_grad_(False)
    assert conv_macs(net, image_size=8) == 4 * 3 * 9 * 64 + 2 * 4 * 64
    net[0].weight[0] = 0
    net[2].weight[:, 0] = 0
    assert conv_macs(net, image_size=8) == 3 * 3 * 9 * 64 + 2 * 3 * 64
