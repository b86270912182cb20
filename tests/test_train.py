"""SGD trainer and convex optimum against an independent SciPy reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import check_grad, minimize

from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.core.head import Head, evaluate
from qubo_nn.train.sgd import SGDConfig, convex_optimum, jitter_check, lr_at, reference_head, train_sgd

pytestmark = pytest.mark.usefixtures("one_thread")
L2 = 0.01


def gaussian_classes(n, dim, classes, spread, seed):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(classes, dim, generator=g)
    y = torch.arange(n) % classes
    X = means[y] + torch.randn(n, dim, generator=g)
    return FeatureSet(X.float(), y, classes)


def separable(n, seed):
    """4 classes, each on its own block of 4 coordinates (value 4) plus noise 0.3: a margin of
    about 4 - 2·3·0.3·2 > 0, so a linear head separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    X = 0.3 * torch.randn(n, 16, generator=g)
    X.view(n, 4, 4)[torch.arange(n), y] += 4.0
    return FeatureSet(X, y, 4)


@pytest.fixture(scope="module")
def overlap():
    return gaussian_classes(400, 8, 3, spread=1.0, seed=0)


def numpy_loss_grad(theta, X, y, C, l2):
    """mean CE + (l2/2)‖W‖² and its analytic gradient over θ = [W.ravel(), b] (NumPy, float64)."""
    N, D = X.shape
    W, b = theta[:C * D].reshape(C, D), theta[C * D:]
    Z = X @ W.T + b
    Z = Z - Z.max(1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
    loss = -logp[np.arange(N), y].mean() + 0.5 * l2 * (W ** 2).sum()
    P = np.exp(logp)
    P[np.arange(N), y] -= 1.0
    P /= N
    return loss, np.concatenate([(P.T @ X + l2 * W).ravel(), P.sum(0)])


@pytest.fixture(scope="module")
def scipy_optimum(overlap):
    X, y, C = overlap.X.double().numpy(), overlap.y.numpy(), overlap.num_classes
    theta0 = np.zeros(C * (X.shape[1] + 1))
    f = lambda t: numpy_loss_grad(t, X, y, C, L2)[0]               # noqa: E731
    g = lambda t: numpy_loss_grad(t, X, y, C, L2)[1]               # noqa: E731
    assert check_grad(f, g, np.random.default_rng(0).normal(size=theta0.shape)) < 1e-5
    res = minimize(numpy_loss_grad, theta0, args=(X, y, C, L2), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10_000})
    assert np.abs(res.jac).max() < 1e-6
    D = X.shape[1]
    return res.fun, res.x[:C * D].reshape(C, D), res.x[C * D:]


def test_convex_optimum_matches_scipy(overlap, scipy_optimum):
    fun, W, b = scipy_optimum
    head, info = convex_optimum(overlap, l2=L2)
    assert abs(info["loss"] - fun) < 1e-9
    np.testing.assert_allclose(head.W.numpy(), W, atol=1e-5)
    # the bias is defined up to a common shift (softmax is shift invariant): compare centred
    np.testing.assert_allclose(head.b.numpy() - head.b.numpy().mean(), b - b.mean(), atol=1e-5)
    assert info["converged"] and info["iterations"] < 500 and info["wall_time_s"] >= 0
    assert abs(evaluate(head, overlap, l2=L2)[0] - fun) < 1e-6       # returned float32 head, same loss


def test_sgd_comes_within_tolerance_of_the_optimum(overlap, scipy_optimum):
    fun, _, _ = scipy_optimum
    cfg = SGDConfig(epochs=60, lr=0.1, weight_decay=L2, schedule="cosine", seed=0)
    head, history = train_sgd(Head.zeros(3, 8), overlap, None, cfg)
    assert len(history) == 60 and history[0]["epoch"] == 1 and history[-1]["epoch"] == 60
    gap = history[-1]["train_loss"] - fun
    assert -1e-9 <= gap < 1e-3                                     # stated tolerance: 1e-3 nats
    # the reported loss is the full-training-set objective of the returned head
    theta = np.concatenate([head.W.double().numpy().ravel(), head.b.double().numpy()])
    ref, _ = numpy_loss_grad(theta, overlap.X.double().numpy(), overlap.y.numpy(), 3, L2)
    assert abs(history[-1]["train_loss"] - ref) < 1e-5
    assert history[-1]["test_loss"] is None and history[-1]["test_acc"] is None


def test_sgd_separates_a_linearly_separable_problem():
    train, test = separable(400, seed=1), separable(200, seed=2)
    head, history = train_sgd(Head.init_like_linear(4, 16, seed=0), train, test, SGDConfig(epochs=5, lr=0.05))
    last = history[-1]
    assert last["train_acc"] >= 0.99 and last["test_acc"] >= 0.99
    assert set(last) >= {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "wall_time_s"}
    assert last["test_loss"] == pytest.approx(evaluate(head, test)[0], abs=1e-6)


def test_seeded_and_resumable_in_pieces(overlap):
    head0 = Head.init_like_linear(3, 8, seed=4)
    cfg = SGDConfig(epochs=6, lr=0.05, momentum=0.0, schedule="cosine", seed=7)
    whole, hist = train_sgd(head0, overlap, None, cfg)
    again, _ = train_sgd(head0, overlap, None, cfg)
    assert torch.equal(whole.W, again.W)
    other, _ = train_sgd(head0, overlap, None, SGDConfig(epochs=6, lr=0.05, momentum=0.0, schedule="cosine", seed=8))
    assert not torch.equal(whole.W, other.W)
    # epochs [0, 2) then [2, 6) of the same 6-epoch schedule: same lrs and shuffles as one run
    # (exactly equal here because momentum 0: each call starts a fresh momentum buffer)
    part, h1 = train_sgd(head0, overlap, None, SGDConfig(**{**vars(cfg), "epochs": 2}), total_epochs=6)
    part, h2 = train_sgd(part, overlap, None, SGDConfig(**{**vars(cfg), "epochs": 4}), start_epoch=2, total_epochs=6)
    torch.testing.assert_close(part.W, whole.W, atol=1e-6, rtol=0)
    assert [r["lr"] for r in h1 + h2] == [r["lr"] for r in hist]
    assert [r["epoch"] for r in h1 + h2] == list(range(1, 7))
    assert torch.equal(head0.W, Head.init_like_linear(3, 8, seed=4).W)    # input head untouched


def test_learning_rate_schedules():
    cfg = SGDConfig(lr=1.0, schedule="cosine")
    assert [lr_at(cfg, e, 4) for e in range(4)] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                                  0.5 * (1 + math.cos(3 * math.pi / 4))])
    step = SGDConfig(lr=1.0, schedule="step")
    assert [lr_at(step, e, 8) for e in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(SGDConfig(lr=0.3), 5, 10) == 0.3


def test_callback_sees_every_epoch(overlap):
    seen = []
    train_sgd(Head.zeros(3, 8), overlap, overlap, SGDConfig(epochs=3),
              callback=lambda rec, head: seen.append((rec["epoch"], head.W.shape)))
    assert seen == [(1, (3, 8)), (2, (3, 8)), (3, (3, 8))]


def test_float64_head_keeps_its_dtype(overlap):
    head, _ = train_sgd(Head.zeros(3, 8, dtype=torch.float64), overlap, None, SGDConfig(epochs=1))
    assert head.W.dtype == torch.float64


@pytest.mark.parametrize("kw, message", [
    (dict(schedule="linear"), r"schedule must be one of \('none', 'cosine', 'step'\), got 'linear'"),
    (dict(lr=0.0), r"lr must be > 0, got 0.0"),
    (dict(momentum=1.0), r"momentum must lie in \[0, 1\), got 1.0"),
    (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (dict(weight_decay=-1.0), r"weight_decay must be >= 0, got -1.0"),
])
def test_bad_sgd_config_is_refused(overlap, kw, message):
    with pytest.raises(QuboNNError, match=message):
        train_sgd(Head.zeros(3, 8), overlap, None, SGDConfig(**kw))


def test_incompatible_head_and_bad_pieces_are_refused(overlap):
    with pytest.raises(QuboNNError, match=r"head is 4 classes × 8 features but the feature set has 3 classes × 8"):
        train_sgd(Head.zeros(4, 8), overlap, None, SGDConfig(epochs=1))
    with pytest.raises(QuboNNError, match=r"start_epoch \+ epochs <= total_epochs, got start_epoch=3, epochs=2, "
                                          r"total_epochs=4"):
        train_sgd(Head.zeros(3, 8), overlap, None, SGDConfig(epochs=2), start_epoch=3, total_epochs=4)
    with pytest.raises(QuboNNError, match=r"l2 must be >= 0, got -0.1"):
        convex_optimum(overlap, l2=-0.1)


# --- reference head and jitter check ---------------------------------------------------------

def test_reference_head_picks_the_l2_of_least_validation_loss(overlap):
    """Independent reference: refit each grid value on the same split with convex_optimum and
    measure the held-out CE directly; the chosen l2 is their argmin and the head is the refit on all."""
    grid = (1.0, 0.1, 0.01, 1e-3)
    head, info = reference_head(overlap, l2_grid=grid, seed=5, device="cpu", patience=None)
    n_val = round(0.2 * overlap.n)
    perm = torch.randperm(overlap.n, generator=torch.Generator().manual_seed(5))
    val, fit = overlap.subset(perm[:n_val]), overlap.subset(perm[n_val:])
    ref = {l2: evaluate(convex_optimum(fit, l2=l2, device="cpu", max_iter=500)[0], val)[0] for l2 in grid}
    assert info["n_val"] == n_val and info["n_fit"] == overlap.n - n_val and not info["stopped_early"]
    for l2 in grid:
        assert info["val_loss_by_l2"][str(l2)] == pytest.approx(ref[l2], abs=1e-4)
    assert info["l2"] == min(ref, key=ref.get)
    full, _ = convex_optimum(overlap, l2=info["l2"], device="cpu", max_iter=500)
    assert torch.allclose(head.W, full.W, atol=1e-3) and torch.allclose(head.b, full.b, atol=1e-3)


def test_reference_head_scan_stops_after_patience(overlap):
    _, info = reference_head(overlap, l2_grid=(10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6), device="cpu",
                             patience=1)
    tried = list(info["val_loss_by_l2"].values())
    # patience 1: every value before the last improved on its predecessor; the scan ends at the
    # first non-improvement, or at the end of the grid
    assert all(b < a for a, b in zip(tried[:-1], tried[1:-1]))
    assert info["stopped_early"] == (tried[-1] >= tried[-2]) and (info["stopped_early"] or len(tried) == 8)
    assert info["l2"] == float(list(info["val_loss_by_l2"])[tried.index(min(tried))])


def test_jitter_is_relative_and_a_stable_fit_does_not_move(overlap):
    seen = []

    def fit(feats):
        seen.append(feats.X.clone())
        means = torch.stack([feats.X[feats.y == c].mean(0) for c in range(feats.num_classes)])
        return Head(means, -0.5 * (means * means).sum(1))        # nearest class mean: continuous in X

    out = jitter_check(overlap, overlap, fit, rel=1e-3, trials=3, seed=0)
    assert len(seen) == 4 and torch.equal(seen[0], overlap.X)
    ratio = (seen[1] / overlap.X - 1).abs()
    assert 0.5e-3 < float(ratio.std()) < 2e-3 and float(ratio.max()) < 1e-2
    assert not torch.equal(seen[1], seen[2])
    assert out["spread_points"] < 1.0 and len(out["accs"]) == 3


def test_jitter_check_sees_an_unstable_fit(overlap):
    def fit(feats):      # a head that flips with the 10th significant digit of one feature
        flip = int(float(feats.X[0, 0]) * 1e9) % 2
        W = torch.zeros(overlap.num_classes, overlap.dim)
        return Head(W, torch.eye(overlap.num_classes)[flip])

    out = jitter_check(overlap, overlap, fit, rel=1e-6, trials=8, seed=0)
    counts = torch.bincount(overlap.y, minlength=3).float() / overlap.n
    assert out["spread_points"] == pytest.approx(100 * abs(float(counts[0] - counts[1])), abs=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda d: reference_head(d, val_fraction=0.0), r"val_fraction must be a float in \(0, 1\), got 0\.0"),
    (lambda d: reference_head(d, l2_grid=(0.1, 0.0)), r"l2_grid must be a non-empty sequence of numbers > 0"),
    (lambda d: jitter_check(d, d, lambda f: None, rel=0.0), r"rel must be > 0, got 0\.0"),
    (lambda d: jitter_check(d, d, lambda f: None, trials=0), r"trials must be an integer >= 1, got 0"),
])
def test_reference_and_jitter_arguments_are_refused(overlap, call, message):
    with pytest.raises(QuboNNError, match=message):
        call(overlap)
