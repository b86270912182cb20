"""Gauss–Newton local model of the last block's BN γ/β, and the tuning methods (tasks.bn_tune)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from qubo_nn.curvature.gauss_newton import gauss_newton
from qubo_nn.core.encoding import optimize_encoding
from qubo_nn.errors import QuboNNError
from qubo_nn.core.bqm import build_bqm
from qubo_nn.workflows.bn_tune import BasicBlockTail, BNTuneConfig, TailState, evaluate, tune

C_WIDTH, CLASSES = 3, 4


class TinyResNet(nn.Module):
    """stem → layer4 (two BasicBlocks) → avgpool → fc, the attribute names of a torchvision ResNet."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(2, C_WIDTH, 3, padding=1)
        self.layer4 = nn.Sequential(BasicBlock(C_WIDTH, C_WIDTH), BasicBlock(C_WIDTH, C_WIDTH))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(C_WIDTH, CLASSES)
        g = torch.Generator().manual_seed(seed + 1)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.data.copy_(0.8 + 0.4 * torch.rand(m.num_features, generator=g))
                m.bias.data.copy_(0.3 * torch.randn(m.num_features, generator=g))
        self.double().eval()

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.layer4(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def setup(n=24, seed=0, hw=3):
    model = TinyResNet(seed)
    g = torch.Generator().manual_seed(seed + 7)
    images = torch.randn(n, 2, hw, hw, generator=g, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    tail = BasicBlockTail(model, "layer4.1")
    return model, tail, tail.prepare(images, labels, batch_size=10), images, labels


def true_loss(tail, data):
    return lambda th: F.cross_entropy(tail.logits(th, data.zhat, data.x), data.y)


def explicit_gn(tail, data, theta):
    """Σ J_nᵀ (diag p − p pᵀ) J_n / N with J from torch.autograd.functional.jacobian (an independent path)."""
    J = torch.autograd.functional.jacobian(lambda th: tail.logits(th, data.zhat, data.x), theta)   # N × C × P
    p = torch.softmax(tail.logits(theta, data.zhat, data.x), 1)
    G = sum(J[n].T @ (torch.diag(p[n]) - torch.outer(p[n], p[n])) @ J[n] for n in range(data.n)) / data.n
    return G, J


def test_tail_reproduces_the_model_and_its_parameter_layout():
    model, tail, data, images, labels = setup()
    with torch.no_grad():
        assert torch.allclose(tail.logits(tail.theta0, data.zhat, data.x), model(images), atol=1e-12)
        theta = tail.theta0 + 0.2 * torch.randn(tail.P, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        assert torch.allclose(tail.logits(theta, data.zhat, data.x), tail.write(theta)(images), atol=1e-12)
    assert tail.P == 4 * C_WIDTH
    sl = tail.slices()
    assert torch.equal(tail.theta0[sl["bn2.bias"]], model.layer4[1].bn2.bias.detach())


@pytest.mark.parametrize("matrix", [True, False])
def test_tail_state_trial_losses_are_exact(matrix):
    """Incremental trial losses (bn1 channels through conv2 on those channels only; bn2 without a
    conv) equal a full evaluation, for the dense-matrix conv2 and the conv fallback."""
    _, tail, data, _, _ = setup()
    if not matrix:
        tail._w2_matrix = None
    state = TailState(tail, data, tail.theta0)
    assert state.loss == pytest.approx(evaluate(tail, tail.theta0, data)[0], abs=1e-12)
    g = torch.Generator().manual_seed(9)
    theta = tail.theta0.clone()
    for idx in (torch.tensor([0, 4]), torch.tensor([7, 9, 11]), torch.tensor([1, 2, 6, 10]), torch.arange(12)):
        values = theta[idx] + 0.3 * torch.randn(idx.numel(), generator=g, dtype=torch.float64)
        moved = theta.clone()
        moved[idx] = values
        assert state.trial_loss(idx, values) == pytest.approx(evaluate(tail, moved, data)[0], abs=1e-12)
        assert state.loss == pytest.approx(evaluate(tail, theta, data)[0], abs=1e-12)   # trial does not move it
        state.update(idx, values)
        theta = moved
        assert torch.equal(state.theta, theta)
        assert state.loss == pytest.approx(evaluate(tail, theta, data)[0], abs=1e-12)


def test_gauss_newton_matches_autograd_in_float64():
    _, tail, data, _, _ = setup()
    theta = tail.theta0 + 0.1 * torch.randn(tail.P, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gn = gauss_newton(tail.logits, theta, data.inputs(), data.y, batch_size=7)
    G_ref, J = explicit_gn(tail, data, theta)
    assert torch.allclose(gn.G, G_ref, atol=1e-10, rtol=0)
    # the same matrix as the Hessian of the cross-entropy of the linearized logits z0 + J(θ − θ0)
    z0 = tail.logits(theta, data.zhat, data.x).detach()
    lin_ce = lambda th: F.cross_entropy(z0 + torch.einsum("ncp,p->nc", J, th - theta), data.y)  # noqa: E731
    H_lin = torch.autograd.functional.hessian(lin_ce, theta)
    assert torch.allclose(gn.G, H_lin, atol=1e-10, rtol=0)
    loss = true_loss(tail, data)
    th = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(th), th)
    assert torch.allclose(gn.g, grad, atol=1e-12, rtol=0)
    assert gn.L0 == pytest.approx(float(loss(theta)), abs=1e-12)
    assert torch.linalg.eigvalsh(gn.G).min() > -1e-12                      # PSD


def test_hessian_rows_restrict_only_the_curvature():
    _, tail, data, _, _ = setup()
    rows = torch.tensor([0, 3, 4, 10, 17])
    gn = gauss_newton(tail.logits, tail.theta0, data.inputs(), data.y, batch_size=2, hessian_rows=rows)
    full = gauss_newton(tail.logits, tail.theta0, data.inputs(), data.y)
    sub = type(data)(data.zhat[rows], data.x[rows], data.y[rows])
    G_ref, _ = explicit_gn(tail, sub, tail.theta0)
    assert torch.allclose(gn.G, G_ref, atol=1e-10, rtol=0)
    assert torch.allclose(gn.g, full.g, atol=1e-12, rtol=0) and gn.L0 == pytest.approx(full.L0, abs=1e-12)


def test_gauss_newton_is_the_true_hessian_except_across_the_two_bns():
    """The logits are piecewise affine in bn1's (γ1, β1) and in bn2's (γ2, β2) separately (ReLUs off
    their kinks), so the true Hessian equals G on those diagonal blocks; the product γ2·conv2(relu(γ1…))
    makes the cross block differ (the term Gauss–Newton drops)."""
    _, tail, data, _, _ = setup()
    gn = gauss_newton(tail.logits, tail.theta0, data.inputs(), data.y)
    H = torch.autograd.functional.hessian(true_loss(tail, data), tail.theta0)
    C = C_WIDTH
    bn1, bn2 = slice(0, 2 * C), slice(2 * C, 4 * C)
    assert torch.allclose(H[bn1, bn1], gn.G[bn1, bn1], atol=1e-10, rtol=0)
    assert torch.allclose(H[bn2, bn2], gn.G[bn2, bn2], atol=1e-10, rtol=0)
    assert (H[bn1, bn2] - gn.G[bn1, bn2]).abs().max() > 1e-3


def test_local_model_predicts_small_steps_to_second_order():
    _, tail, data, _, _ = setup()
    gn = gauss_newton(tail.logits, tail.theta0, data.inputs(), data.y)
    loss = true_loss(tail, data)
    H = torch.autograd.functional.hessian(loss, tail.theta0)
    d = torch.randn(tail.P, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d /= d.norm()
    # within bn2 alone the model is exact to second order: the error falls like t³
    d2 = d.clone()
    d2[: 2 * C_WIDTH] = 0
    errs = [abs(float(loss(tail.theta0 + t * d2)) - float(gn.predict(t * d2))) for t in (1e-2, 5e-3)]
    assert errs[0] < 1e-6 and 6.0 < errs[0] / errs[1] < 10.0
    # in every direction: first order exact, and the t² error is the dropped term ½ dᵀ(H − G)d
    dropped = 0.5 * float(d @ (H - gn.G) @ d)
    for t in (1e-3, 1e-4):
        err = float(loss(tail.theta0 + t * d)) - float(gn.predict(t * d))
        assert err / t**2 == pytest.approx(dropped, rel=2e-2, abs=1e-9)


def test_block_qubo_energy_is_the_models_loss_of_the_decoded_update():
    _, tail, data, _, _ = setup()
    gn = gauss_newton(tail.logits, tail.theta0, data.inputs(), data.y)
    blocks = tail.channel_blocks(2)
    assert [b.tolist() for b in blocks[:2]] == [[0, 1, 3, 4], [2, 5]]
    shift = torch.zeros(tail.P, dtype=torch.float64)
    shift[blocks[2]] = torch.tensor([0.05, -0.02, 0.01, 0.03], dtype=torch.float64)   # an earlier block's step
    idx = blocks[0]
    model = gn.block(idx, shift)
    mu = 0.1 * float(model.H.diagonal().mean())
    enc = optimize_encoding(model, bits=3, window=0.5, damping=mu)
    bqm = build_bqm(model, enc, mu)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(20, enc.num_variables))
    energies = bqm.energies((X, range(enc.num_variables)))
    for x, e in zip(X, energies):
        full = shift.clone()
        full[idx] += enc.decode(x) - (tail.theta0 + shift)[idx]
        step = full - shift
        expected = float(gn.predict(full)) + 0.5 * mu * float(step @ step)
        assert e == pytest.approx(expected, abs=1e-10)


def test_tuning_methods_lower_the_training_loss():
    _, tail, data, _, _ = setup(n=40)
    start = evaluate(tail, tail.theta0, data)[0]
    cfg = BNTuneConfig(budget_s=1.0, batch_size=8, sgd_lr=0.05, adam_lr=0.01, block_channels=2, sgd_epochs=1)
    finals = {}
    for method in ("sgd", "adam", "hybrid", "lbfgs"):
        theta, rec = tune(tail, data, data, method, cfg)
        assert rec["history"][0]["t"] < 0.05 and rec["history"][0]["train_loss"] == pytest.approx(start)
        assert rec["final"]["train_loss"] == pytest.approx(evaluate(tail, theta, data)[0], abs=1e-12)
        assert rec["optimizer_s"] < cfg.budget_s + 1.0
        finals[method] = rec["final"]["train_loss"]
        if method == "hybrid":
            acc = [b for b in rec["blocks"] if b["accepted"]]
            assert acc and all(b["true_change"] < 0 for b in acc)
            # every QUBO phase ends at or below where it began (only loss-lowering steps are kept)
            assert all(r["loss_after"] <= r["loss_before"] for r in rec["rounds"])
    assert all(v < start for v in finals.values())
    # L-BFGS with a strong-Wolfe line search never goes uphill between its monitoring points
    _, rec = tune(tail, data, None, "lbfgs", BNTuneConfig(budget_s=1.0, lbfgs_iters=2))
    losses = [p["train_loss"] for p in rec["history"]]
    assert len(losses) >= 3 and all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))


def test_refuses_bad_input():
    model, tail, data, _, _ = setup()
    with pytest.raises(QuboNNError, match="method must be one of"):
        tune(tail, data, None, "newton", BNTuneConfig())
    with pytest.raises(QuboNNError, match="budget_s must be > 0, got 0"):
        tune(tail, data, None, "sgd", BNTuneConfig(budget_s=0))
    with pytest.raises(QuboNNError, match="expected a module named 'layer9'"):
        BasicBlockTail(model, "layer9")
    with pytest.raises(QuboNNError, match="expected 'layer4' to be a torchvision BasicBlock"):
        BasicBlockTail(model, "layer4")
    first = BasicBlockTail(model, "layer4.0")     # not followed only by avgpool + fc
    with pytest.raises(QuboNNError, match="to be followed only by avgpool and fc"):
        first.prepare(torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(QuboNNError, match="channels per block must be a positive integer, got 0"):
        tail.channel_blocks(0)
    with pytest.raises(QuboNNError, match="expected every input with the"):
        gauss_newton(tail.logits, tail.theta0, (data.zhat[:3], data.x), data.y)


def test_hybrid_uses_the_one_step_policy(monkeypatch):
    """BatchNorm tuning decides its steps with qubo_nn.steps.policy: patched to refuse every step
    (and no SGD phase), θ stays where it started; every block is retried max_retries times with
    μ × growth, records use the shared words, and seeds are child_seed(seed, round, block, attempt)."""
    from dataclasses import replace

    from qubo_nn.runtime import child_seed
    from qubo_nn.steps import policy as sp

    _, tail, data, _, _ = setup(n=16)
    start = evaluate(tail, tail.theta0, data)[0]
    cfg = BNTuneConfig(budget_s=0.5, block_channels=2, sgd_epochs=0, seed=4)
    cfg.hybrid = replace(cfg.hybrid, max_retries=2, damping_growth=3.0)
    monkeypatch.setattr(sp, "accept", lambda before, after, tol=0.0: False)
    theta, rec = tune(tail, data, None, "hybrid", cfg)
    assert torch.equal(theta, tail.theta0.to(theta.dtype)) and rec["final"]["train_loss"] == pytest.approx(start)
    assert rec["blocks"]
    for b in rec["blocks"]:
        assert set(sp.STEP_KEYS) <= set(b) and not b["accepted"] and b["retries"] == 2
        damp = [a["damping"] for a in b["attempts"]]
        assert damp[1] == pytest.approx(3 * damp[0]) and damp[2] == pytest.approx(9 * damp[0])
        assert [a["seed"] for a in b["attempts"]] == [child_seed(4, b["round"], b["block"], r) for r in range(3)]
