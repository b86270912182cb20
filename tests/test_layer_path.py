"""The layer path's core: BN folding, layer Gram vs autograd, apply round trip, group feedback."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qubo_nn.nets.backbones import build_model
from qubo_nn.curvature import layer_gram
from qubo_nn.curvature.layer_gram import GramAccumulator, capture_gram, layer_columns
from qubo_nn.curvature.sequential import sequential_groups
from qubo_nn.errors import QuboNNError
from qubo_nn.nets.bn import find_conv_bn_pairs, fold_batchnorm, unfold_batchnorm
from qubo_nn.nets.layers import weight_layers
from qubo_nn.core.layout import apply_levels, column_plan, row_view


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.3 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def resnet64():
    return _randomize_bn(build_model("resnet18", "none", num_classes=10, seed=0)).double()


def test_bn_folding_preserves_outputs_and_unfolds_into_the_plain_architecture(resnet64):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    folded, pairs = fold_batchnorm(resnet64)
    assert len(pairs) == 20   # conv1 + 16 block convs + 3 downsample convs of ResNet-18
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet64.modules())   # the input is untouched
    with torch.no_grad():
        ref = resnet64(x)
        torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5)
        plain = build_model("resnet18", "none", num_classes=10, seed=5).double()
        plain.load_state_dict(unfold_batchnorm(folded, resnet64, pairs))
        torch.testing.assert_close(plain.eval()(x), ref, rtol=1e-5, atol=1e-5)


def test_bn_pairs_need_the_conv_output_used_only_by_the_bn():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y          # folding would change the second use of y

    assert find_conv_bn_pairs(Branchy()) == []


def _tiny_conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()


def test_layer_gram_equals_autograd_hessian_of_reconstruction_loss(monkeypatch):
    conv = _tiny_conv()
    x = torch.randn(5, 2, 7, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    monkeypatch.setattr(layer_gram, "CHUNK_ELEMENTS", 200)    # several chunks of images
    acc = GramAccumulator(conv)
    acc.add(x)
    W0 = conv.weight.detach().clone()

    def recon(w_flat):
        w = w_flat.reshape(W0.shape)
        return ((torch.nn.functional.conv2d(x, w, stride=2, padding=1)
                 - torch.nn.functional.conv2d(x, W0, stride=2, padding=1)) ** 2).sum()

    full = torch.autograd.functional.hessian(recon, W0.flatten())          # (C_out·D)²
    D = acc.dim
    assert D == 18 and acc.count == 5 * 4 * 4
    for r in range(3):                                                      # rows share H = 2 X Xᵀ
        torch.testing.assert_close(full[r * D:(r + 1) * D, r * D:(r + 1) * D], acc.hessian(), rtol=1e-10, atol=1e-10)
    assert torch.count_nonzero(full[:D, D:]) == 0                         # no cross-row terms
    # the loss itself: ‖(Ŵ − W)X‖² = Σ_rows Δ_r (X Xᵀ) Δ_rᵀ
    dW = 0.1 * torch.randn(W0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    quad = torch.einsum("rd,de,re->", row_view(dW), acc.gram, row_view(dW))
    torch.testing.assert_close(recon((W0 + dW).flatten()), quad, rtol=1e-10, atol=1e-12)


def test_layer_columns_of_a_linear_layer_and_refusals():
    lin = nn.Linear(4, 2)
    assert layer_columns(lin, torch.ones(3, 5, 4)).shape == (15, 4)
    with pytest.raises(QuboNNError, match="expected a conv with groups=1"):
        layer_columns(nn.Conv2d(4, 4, 3, groups=2), torch.ones(1, 4, 5, 5))
    with pytest.raises(QuboNNError, match="expected an nn.Conv2d or nn.Linear layer, got ReLU"):
        layer_columns(nn.ReLU(), torch.ones(1, 4))


def test_capture_gram_sees_the_inputs_of_the_named_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    xs = [torch.randn(2, 1, 6, 6, dtype=torch.float64) for _ in range(2)]
    acc = capture_gram(net, "2", xs)
    with torch.no_grad():
        cols = torch.cat([net[1](net[0](x)).permute(0, 2, 3, 1).reshape(-1, 2) for x in xs])
    torch.testing.assert_close(acc.gram, cols.T @ cols)
    assert weight_layers(net, xs[0]) == ["0", "2", "4"]


def test_apply_levels_round_trip_on_conv_tensors():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 3, 3, generator=g)
    scale = torch.rand(4, generator=g) + 0.1
    levels = torch.randint(-2, 2, (4, 27), generator=g)
    q = apply_levels(w, levels, scale)
    assert q.shape == w.shape
    torch.testing.assert_close(q, scale[:, None, None, None] * levels.reshape(4, 3, 3, 3).float())
    torch.testing.assert_close(torch.round(row_view(q) / scale[:, None]).long(), levels, rtol=0, atol=0)
    rows, cols = torch.tensor([1, 3]), torch.tensor([0, 5, 26])
    part = apply_levels(w, levels[rows][:, cols], scale, rows, cols)
    mask = torch.zeros(4, 27, dtype=torch.bool)
    mask[rows[:, None], cols] = True
    assert torch.equal(row_view(part)[~mask], row_view(w)[~mask])          # untouched entries
    torch.testing.assert_close(row_view(part)[mask], row_view(q)[mask])
    with pytest.raises(QuboNNError, match=r"expected levels of shape \(2, 3\), got \(3, 2\)"):
        apply_levels(w, levels[:3, :2], scale, rows, cols)
    with pytest.raises(QuboNNError, match="expected integer levels"):
        apply_levels(w, levels.float() + 0.5, scale)


def test_column_plan_act_order_and_balanced_groups():
    diag = np.array([1.0, 5.0, 3.0, 5.0, 0.0, 2.0, 4.0])
    plan = column_plan(7, 3, diag)
    assert plan.order.tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert plan.num_groups == 3 and [len(plan.group(g)) for g in range(3)] == [2, 3, 2]
    assert sorted(np.concatenate([plan.group(g) for g in range(3)]).tolist()) == list(range(7))
    assert column_plan(4, 10).starts == (0, 4)
    with pytest.raises(QuboNNError, match="group_size must be a positive integer, got 0"):
        column_plan(4, 0)


def test_group_feedback_is_the_continuous_optimum_and_energies_add_up():
    rng = np.random.default_rng(0)
    D, R = 10, 3
    X = rng.standard_normal((D, 25))
    H = torch.tensor(2 * X @ X.T)
    plan = column_plan(D, 4, torch.diagonal(H))
    seq = sequential_groups(H, plan, damping_rel=0.05)
    Ht = (H + seq.damping * torch.eye(D))[plan.order][:, plan.order]         # damped, plan order
    W = torch.tensor(rng.standard_normal((R, D)))[:, plan.order]
    cur = W.clone()
    Q = torch.empty_like(W)
    energy = torch.zeros(R, dtype=torch.float64)
    for g in range(plan.num_groups):
        a, b = plan.starts[g], plan.starts[g + 1]
        q = torch.round(cur[:, a:b] * 2) / 2                                 # some fixed choice on a 0.5 grid
        delta = q - cur[:, a:b]
        energy += 0.5 * torch.einsum("ri,ij,rj->r", delta, seq.group_hessian(g), delta)
        before = cur.clone()
        seq.feedback(cur, g, delta)
        if b < D:   # reference: argmin over the later columns with everything up to b fixed
            Rr = slice(b, D)
            fixed = torch.cat([Q[:, :a], q], 1) - W[:, :b]
            ref = W[:, Rr] - torch.linalg.solve(Ht[Rr, Rr], Ht[Rr, :b] @ fixed.T).T
            torch.testing.assert_close(cur[:, Rr], ref, rtol=1e-9, atol=1e-9)
            assert not torch.equal(cur[:, Rr], before[:, Rr])
        Q[:, a:b] = q
    full = 0.5 * torch.einsum("ri,ij,rj->r", Q - W, Ht, Q - W)
    torch.testing.assert_close(energy, full, rtol=1e-7, atol=0)   # float64, condition number ~1e3


def test_one_damping_rule_for_the_layer_and_the_head():
    """μ = rel · mean diag H (core.model.damping_mu) is what the layer path's factor and the head's
    row problems add to the diagonal."""
    from qubo_nn.core.model import damping_mu

    rng = np.random.default_rng(0)
    A = rng.normal(size=(8, 20))
    H = torch.tensor(A @ A.T / 20)
    assert damping_mu(torch.diagonal(H), 0.01) == pytest.approx(0.01 * float(np.trace(A @ A.T / 20)) / 8, rel=1e-15)
    assert damping_mu(np.diag(H.numpy()), 0.5, 2.0) == pytest.approx(2.0 + 0.5 * float(H.diagonal().mean()), rel=1e-15)
    plan = column_plan(8, 8, None)
    assert sequential_groups(H, plan, 0.01).damping == damping_mu(torch.diagonal(H), 0.01)
