"""The pruning objective against independent references: per-channel convolutions, brute force,
explicit least squares. Everything in float64 on tiny hand-built layers."""
from __future__ import annotations

import itertools

import dimod
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qubo_nn import samplers
from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.prune import (brute_force, channel_stats, prune_bqm, pruning_problem, refit_error,
    refit_weights, safe_penalty)

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")   # small kernels: one thread on a shared CPU


def _conv(n=6, c_out=4, k=3, stride=2, padding=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(n, c_out, k, stride=stride, padding=padding, bias=True).double().requires_grad_(False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=F64))
    X = torch.relu(torch.randn(7, n, 9, 9, generator=g, dtype=F64))   # post-ReLU-like inputs
    X[:, 0] *= 3.0                                                      # unequal channel scales
    return conv, X


def _true_error(conv, X, mask, target=None, weight=None, scale=None):
    """‖conv(X ∘ mask) − target‖² by torch's own convolution (bias cancels: both sides omit it)."""
    w = conv.weight if weight is None else weight
    m = torch.as_tensor(np.asarray(mask, dtype=np.float64)).reshape(1, -1, 1, 1)
    out = F.conv2d(X * m, w, None, conv.stride, conv.padding, conv.dilation)
    ref = F.conv2d(X, conv.weight, None, conv.stride, conv.padding, conv.dilation) if target is None else target
    d = out - ref
    if scale is not None:
        d = d * scale.reshape(1, -1, 1, 1)
    return float((d * d).sum())


def test_gram_equals_inner_products_of_per_channel_outputs():
    conv, X = _conv()
    stats = channel_stats(X, conv, chunk=3)
    prob = pruning_problem(stats, conv.weight.detach(), block=4)   # block < n: the blocked contraction
    Ys = []
    for i in range(X.shape[1]):                                      # Y_i = W_i * X_i, one conv per channel
        Ys.append(F.conv2d(X[:, i:i + 1], conv.weight[:, i:i + 1].detach(), None, conv.stride, conv.padding))
    Z = torch.stack([y.reshape(-1) for y in Ys], 1)                  # (N·C_out·P, n)
    Y = Z.sum(1)
    np.testing.assert_allclose(prob.G, (Z.T @ Z).numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(prob.b, (Z.T @ Y).numpy(), rtol=1e-12, atol=1e-9)
    assert prob.yy == pytest.approx(float(Y @ Y), rel=1e-12)


@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("with_scale", [False, True])
def test_objective_equals_true_reconstruction_error(with_target, with_scale):
    conv, X = _conv(seed=1)
    g = torch.Generator().manual_seed(5)
    target = None
    if with_target:      # e.g. the original network's output, reached from different inputs
        target = F.conv2d(X + 0.1 * torch.randn(X.shape, generator=g, dtype=F64), conv.weight.detach(), None,
                          conv.stride, conv.padding)
    scale = torch.rand(conv.out_channels, generator=g, dtype=F64) + 0.5 if with_scale else None
    stats = channel_stats(X, conv, target=target, chunk=2)
    prob = pruning_problem(stats, conv.weight.detach(), out_scale=scale)
    rng = np.random.default_rng(0)
    masks = np.vstack([rng.integers(0, 2, size=(20, 6)), np.zeros(6), np.ones(6)])
    for s in masks:
        with torch.no_grad():
            true = _true_error(conv, X, s, target, scale=scale)
        assert prob.error(s) == pytest.approx(true, rel=1e-9, abs=1e-9 * prob.yy)
    np.testing.assert_allclose(prob.error(masks), [prob.error(s) for s in masks], rtol=1e-12, atol=1e-12 * prob.yy)


def test_linear_layer_is_a_one_by_one_conv():
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(5, 3).double().requires_grad_(False)
    X = torch.randn(40, 5, generator=g, dtype=F64)
    prob = pruning_problem(channel_stats(X, lin), lin.weight.detach())
    for s in itertools.product([0, 1], repeat=5):
        m = torch.tensor(s, dtype=F64)
        true = float((((X * m) @ lin.weight.T - X @ lin.weight.T) ** 2).sum())
        assert prob.error(np.array(s)) == pytest.approx(true, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode", ["penalty", "cqm"])
def test_bqm_energy_is_the_error_on_feasible_masks_and_adds_the_penalty_elsewhere(mode):
    conv, X = _conv(n=6, seed=3)
    prob = pruning_problem(channel_stats(X, conv), conv.weight.detach())
    k = 3
    bqm, info = prune_bqm(prob, k, mode=mode)
    assert bqm.num_variables == 6 and info["penalty"] > 0
    for s in itertools.product([0, 1], repeat=6):
        e = bqm.energy({i: s[i] for i in range(6)})
        expected = prob.error(np.array(s)) + info["penalty"] * (sum(s) - k) ** 2
        assert e == pytest.approx(expected, rel=1e-9, abs=1e-9 * prob.yy)


def test_cqm_default_penalty_is_dimods():
    conv, X = _conv(n=5, seed=4)
    prob = pruning_problem(channel_stats(X, conv), conv.weight.detach())
    _, info = prune_bqm(prob, 2, mode="cqm")
    Q = prob.G.copy()
    Q[np.diag_indices(5)] -= 2 * prob.b
    largest = dimod.BinaryQuadraticModel(Q, "BINARY").to_numpy_vectors()
    biggest = max(np.abs(largest[0]).max(), np.abs(largest[1][2]).max())
    assert info["penalty"] == pytest.approx(10 * biggest, rel=1e-9)


@pytest.mark.parametrize("n,k", [(8, 2), (10, 5), (12, 9)])
def test_safe_penalty_qubo_optimum_is_the_brute_force_mask(n, k):
    """Exact sampler over all 2ⁿ states of the penalized BQM vs enumeration of the C(n, k) masks
    with torch's convolution as the error (two independent routes to the same optimum)."""
    conv, X = _conv(n=n, c_out=3, seed=n)
    W = conv.weight.detach()
    prob = pruning_problem(channel_stats(X, conv), W)
    bqm, _ = prune_bqm(prob, k, penalty="safe")
    best = samplers.sample(bqm, "exact").first
    s = np.array([best.sample[i] for i in range(n)], dtype=bool)
    assert s.sum() == k
    with torch.no_grad():
        errs = {c: _true_error(conv, X, np.isin(np.arange(n), c)) for c in itertools.combinations(range(n), k)}
    best_c = min(errs, key=errs.get)
    assert best.energy == pytest.approx(errs[best_c], rel=1e-9)
    assert _true_error(conv, X, s) == pytest.approx(errs[best_c], rel=1e-9)
    mask, e = brute_force(prob, k)
    assert set(np.nonzero(mask)[0]) == set(best_c) and e == pytest.approx(errs[best_c], rel=1e-9)


def test_safe_penalty_is_needed_a_tiny_one_breaks_the_constraint():
    conv, X = _conv(n=8, seed=9)
    prob = pruning_problem(channel_stats(X, conv), conv.weight.detach())
    bqm, _ = prune_bqm(prob, 2, penalty=1e-6 * safe_penalty(prob))
    best = samplers.sample(bqm, "exact").first.sample
    assert sum(best.values()) != 2          # the unconstrained optimum keeps more channels


def test_refit_is_least_squares_and_refit_error_is_its_true_error():
    conv, X = _conv(n=5, seed=6)
    W = conv.weight.detach()
    stats = channel_stats(X, conv, chunk=4)
    mask = np.array([1, 0, 1, 1, 0], dtype=bool)
    Wn = refit_weights(stats, W, mask, damping=0.0)
    assert torch.all(Wn[:, ~torch.as_tensor(mask)] == 0)
    cols = F.unfold(X, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 5 * 9)   # im2col (M, n·K)
    Y = cols @ W.reshape(W.shape[0], -1).T
    keep = torch.as_tensor(mask).repeat_interleave(9)
    ref = torch.linalg.lstsq(cols[:, keep], Y).solution.T                # independent solver
    torch.testing.assert_close(Wn.reshape(W.shape[0], -1)[:, keep], ref, rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        true = _true_error(conv, X, mask, weight=Wn)
        before = _true_error(conv, X, mask)
    assert refit_error(stats, Wn) == pytest.approx(true, rel=1e-8)
    assert true < before


def test_boundary_errors_are_pinned():
    conv, X = _conv(n=4)
    W = conv.weight.detach()
    with pytest.raises(QuboNNError, match=r"expected inputs with 4 channels"):
        channel_stats(X[:, :3], conv)
    prob = pruning_problem(channel_stats(X, conv), W)
    with pytest.raises(QuboNNError, match=r"expected the number of kept channels k in \[1, 4\], got 0"):
        prune_bqm(prob, 0)
    with pytest.raises(QuboNNError, match=r"expected penalty mode in"):
        prune_bqm(prob, 2, mode="lagrange")
    with pytest.raises(QuboNNError, match=r"expected masks of shape \(4,\)"):
        prob.error(np.ones(5))
    with pytest.raises(QuboNNError, match=r"expected an nn.Conv2d or nn.Linear layer, got ReLU"):
        channel_stats(X, torch.nn.ReLU())
    with pytest.raises(QuboNNError, match=r"expected at most 20 channels"):
        brute_force(type(prob)(np.eye(21), np.zeros(21), 0.0), 3)
