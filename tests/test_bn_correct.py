"""Statistics correction of quantized, BN-folded networks (nets.bn_correct)."""
import copy

import pytest
import torch
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.nets.bn_correct import correct_statistics


def tiny_net(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1, bias=False),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    return net.to(dtype).eval()


def images(n=16, seed=1, dtype=torch.float64):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def channel_stats(net, x, name):
    """Per-channel mean and population std of a layer's output, by a plain forward hook."""
    out = {}
    h = net.get_submodule(name).register_forward_hook(lambda m, a, y: out.setdefault("y", y.detach()))
    with torch.no_grad():
        net(x)
    h.remove()
    y = out["y"].transpose(0, 1).reshape(out["y"].shape[1], -1)
    return y.mean(1), y.std(1, unbiased=False)


def perturbed(net, seed=2):
    """``net`` with every conv output channel c turned into α_c·y_c + β_c (α_c > 0)."""
    q = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    for name in ("0", "2"):
        conv = q.get_submodule(name)
        C = conv.out_channels
        alpha = 0.5 + torch.rand(C, generator=g, dtype=torch.float64)
        beta = torch.randn(C, generator=g, dtype=torch.float64)
        with torch.no_grad():
            conv.weight.mul_(alpha[:, None, None, None])
            bias = conv.bias if conv.bias is not None else torch.zeros(C, dtype=torch.float64)
            new_bias = alpha * bias + beta
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias)
            else:
                conv.bias.copy_(new_bias)
    return q


def test_per_channel_affine_error_is_undone_exactly():
    ref = tiny_net()
    q = perturbed(ref)
    x = images()
    with torch.no_grad():
        assert (q(x) - ref(x)).abs().max() > 1e-2       # the error is visible end to end
    fixed, info = correct_statistics(ref, q, x, batch_size=5)
    with torch.no_grad():
        assert torch.allclose(fixed(x), ref(x), atol=1e-6, rtol=0)
        assert torch.allclose(fixed(images(seed=7)), ref(images(seed=7)), atol=1e-6, rtol=0)   # not just calib
    assert list(info) == ["0", "2"]
    # the inputs are not modified
    with torch.no_grad():
        assert (q(x) - ref(x)).abs().max() > 1e-2


def test_sequential_measurement_is_needed_for_the_exact_answer():
    """Layer 2 measured with layer 1 still uncorrected (a non-sequential pass) does not recover the
    reference: the exact result above comes from measuring each layer after the earlier ones."""
    ref = tiny_net()
    q = perturbed(ref)
    x = images()
    # correct layer "2" alone first (its inputs still come from the perturbed layer 0), then layer "0"
    only2, _ = correct_statistics(ref, q, x, layers=["2"])
    both, _ = correct_statistics(ref, only2, x, layers=["0"])
    with torch.no_grad():
        assert (both(x) - ref(x)).abs().max() > 1e-3


def test_corrected_layers_match_reference_statistics_and_keep_levels():
    """A rounded network (w = s_r·k): after correction every corrected layer's per-channel mean
    and std equal the reference's on the calibration images, and W'_r = (a_r s_r)·k_r (same levels)."""
    ref = tiny_net(seed=3)
    q = copy.deepcopy(ref)
    levels, scales = {}, {}
    for name in ("0", "2"):
        w = q.get_submodule(name).weight
        s = w.detach().reshape(w.shape[0], -1).abs().amax(1) / 1.5      # a 2-bit-ish grid: k in [-2, 1]
        k = torch.clamp(torch.round(w.detach() / s[:, None, None, None]), -2, 1)
        with torch.no_grad():
            w.copy_(s[:, None, None, None] * k)
        levels[name], scales[name] = k, s
    x = images(n=24)
    fixed, info = correct_statistics(ref, q, x, batch_size=7)
    for name in ("0", "2"):
        mu, sd = channel_stats(fixed, x, name)
        mu_r, sd_r = channel_stats(ref, x, name)
        assert torch.allclose(mu, mu_r, atol=1e-9, rtol=0)
        assert torch.allclose(sd, sd_r, atol=1e-9, rtol=0)
        a = info[name]["scale_factor"]
        assert (a > 0).all() and not torch.allclose(a, torch.ones_like(a))
        w = fixed.get_submodule(name).weight.detach()
        ratio = w / (a * scales[name])[:, None, None, None]
        assert torch.equal(torch.round(ratio), levels[name])
        assert torch.allclose(ratio, levels[name], atol=1e-12, rtol=0)
        # the info's "before" statistics are those of the network before this layer was corrected
        assert torch.allclose(info[name]["mean_ref"], mu_r, atol=1e-12)


def test_bias_only_correction_keeps_the_weights():
    ref = tiny_net(seed=4)
    q = perturbed(ref, seed=5)
    x = images()
    fixed, info = correct_statistics(ref, q, x, variance=False)
    for name in ("0", "2"):
        assert torch.equal(info[name]["scale_factor"], torch.ones(q.get_submodule(name).out_channels,
                                                                   dtype=torch.float64))
        assert torch.equal(fixed.get_submodule(name).weight, q.get_submodule(name).weight)
        mu, _ = channel_stats(fixed, x, name)
        mu_r, _ = channel_stats(ref, x, name)
        assert torch.allclose(mu, mu_r, atol=1e-9, rtol=0)


def test_float32_network_runs_and_dead_channel_keeps_scale_one():
    ref = tiny_net(dtype=torch.float32)
    q = perturbed(copy.deepcopy(ref).double()).float()
    with torch.no_grad():                 # channel 0 of the first conv: constant output (dead)
        q[0].weight[0].zero_()
    x = images(dtype=torch.float32)
    fixed, info = correct_statistics(ref, q, x)
    assert fixed[0].weight.dtype == torch.float32
    assert float(info["0"]["scale_factor"][0]) == 1.0
    mu, _ = channel_stats(fixed, x, "0")
    mu_r, _ = channel_stats(ref, x, "0")
    assert torch.allclose(mu, mu_r, atol=1e-5, rtol=0)


def test_one_layer_at_a_time_equals_all_at_once():
    """Correcting layer "0", then layer "2" of the result (the per-layer use inside a quantization
    loop) gives the same network as one sequential call; no layers = an unchanged copy."""
    ref = tiny_net(seed=6)
    q = perturbed(ref, seed=8)
    x = images()
    both, _ = correct_statistics(ref, q, x)
    first, _ = correct_statistics(ref, q, x, layers=["0"])
    stepwise, info = correct_statistics(ref, first, x, layers=["2"])
    assert list(info) == ["2"]
    for name in ("0", "2"):
        for attr in ("weight", "bias"):
            assert torch.allclose(getattr(stepwise.get_submodule(name), attr), getattr(both.get_submodule(name), attr),
                                  atol=1e-12, rtol=0)
    same, none = correct_statistics(ref, q, x, layers=[])
    assert none == {} and same is not q and torch.equal(same[0].weight, q[0].weight)


def test_refuses_bad_input():
    ref = tiny_net()
    with pytest.raises(QuboNNError, match="expected names of Conv2d/Linear layers"):
        correct_statistics(ref, ref, images(), layers=["1"])
    with pytest.raises(QuboNNError, match="batch_size must be a positive integer, got 0"):
        correct_statistics(ref, ref, images(), batch_size=0)
    other = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).double()
    with pytest.raises(QuboNNError, match="expected layer '0' in the reference with weight shape"):
        correct_statistics(other, ref, images())
    with pytest.raises(QuboNNError, match="expected a non-empty batch"):
        correct_statistics(ref, ref, images()[:0])
