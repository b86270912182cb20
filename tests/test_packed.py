"""Compact export (issue 21): packed integer codes + row scales in safetensors, digest-checked.

References: the codes come back bit for bit (``torch.equal``), the rebuilt float weights equal the
quantized network's (written by ``apply_levels``: s_r · k in float32), so logits are identical.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.io.packed import (float_bytes, load_levels, load_packed, pack_codes, read_header, save_packed,
    unpack_codes, verify_packed)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_every_width(bits):
    rng = np.random.default_rng(bits)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    k = np.concatenate([[qmin, qmax], rng.integers(qmin, qmax + 1, size=97)])
    stream = pack_codes(k, bits)
    assert stream.dtype == np.uint8 and stream.size == -(-k.size * bits // 8)
    assert np.array_equal(unpack_codes(stream, bits, k.size), k)
    with pytest.raises(QuboNNError, match=rf"expected levels in \[{qmin}, {qmax}\] for {bits} bits"):
        pack_codes(np.array([qmax + 1]), bits)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def quantized():
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, quantize_network

    net = _tiny_net()
    with torch.no_grad():       # non-trivial BN statistics to fold
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[4].running_var.uniform_(0.5, 2.0)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    res = quantize_network(net, x, x, torch.arange(16) % 10,
                           NetworkQuantizeConfig(bits=3, first_last_bits=4, calib=16, device="cpu"))
    return res, x


def test_export_round_trip_is_bit_exact_on_codes_and_logits(quantized, tmp_path):
    res, x = quantized
    path = tmp_path / "net.safetensors"
    info = res.save(path)
    assert info["max_abs_weight_diff"] == 0.0
    levels = load_levels(path)
    assert sorted(levels) == sorted(res.levels)
    for name, k in res.levels.items():
        assert torch.equal(levels[name], k.to(torch.int64))
    state, header = load_packed(path)
    ref = res.model.state_dict()
    assert sorted(state) == sorted(ref)
    for key, t in ref.items():
        assert torch.equal(state[key], t), key
    net = _tiny_net()
    net.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(net(x), res.model(x))
    # bytes and bits actually stored
    n = sum(k.numel() for k in res.levels.values())
    code_bytes = sum(-(-k.numel() * res.bits[name] // 8) for name, k in res.levels.items())
    assert info["quantized_weights"] == n and info["code_bytes"] == code_bytes
    assert info["stored_bits_per_weight"] == pytest.approx(8 * (code_bytes + info["scale_bytes"]) / n)
    assert info["float_bytes"] == float_bytes(ref) and info["bytes"] == path.stat().st_size
    assert header["layers"]["3"]["bits"] == 3 and header["layers"]["0"]["bits"] == 4   # first/last at 4


def test_a_pt_path_keeps_the_float_checkpoint(quantized, tmp_path):
    res, _ = quantized
    assert res.save(tmp_path / "net.pt") is None
    obj = torch.load(tmp_path / "net.pt", weights_only=True)
    assert set(obj) == {"state_dict", "levels", "scales", "bits"}


def test_digests_refuse_altered_files(quantized, tmp_path):
    res, _ = quantized
    path = tmp_path / "net.safetensors"
    info = res.save(path)
    assert verify_packed(path, sha256=info["file_sha256"])["payload_sha256"] == info["payload_sha256"]
    with pytest.raises(QuboNNError, match="expected file sha256 0+ for .*, got " + info["file_sha256"]):
        verify_packed(path, sha256="0" * 64)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01                                   # a bit of the last tensor
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(QuboNNError, match="expected payload sha256 .* \\(the file was altered or damaged\\)"):
        load_packed(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(QuboNNError, match="without a 'qubo_nn' header"):
        read_header(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(QuboNNError, match="expected a safetensors file"):
        read_header(tmp_path / "junk.safetensors")


def test_packed_file_is_a_weights_path_for_eval_and_features(tmp_path):
    """A torchvision model with two layers written as codes: --weights FILE.safetensors rebuilds it."""
    from qubo_nn.cli.main import main
    from qubo_nn.core.layout import apply_levels, row_view
    from qubo_nn.nets.backbones import build_backbone, build_model

    model = build_model("resnet18", num_classes=10, seed=0)
    levels, scales, bits = {}, {}, {}
    for name, b in (("layer1.0.conv1", 2), ("fc", 4)):
        layer = model.get_submodule(name)
        W = row_view(layer.weight.detach())
        s = (W.abs().amax(1) / (1 << (b - 1))).float()
        k = torch.clamp(torch.round(W / s[:, None]), -(1 << (b - 1)), (1 << (b - 1)) - 1).to(torch.int8)
        with torch.no_grad():
            layer.weight.copy_(apply_levels(layer.weight.detach(), k, s))
        levels[name], scales[name], bits[name] = k, s, b
    path = tmp_path / "r18.safetensors"
    info = save_packed(path, model.state_dict(), levels, scales, bits)
    assert info["bytes"] < info["float_bytes"]
    again = build_model("resnet18", str(path), num_classes=10)
    extractor, head = build_backbone("resnet18", str(path))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        torch.testing.assert_close(extractor(x) @ head.W.T + head.b, model(x), rtol=1e-5, atol=1e-5)
    out = CliRunner().invoke(main, ["eval", "--arch", "resnet18", "--weights", str(path), "--dataset", "synthetic",
                                    "--image-size", "16", "--limit", "8", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["packed"]["bits"] == [2, 4] and got["bytes"] == path.stat().st_size


def test_pickled_code_in_a_checkpoint_is_not_run(tmp_path):
    from qubo_nn.nets.backbones import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (exec, ("open('" + str(tmp_path / "ran").replace("\\", "/") + "', 'w').close()",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(QuboNNError, match="could not read checkpoint .* as a torch state dict"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()
