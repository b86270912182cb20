"""Channel selectors against independent references: naive greedy, brute force, sklearn's Lasso."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.prune import (PruneProblem, brute_force, keep_count, repair, select_greedy, select_l1,
    select_lasso, select_qubo)

pytestmark = pytest.mark.usefixtures("one_thread")   # small kernels: one thread on a shared CPU


def _problem(n=12, d=60, seed=0, target_noise=0.0):
    """E(s) = ‖Z s − y‖² from explicit per-channel outputs Z (d × n): G = ZᵀZ, b = Zᵀy, yy = ‖y‖²."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((d, n)) * rng.uniform(0.2, 2.0, size=n) + 0.5 * rng.standard_normal((d, 1))
    y = Z.sum(1) + target_noise * rng.standard_normal(d)
    return PruneProblem(Z.T @ Z, Z.T @ y, float(y @ y)), Z, y


def test_greedy_is_backward_elimination_on_the_true_error():
    prob, Z, y = _problem(seed=1)
    k = 4
    keep = list(range(12))
    while len(keep) > k:          # naive ThiNet: try removing each channel, recompute the error from Z
        errs = [np.sum((Z[:, [j for j in keep if j != i]].sum(1) - y) ** 2) for i in keep]
        keep.remove(keep[int(np.argmin(errs))])
    mask, info = select_greedy(prob, k)
    assert set(np.nonzero(mask)[0]) == set(keep) and info["method"] == "greedy"


def test_l1_keeps_the_largest_scores():
    mask, _ = select_l1(np.array([0.3, 2.0, 0.1, 1.5, 0.7]), 2)
    assert mask.tolist() == [False, True, False, True, False]


def test_lasso_selects_the_support_sklearn_lasso_finds_on_the_explicit_problem():
    """Gram-form LASSO vs scikit-learn's Lasso on the explicit (Z, y): at an alpha where the explicit
    solution has exactly k nonzeros, our mask is that support."""
    from sklearn.linear_model import Lasso

    prob, Z, y = _problem(n=10, d=80, seed=2, target_noise=0.5)
    for k in (3, 6):
        mask, info = select_lasso(prob, k)
        assert mask.sum() == k
        # the explicit problem at our alpha (sklearn's objective divides the squared error by 2·rows;
        # our reduced problem has 10 rows, the explicit one 80: the same minimizer at alpha·10/80)
        ref = Lasso(alpha=info["alpha"] * 10 / 80, fit_intercept=False, max_iter=100000, tol=1e-12).fit(Z, y)
        support = set(np.nonzero(np.abs(ref.coef_) > 1e-9)[0])
        assert support <= set(np.nonzero(mask)[0])
        assert len(support) == info["support_at_alpha"]


def test_repair_reaches_k_and_keeps_feasible_masks():
    prob, _, _ = _problem(seed=3)
    for s0 in (np.ones(12, bool), np.zeros(12, bool)):
        s = repair(prob, s0, 5)
        assert s.sum() == 5
    feas = np.zeros(12, bool)
    feas[[1, 4, 7]] = True
    assert np.array_equal(repair(prob, feas, 3), feas)


@pytest.mark.parametrize("sampler,mode", [("tabu", "penalty"), ("tabu", "cqm")])
def test_qubo_selection_finds_the_brute_force_optimum_on_small_layers(sampler, mode):
    for seed, (n, k) in enumerate([(12, 3), (14, 7), (16, 12)]):
        prob, _, _ = _problem(n=n, seed=10 + seed, target_noise=1.0)
        best_mask, best_e = brute_force(prob, k)
        g, _ = select_greedy(prob, k)
        params = {"num_reads": 4, "timeout": 200} if sampler == "tabu" else {"num_reads": 8, "num_sweeps": 2000}
        mask, info = select_qubo(prob, k, sampler=sampler, mode=mode, initial=[g], seed=seed, params=params)
        assert mask.sum() == k
        assert prob.error(mask) == pytest.approx(best_e, rel=1e-12)
        assert prob.error(mask) <= prob.error(g) * (1 + 1e-12)


def test_brute_force_enumerates_all_masks():
    prob, Z, y = _problem(n=9, seed=4)
    errs = {c: np.sum((Z[:, list(c)].sum(1) - y) ** 2) for c in itertools.combinations(range(9), 4)}
    mask, e = brute_force(prob, 4)
    assert e == pytest.approx(min(errs.values()), rel=1e-10)
    assert set(np.nonzero(mask)[0]) == set(min(errs, key=errs.get))


def test_keep_count_and_errors():
    assert keep_count(64, 0.25) == 16 and keep_count(3, 0.1) == 1
    with pytest.raises(QuboNNError, match=r"expected a keep fraction in \(0, 1\], got 0"):
        keep_count(10, 0)
    prob, _, _ = _problem(n=5)
    with pytest.raises(QuboNNError, match=r"expected the number of kept channels k in \[1, 5\], got 6"):
        select_greedy(prob, 6)
