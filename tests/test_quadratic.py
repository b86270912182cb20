"""Gradient/Hessian blocks of the head's loss against torch.autograd on tiny heads (float64).

Reference: L(θ) = mean_n CE(W f_n + b, y_n) + (l2/2)‖W‖², θ = [W | b] flattened row-major,
differentiated twice by torch.autograd.functional.hessian. Tolerance 1e-10 absolute (float64).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.core.head import Head, evaluate
from qubo_nn.curvature.head_stats import HeadStats, local_model, select_blocks
from qubo_nn.core.layout import flat_params, unflatten

C, D, N = 3, 5, 37  # N = 37: no chunk size used below divides it
TOL = 1e-10


def tiny(seed: int = 0, n: int = N, c: int = C, d: int = D) -> tuple[Head, FeatureSet]:
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64) + 0.3)
    y = torch.randint(0, c, (n,), generator=g)
    head = Head(0.5 * torch.randn(c, d, generator=g, dtype=torch.float64),
                0.1 * torch.randn(c, generator=g, dtype=torch.float64))
    return head, FeatureSet(X, y, c)


def loss_fn(X: torch.Tensor, y: torch.Tensor, c: int, d: int, l2: float):
    def f(theta: torch.Tensor) -> torch.Tensor:
        M = theta.reshape(c, d + 1)
        W, b = M[:, :d], M[:, d]
        return F.cross_entropy(X @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
    return f


def reference(head: Head, feats: FeatureSet, l2: float = 0.0, rows: torch.Tensor | None = None):
    """(loss, gradient, Hessian) over all C·(D+1) weights by autograd; Hessian on ``rows`` only."""
    theta = flat_params(head).detach().clone()
    f_all = loss_fn(feats.X, feats.y, head.num_classes, head.dim, l2)
    th = theta.clone().requires_grad_(True)
    L = f_all(th)
    (g,) = torch.autograd.grad(L, th)
    X, y = (feats.X, feats.y) if rows is None else (feats.X[rows], feats.y[rows])
    H = torch.autograd.functional.hessian(loss_fn(X, y, head.num_classes, head.dim, l2), theta, vectorize=True)
    return float(L.detach()), g, H


def test_flat_params_layout_and_unflatten():
    head, _ = tiny()
    theta = flat_params(head)
    assert theta.shape == (C * (D + 1),)
    assert theta[1 * (D + 1) + 2] == head.W[1, 2] and theta[2 * (D + 1) + D] == head.b[2]
    back = unflatten(theta, C, D)
    assert torch.equal(back.W, head.W) and torch.equal(back.b, head.b)
    with pytest.raises(QuboNNError, match=r"θ must have C·\(D\+1\) = 18 entries, got 17"):
        unflatten(theta[:-1], C, D)


@pytest.mark.parametrize("l2", [0.0, 0.03])
@pytest.mark.parametrize("chunk", [1, 7, 10, 4096])
def test_blocks_match_autograd(l2, chunk):
    head, feats = tiny(1)
    L, g, H = reference(head, feats, l2)
    stats = HeadStats(head, feats, l2=l2, device="cpu", dtype="float64", chunk=chunk)
    assert abs(stats.loss - L) < TOL
    assert torch.allclose(stats.grad, g, atol=TOL, rtol=0)
    assert torch.allclose(stats.hessian_diag(), H.diagonal(), atol=TOL, rtol=0)
    blocks = (select_blocks("rows", C, D)                                  # single class, bias included
              + select_blocks("rows", C, D, per_block=2)                   # cross-class
              + select_blocks("rows", C, D, per_block=C)                   # the whole Hessian
              + select_blocks("columns", C, D)                             # one feature across classes
              + select_blocks("columns", C, D, per_block=2)
              + select_blocks("random", C, D, size=4, seed=3)              # scattered weights
              + [torch.tensor([D, 2 * D + 1, 3 * D + 2]),                  # the three biases
                 torch.tensor([0, 2, D]),                                  # part of one row with its bias
                 torch.tensor([7])])                                       # a single weight
    for idx in blocks:
        model = stats.block(idx)
        k = idx.sort().values
        assert torch.equal(model.idx, k)
        assert model.L0 == stats.loss
        assert torch.allclose(model.g, g[k], atol=TOL, rtol=0)
        assert torch.allclose(model.H, H[k][:, k], atol=TOL, rtol=0), f"block {k.tolist()}"
        assert torch.allclose(model.theta0, flat_params(head)[k], atol=0, rtol=0)
        assert torch.equal(model.H, model.H.T)


@pytest.mark.parametrize("chunk", [5, 64])
def test_subsample_hessian_matches_autograd_on_that_subsample(chunk):
    head, feats = tiny(2, n=41)
    stats = HeadStats(head, feats, l2=0.01, device="cpu", dtype="float64", chunk=chunk, subsample=13, seed=4)
    rows = stats.hess_rows
    assert rows.numel() == 13 and torch.equal(rows, rows.sort().values)
    L, g, H_sub = reference(head, feats, 0.01, rows=rows)
    # the gradient and loss use every sample; only the Hessian is subsampled
    assert abs(stats.loss - L) < TOL
    assert torch.allclose(stats.grad, g, atol=TOL, rtol=0)
    assert torch.allclose(stats.hessian_diag(), H_sub.diagonal(), atol=TOL, rtol=0)
    for idx in select_blocks("rows", C, D) + select_blocks("rows", C, D, per_block=3) + select_blocks("columns", C, D):
        model = stats.block(idx)
        assert torch.allclose(model.H, H_sub[idx][:, idx], atol=TOL, rtol=0)
        assert model.info["hessian_samples"] == 13
    # same seed, same subsample
    again = HeadStats(head, feats, device="cpu", dtype="float64", subsample=13, seed=4)
    assert torch.equal(again.hess_rows, rows)


def test_full_row_blocks_of_a_wider_head_match_the_general_path():
    """Rows of D+1 ≥ 256 weights take the panelled Gram path; check it against autograd's row block."""
    head, feats = tiny(3, n=30, c=2, d=260)
    stats = HeadStats(head, feats, device="cpu", dtype="float64", chunk=11)
    theta = flat_params(head)
    idx = torch.arange(261, 522)
    f = loss_fn(feats.X, feats.y, 2, 260, 0.0)

    def row_loss(row: torch.Tensor) -> torch.Tensor:
        return f(torch.cat([theta[:261], row]))

    H = torch.autograd.functional.hessian(row_loss, theta[idx], vectorize=True)
    assert torch.allclose(stats.block(idx).H, H, atol=TOL, rtol=0)
    part = idx[:-1]   # without its bias: the general single-class path, panelled as well
    assert torch.allclose(stats.block(part).H, H[:-1, :-1], atol=TOL, rtol=0)


def test_local_model_predict_and_taylor_error_is_cubic():
    """L(θ0 + tΔ) − model(tΔ) = O(t³): halving t divides the error by ≈ 8 (tolerance: 6.5..9.5)."""
    head, feats = tiny(4)
    idx = torch.arange(C * (D + 1))
    model = local_model(head, feats, idx, l2=0.02, device="cpu", dtype="float64")
    v = torch.randn(idx.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v /= v.norm()
    theta0 = flat_params(head)
    errs = []
    for t in [0.4, 0.2, 0.1, 0.05, 0.025]:
        true, _ = evaluate(unflatten(theta0 + t * v, C, D), feats, l2=0.02)
        errs.append(abs(true - float(model.predict(t * v))))
    ratios = [a / b for a, b in zip(errs[:-1], errs[1:])]
    assert all(6.5 < r < 9.5 for r in ratios), ratios
    # predict's damping adds μ/2 ‖Δ‖²; batched steps give one value each
    d = torch.stack([0.1 * v, -0.1 * v])
    assert torch.allclose(model.predict(d, damping=2.0) - model.predict(d), torch.full((2,), 0.01, dtype=torch.float64))


def test_update_moves_the_head_incrementally():
    head, feats = tiny(5)
    stats = HeadStats(head, feats, l2=0.01, device="cpu", dtype="float64", chunk=8)
    idx = torch.tensor([0, D, D + 3, 2 * (D + 1) + D])   # weights and biases of several classes
    new = torch.tensor([0.3, -0.2, 1.1, 0.05], dtype=torch.float64)
    stats.update(idx, new)
    theta = flat_params(head).clone()
    theta[idx] = new
    fresh = HeadStats(unflatten(theta, C, D), feats, l2=0.01, device="cpu", dtype="float64", chunk=8)
    assert torch.allclose(stats.logits, fresh.logits, atol=1e-12, rtol=0)
    assert abs(stats.loss - fresh.loss) < TOL
    assert torch.allclose(stats.grad, fresh.grad, atol=TOL, rtol=0)
    assert torch.allclose(stats.block(torch.arange(D + 1)).H, fresh.block(torch.arange(D + 1)).H, atol=TOL, rtol=0)
    assert torch.equal(stats.head().W, fresh.head().W) and torch.equal(stats.head().b, fresh.head().b)


def test_select_blocks_partitions_and_topk():
    for kind, kw in [("rows", {}), ("rows", {"per_block": 2}), ("columns", {"per_block": 4}),
                     ("random", {"size": 5})]:
        blocks = select_blocks(kind, C, D, **kw)
        allidx = torch.cat(blocks).sort().values
        assert torch.equal(allidx, torch.arange(C * (D + 1))), kind
        assert all(torch.equal(b, b.sort().values) for b in blocks)
    assert len(select_blocks("rows", C, D, per_block=2)) == 2
    assert torch.equal(select_blocks("columns", C, D)[D], torch.tensor([D, 2 * D + 1, 3 * D + 2]))
    assert [b.tolist() for b in select_blocks("random", C, D, size=5, seed=1)] == \
           [b.tolist() for b in select_blocks("random", C, D, size=5, seed=1)]
    g = torch.zeros(C * (D + 1), dtype=torch.float64)
    g[[3, 9, 14, 1]] = torch.tensor([-5.0, 4.0, 3.0, 2.0], dtype=torch.float64)
    top = select_blocks("topk", C, D, size=2, num_blocks=2, grad=g)
    assert [b.tolist() for b in top] == [[3, 9], [1, 14]]
    diag = torch.ones_like(g)
    diag[3] = 100.0   # obd = g²/H_ii: index 3 drops to 0.25
    assert select_blocks("topk", C, D, size=3, grad=g, diag=diag, saliency="obd")[0].tolist() == [1, 9, 14]


def test_bad_input_is_refused_clearly():
    head, feats = tiny()
    stats = HeadStats(head, feats, device="cpu", dtype="float64")
    with pytest.raises(QuboNNError, match="block is empty"):
        stats.block(torch.tensor([], dtype=torch.long))
    with pytest.raises(QuboNNError, match=r"block indices must lie in \[0, C·\(D\+1\) = 18\), got \[0, 18\]"):
        stats.block(torch.tensor([0, 18]))
    with pytest.raises(QuboNNError, match="block indices must be unique"):
        stats.block(torch.tensor([1, 1]))
    with pytest.raises(QuboNNError, match="head is 3 classes × 4 features but the feature set has 3 classes × 5"):
        HeadStats(Head(torch.zeros(3, 4), torch.zeros(3)), feats)
    with pytest.raises(QuboNNError, match="head weights contain NaN/Inf"):
        Head(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1))
    with pytest.raises(QuboNNError, match="head weights contain NaN/Inf"):
        Head(torch.zeros(2, 2), torch.tensor([0.0, float("inf")]))
    X = feats.X.clone()
    X[3, 1] = float("inf")
    with pytest.raises(QuboNNError, match="features contain 1 NaN/Inf values"):
        FeatureSet(X, feats.y, C)
    with pytest.raises(QuboNNError, match=r"labels must lie in \[0, 3\), got range \[0, 3\]"):
        FeatureSet(feats.X, torch.cat([feats.y[:-1], torch.tensor([3])]), C)
    with pytest.raises(QuboNNError, match="subsample must be in"):
        HeadStats(head, feats, subsample=N + 1)
    with pytest.raises(QuboNNError, match="l2 must be >= 0, got -1"):
        HeadStats(head, feats, l2=-1)
    with pytest.raises(QuboNNError, match="chunk must be >= 1, got 0"):
        HeadStats(head, feats, chunk=0)
    with pytest.raises(QuboNNError, match="block kind must be one of"):
        select_blocks("diagonal", C, D)
    with pytest.raises(QuboNNError, match="block kind 'random' needs size >= 1"):
        select_blocks("random", C, D)
    with pytest.raises(QuboNNError, match="top-k blocks need the gradient"):
        select_blocks("topk", C, D, size=2)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_blocks_on_every_device_match_autograd(device):
    head, feats = tiny(6)
    _, g, H = reference(head, feats, 0.02)
    stats = HeadStats(head, feats, l2=0.02, device=device, dtype="float64", chunk=9, subsample=None)
    for idx in [torch.arange(D + 1), torch.arange(2 * (D + 1)), torch.tensor([1, 8, 15])]:
        model = stats.block(idx)
        assert model.H.device.type == device
        assert torch.allclose(model.H.cpu(), H[idx][:, idx], atol=TOL, rtol=0)
        assert torch.allclose(model.g.cpu(), g[idx], atol=TOL, rtol=0)
    sub = HeadStats(head, feats, device=device, dtype="float64", chunk=4, subsample=20, seed=1)
    _, _, Hs = reference(head, feats, 0.0, rows=sub.hess_rows.cpu())
    assert torch.allclose(sub.block(torch.arange(D + 1)).H.cpu(), Hs[:D + 1, :D + 1], atol=TOL, rtol=0)
