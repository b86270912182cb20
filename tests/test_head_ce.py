"""The head's curvature source (curvature/head_ce.py) against autograd: row c's integer problem is
the second-order Taylor model of the training cross-entropy in W[c], exactly (float64, 1e-10)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qubo_nn.curvature.head_ce import HeadCE
from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.core.head import Head


def _data(C=4, D=5, N=40):
    g = torch.Generator().manual_seed(7)
    X = torch.rand(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return Head(torch.randn(C, D, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)), \
        FeatureSet(X, y, C)


def _ce_of_row(head, feats, c):
    def f(wc):
        W = head.W.clone()
        W[c] = wc
        return torch.nn.functional.cross_entropy(feats.X @ W.T + head.b, feats.y)
    return f


@pytest.mark.parametrize("c", [0, 3])
def test_row_problem_is_the_taylor_model_of_the_cross_entropy(c):
    head, feats = _data()
    src = HeadCE(head, feats, dtype="float64", device="cpu")
    f = _ce_of_row(head, feats, c)
    w = head.W[c].clone()
    H = torch.autograd.functional.hessian(f, w).numpy()
    g = torch.autograd.functional.jacobian(f, w).numpy()
    L0 = float(f(w))
    assert src.loss == pytest.approx(L0, rel=1e-12)
    p = src.row_problem(c, scale=0.3, kmin=-2, kmax=1, damping_rel=0.0)
    np.testing.assert_allclose(p.H, H, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(p.target, w.numpy(), rtol=0, atol=0)
    # with the gradient: E(k) = L0 + gᵀΔ + ½ΔᵀHΔ (Δ = s·k − w), for any levels
    mu = 0.05
    pg = src.row_problem(c, scale=0.3, kmin=-2, kmax=1, damping_rel=mu, use_grad=True)
    Ht = H + mu * np.mean(np.diag(H)) * np.eye(5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        k = rng.integers(-2, 2, size=5)
        d = 0.3 * k - w.numpy()
        assert pg.energy(k) == pytest.approx(L0 + g @ d + 0.5 * d @ Ht @ d, rel=1e-10)


def test_row_out_of_range_is_refused():
    head, feats = _data()
    with pytest.raises(QuboNNError, match=r"row must be in \[0, 4\), got 4"):
        HeadCE(head, feats, dtype="float64", device="cpu").row_problem(4, 0.3, -2, 1, 0.0)
