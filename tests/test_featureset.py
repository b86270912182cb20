"""The realistic synthetic feature set: shape, post-ReLU form, determinism, and that it is NOT separable."""
from __future__ import annotations

import pytest
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.data.features import FeatureConfig, get_features
from qubo_nn.data.featureset import RealisticSpec, realistic_features, separable_features, synthetic_by_name
from qubo_nn.train.sgd import convex_optimum

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shape_post_relu_grid_and_balanced_labels():
    train, test = realistic_features(n_train=600, n_test=120, dim=40, num_classes=6, seed=0)
    assert train.X.shape == (600, 40) and test.X.shape == (120, 40) and train.X.dtype == torch.float32
    assert (train.X >= 0).all() and (test.X >= 0).all()
    zeros = float((train.X == 0).float().mean())
    assert 0.2 < zeros < 0.8                                  # sparse like post-ReLU, not all zero
    grid = RealisticSpec().grid
    assert torch.equal(train.X * grid, (train.X * grid).round())   # on the 1/grid lattice (machine-independent)
    assert torch.equal(torch.bincount(train.y, minlength=6), torch.full((6,), 100))
    assert train.meta["dataset"] == "synthetic-features" and train.meta["split"] == "train"


def test_seeded_and_test_split_independent_of_train_size():
    a_tr, a_te = realistic_features(n_train=200, n_test=50, dim=16, num_classes=4, seed=3)
    b_tr, b_te = realistic_features(n_train=200, n_test=50, dim=16, num_classes=4, seed=3)
    c_tr, c_te = realistic_features(n_train=400, n_test=50, dim=16, num_classes=4, seed=3)
    d_tr, _ = realistic_features(n_train=200, n_test=50, dim=16, num_classes=4, seed=4)
    assert torch.equal(a_tr.X, b_tr.X) and torch.equal(a_te.y, b_te.y)
    assert torch.equal(a_te.X, c_te.X)              # the test set has its own stream
    assert not torch.equal(a_tr.X, d_tr.X)


def test_realistic_is_not_separable_where_the_old_set_is():
    """Same size, same L2, same optimizer: the old generator's classes are (nearly) separable
    (train CE ~0.2 over seeds 0-3), the realistic one's overlap (train CE ~1.0): margin both ways."""
    real, _ = realistic_features(n_train=600, n_test=10, dim=32, num_classes=6, seed=1)
    sep, _ = separable_features(n=600, n_test=10, dim=32, num_classes=6, seed=1)
    _, ri = convex_optimum(real, l2=1e-3, device="cpu", max_iter=200)
    _, si = convex_optimum(sep, l2=1e-3, device="cpu", max_iter=200)
    assert ri["loss"] > 0.6 and ri["acc"] < 0.8
    assert si["loss"] < 0.35 and si["acc"] > 0.88


def test_names_load_the_two_generators():
    res = get_features(FeatureConfig(dataset="synthetic-separable", n_train=50, n_test=20, seed=1))
    ref, _ = separable_features(n=50, dim=512, num_classes=100, seed=1, n_test=20)
    assert torch.equal(res.train.X, ref.X) and res.train.meta["dataset"] == "synthetic-separable"
    res = get_features(FeatureConfig(dataset="synthetic-features", n_train=50, n_test=20, seed=1))
    ref, _ = realistic_features(n_train=50, n_test=20, dim=512, num_classes=100, seed=1)
    assert torch.equal(res.train.X, ref.X)


@pytest.mark.parametrize("call, message", [
    (lambda: realistic_features(n_train=0), r"n_train must be a positive integer, got 0"),
    (lambda: realistic_features(num_classes=1), r"num_classes must be an integer >= 2, got 1"),
    (lambda: synthetic_by_name("cifar", 1, 1, 2, 2, 0),
     r"synthetic dataset must be one of \('synthetic-features', 'synthetic-separable'\), got 'cifar'"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(QuboNNError, match=message):
        call()
