"""benchmarks/bench_binary_grid.py: the symmetric 1-bit grid problem w = s·(k + ½), k ∈ {−1, 0}.

References: the energy written out in weight space, ½(w − t)ᵀH(w − t) + const, and the exact minimum
by enumerating all 2^m level vectors of tiny rows (m ≤ 10)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest



@pytest.fixture(scope="module")
def bg(load_script):
    return load_script("benchmarks/bench_binary_grid.py")


def tiny_row(m: int, seed: int):
    """A least-squares head row: H = XᵀX/n + μI (μ = 0.01·mean diag, as quantize), t the LS fit."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4 * m, m)) @ rng.normal(size=(m, m))      # correlated features
    y = X @ rng.normal(scale=0.5, size=m) + rng.normal(scale=0.1, size=4 * m)
    H = X.T @ X / (4 * m)
    H += 0.01 * float(H.diagonal().mean()) * np.eye(m)
    t = np.linalg.lstsq(X, y, rcond=None)[0]
    return H, t


def all_levels(m: int) -> np.ndarray:
    return np.array(list(itertools.product((-1, 0), repeat=m)), dtype=np.int64)


@pytest.mark.parametrize("m,seed", [(6, 0), (9, 1), (10, 2)])
def test_energy_is_the_weight_space_quadratic_on_every_level_vector(bg, m, seed):
    H, t = tiny_row(m, seed)
    s = bg.symmetric_scale(t)
    p = bg.symmetric_problem(H, t, s, const=0.75)
    K = all_levels(m)
    W = s * (K + 0.5)
    # every weight is ±s/2: the symmetric grid
    assert set(np.unique(W).round(12)) == {round(-s / 2, 12), round(s / 2, 12)}
    R = W - t
    ref = 0.75 + 0.5 * np.einsum("si,ij,sj->s", R, H, R)
    np.testing.assert_allclose(p.energy(K), ref, rtol=1e-12, atol=1e-12)
    # the full 1-bit BQM (one variable per weight) has the same energy on the bits x = k + 1
    bqm = bg.full_bqm(p)
    X = (K - p.kmin).astype(np.int8)
    np.testing.assert_allclose(bqm.energies((X, list(range(m)))), ref, rtol=1e-10, atol=1e-10)


def test_symmetric_scale_is_the_mse_minimiser(bg):
    t = np.random.default_rng(3).normal(size=200)
    s = bg.symmetric_scale(t)
    err = lambda sc: float(((t - sc / 2 * np.sign(t)) ** 2).sum())  # noqa: E731
    grid = np.linspace(0.2 * s, 3 * s, 2001)
    assert err(s) <= min(err(g) for g in grid) + 1e-12
    assert bg.symmetric_scale(np.zeros(4)) == 1.0


@pytest.mark.parametrize("m,seed", [(8, 0), (10, 1), (10, 4)])
def test_bound_below_brute_force_below_every_method(bg, m, seed):
    H, t = tiny_row(m, seed)
    p = bg.symmetric_problem(H, t, bg.symmetric_scale(t), const=0.1)
    K = all_levels(m)
    E = p.energy(K)
    e_min = float(E.min())
    small = {"params": {"num_reads": 2, "num_sweeps": 50}, "rounds": 2, "refine_span": None}
    r = bg.run_methods(p, seed=seed, pipeline=small, hot=small, long=None, lns_factor=2.0, neal_sweeps=50)
    assert set(r["energy"]) == set(bg.METHODS)
    tol = 1e-12 * max(1.0, abs(e_min))
    for name, e in r["energy"].items():
        assert e >= e_min - tol, name
        assert np.isclose(e, E).any(), name              # a real level vector's energy
    assert r["bound"]["lower_bound"] <= e_min + tol
    # the exact sub-solve on the whole row is the brute-force minimum
    k = bg.BS.exact_sub(p, np.zeros(m, dtype=np.int64))
    assert p.energy(k) == pytest.approx(e_min, rel=1e-12, abs=1e-12)
    # the pipelines keep their classical start: never above cd
    assert r["energy"]["pipeline"] <= r["energy"]["cd"] + tol
    assert r["energy"]["pipeline-hot"] <= r["energy"]["cd"] + tol


def test_score_counts_the_target_against_cd_and_time(bg):
    e = {m: 5.0 for m in bg.METHODS}
    e.update(rtn=10.0, cd=4.0, pipeline=3.0, lns=3.0)
    t = {m: 1.0 for m in bg.METHODS}
    t.update(pipeline=10.0, lns=11.0)
    r = {"energy": e, "time_s": t, "peer_time_s": 1.0, "energy_long": 2.0}
    bg.score(r)
    assert r["best_known_by"] == "long-hot-pipeline" and r["energy_best_known"] == 2.0
    assert r["fraction"]["pipeline"] == pytest.approx(7 / 8) and r["fraction"]["cd"] == pytest.approx(6 / 8)
    assert r["strictly_below_cd"]["pipeline"] and r["target_met"]["pipeline"]      # 10× counts
    assert r["strictly_below_cd"]["lns"] and not r["target_met"]["lns"]            # 11× does not
    assert not r["strictly_below_cd"]["neal"]                                      # 5 > 4
