"""``quantize --scope network --bn-correct``: the statistics correction of nets/bn_correct.py wired
into quantize_network (issue 13's "re-estimating statistics after quantization")."""
from __future__ import annotations

import torch

from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, quantize_network
from test_network_quantize import _net_and_data


def test_bn_correct_matches_fp32_statistics_and_keeps_the_levels(one_thread):
    """quantize_network(bn_correct=True): levels as without it; the written conv weights are the
    levels times the corrected row scales (the network stays on a per-row grid); the first conv's
    post-BN output has the fp32 network's per-channel mean and spread on the calibration images."""
    net, calib, test, labels = _net_and_data()
    base = dict(method="gptq", bits=2, first_last_bits=2, calib=12, device="cpu", factor_dtype="float64")
    plain = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(**base))
    fixed = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(bn_correct=True, **base))
    for name in plain.levels:
        assert torch.equal(plain.levels[name], fixed.levels[name]), name
    assert set(fixed.record["bn_correct"]["layers"]) == {"conv1", "conv2", "down"}
    assert "before" in fixed.record["bn_correct"] and "bn_correct" not in plain.record
    for name in ("conv1", "conv2", "down"):
        w = fixed.model.get_submodule(name).weight.detach().reshape(6, -1).double()
        grid = fixed.scales[name].double()[:, None] * fixed.levels[name].double()
        torch.testing.assert_close(w, grid, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(fixed.scales[name], plain.scales[name])   # the correction changed them

    def bn1_stats(model):
        out = {}
        h = model.bn1.register_forward_hook(lambda m, i, o: out.setdefault("y", o.detach()))
        with torch.no_grad():
            model(calib)
        h.remove()
        y = out["y"].transpose(0, 1).reshape(6, -1)
        return y.mean(1), y.std(1, unbiased=False)

    (m_ref, s_ref), (m_fix, s_fix), (m_raw, _) = bn1_stats(net), bn1_stats(fixed.model), bn1_stats(plain.model)
    torch.testing.assert_close(m_fix, m_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(s_fix, s_ref, rtol=1e-5, atol=1e-6)
    assert (m_raw - m_ref).abs().max() > 1e-3        # without the correction the means are off
