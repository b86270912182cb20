"""The compiled CPU kernels (samplers/jit_kernels.py) against their references: the torch annealing
kernel move for move (integer problems, where every field update is exact), NumPy coordinate
descent state for state, GPTQ of a shared Hessian against GPTQ row by row, and local optimality of
the descents checked by enumerating every single and pair move."""
import itertools

import numpy as np
import pytest
import torch

from qubo_nn.core.kernels import coordinate_descent, gptq, gptq_batch
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.samplers import jit_kernels as jk
from qubo_nn.samplers.batch_anneal import anneal_batch, chain_keys, geometric_betas, problem_arrays

pytestmark = pytest.mark.skipif(not jk.AVAILABLE, reason="numba not installed")


def integer_forms(B, m, seed):
    rng = np.random.default_rng(seed)
    M = rng.integers(-3, 4, (B, m, m))
    A = (M + M.transpose(0, 2, 1)).astype(float)
    A += np.stack([np.diag(np.abs(a).sum(1)) for a in A])      # diagonally dominant: PSD
    g = rng.integers(-20, 21, (B, m)).astype(float)
    kmin, kmax = np.full((B, m), -2), np.full((B, m), 1)
    kmin[0, 3] = kmax[0, 3] = 0                                  # a fixed variable never moves
    return A, g, kmin, kmax


def assert_same_chains(got, ref):
    """The compiled kernel's chains equal the torch kernel's: levels, best levels and accepted moves
    exactly, the tracked best energies to 1e-9 (integer problems: every field update is exact)."""
    for name in ("k", "k_best", "accepted"):
        np.testing.assert_array_equal(got[name], ref[name].numpy(), err_msg=name)
    np.testing.assert_allclose(got["e_best"], ref["e_best"].numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_anneal_equals_the_torch_kernel_move_for_move(seed):
    B, R, m, T = 4, 3, 11, 40
    A, g, kmin, kmax = integer_forms(B, m, seed)
    k0 = np.random.default_rng(seed + 9).integers(-2, 2, (B, R, m))
    k0[0, :, 3] = 0
    betas = geometric_betas(torch.tensor([[0.05, 3.0]] * B, dtype=torch.float64), T)
    keys = chain_keys(torch.arange(B) + 17 * seed, R)
    ref = anneal_batch(torch.tensor(A), torch.tensor(g), torch.tensor(kmin), torch.tensor(kmax), torch.tensor(k0),
                       betas, keys)
    got = jk.anneal_levels(A, g, kmin, kmax, k0, betas.numpy(), keys.numpy())
    assert_same_chains(got, ref)
    assert (got["accepted"] > 0).all() and (got["k"][0, :, 3] == 0).all()


def random_problems(n, m, seed, shared=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3 * m, m)) * np.linspace(0.3, 2.0, m)
    H = X.T @ X / (3 * m) + 0.01 * np.eye(m)
    out = []
    for _ in range(n):
        if not shared:
            X = rng.standard_normal((3 * m, m))
            H = X.T @ X / (3 * m) + 0.01 * np.eye(m)
        out.append(IntegerProblem(H=H, target=rng.standard_normal(m) * 0.3, scale=np.full(m, rng.uniform(0.1, 0.3)),
                                  kmin=np.full(m, -2), kmax=np.full(m, 1)))
    return out


def test_gptq_of_a_shared_hessian_equals_gptq_row_by_row():
    ps = random_problems(9, 16, 0) + random_problems(4, 16, 1, shared=False)
    for act in (True, False):
        np.testing.assert_array_equal(gptq_batch(ps, act), np.stack([gptq(p, act) for p in ps]))


def test_batched_descent_equals_numpy_descent_and_is_a_local_minimum():
    ps = random_problems(12, 9, 2, shared=False)
    arr = {k: v.numpy() for k, v in problem_arrays(ps).items()}
    K0 = np.random.default_rng(3).integers(-2, 2, (12, 9))
    K, moves = jk.coordinate_descent_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], K0)
    for n, p in enumerate(ps):
        k_ref, info = coordinate_descent(p, K0[n])
        np.testing.assert_array_equal(K[n], k_ref)
        assert moves[n].tolist() == [info["single_moves"], info["pair_moves"]]
        e = p.energy(K[n])
        # no single move and no (±1, ±1) pair move lowers the energy (enumerated independently)
        for i in range(9):
            for d in range(-3, 4):
                k = K[n].copy(); k[i] += d
                if p.kmin[i] <= k[i] <= p.kmax[i]:
                    assert p.energy(k) >= e - 1e-12
        for i, j in itertools.combinations(range(9), 2):
            for di, dj in itertools.product((-1, 1), repeat=2):
                k = K[n].copy(); k[i] += di; k[j] += dj
                if p.kmin[i] <= k[i] <= p.kmax[i] and p.kmin[j] <= k[j] <= p.kmax[j]:
                    assert p.energy(k) >= e - 1e-12


def test_descent_owner_maps_states_to_their_problems():
    ps = random_problems(3, 6, 4, shared=False)
    arr = {k: v.numpy() for k, v in problem_arrays(ps).items()}
    K0 = np.zeros((5, 6), dtype=np.int64)
    owner = np.array([2, 0, 2, 1, 0])
    K, _ = jk.coordinate_descent_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], K0, owner)
    for n, o in enumerate(owner):
        np.testing.assert_array_equal(K[n], coordinate_descent(ps[o], K0[n])[0])


def test_solve_levels_batch_compiled_equals_torch_path(monkeypatch):
    from qubo_nn.samplers import level_solvers

    ps = random_problems(6, 10, 5)
    kw = dict(k_start="cd", num_reads=3, num_sweeps=40, rounds=2)
    fast = level_solvers.solve_levels_batch(ps, list(range(6)), **kw)
    monkeypatch.setattr(level_solvers, "_use_jit", lambda device: False)
    slow = level_solvers.solve_levels_batch(ps, list(range(6)), **kw)
    assert {i["kernel"] for _, i in fast} == {"numba"} and {i["kernel"] for _, i in slow} == {"torch"}
    for (kf, inf_), (ks, ins) in zip(fast, slow):
        np.testing.assert_array_equal(kf, ks)
        assert inf_["stage"] == ins["stage"]


def test_restarts_use_the_budget_and_never_lose():
    from qubo_nn.samplers.level_solvers import solve_levels_batch

    ps = random_problems(5, 24, 6)
    once = solve_levels_batch(ps, list(range(5)), k_start="cd", num_reads=2, num_sweeps=20, rounds=1)
    more = solve_levels_batch(ps, list(range(5)), k_start="cd", num_reads=2, num_sweeps=20, restarts=True, rounds=10**6,
                              time_budget_s=1.5)
    assert min(i["rounds_run"] for _, i in more) > 1
    for (k1, _), (k2, _), p in zip(once, more, ps):
        assert p.energy(k2) <= p.energy(k1) + 1e-12      # round 0 is the same round; later rounds only keep gains


@pytest.mark.parametrize("seed", [0, 1])
def test_tempering_equals_the_torch_kernel_move_for_move(seed):
    from qubo_nn.samplers.batch_anneal import temper_batch

    B, R, m, T = 3, 5, 10, 30
    A, g, kmin, kmax = integer_forms(B, m, seed)
    k0 = np.random.default_rng(seed + 3).integers(-2, 2, (B, R, m))
    k0[0, :, 3] = 0
    ladder = geometric_betas(torch.tensor([[0.02, 1.0]] * B, dtype=torch.float64), R)
    keys = chain_keys(torch.arange(B) + 5 * seed, R)
    ref = temper_batch(torch.tensor(A), torch.tensor(g), torch.tensor(kmin), torch.tensor(kmax), torch.tensor(k0),
                       ladder, T, keys)
    got = jk.temper_levels(A, g, kmin, kmax, k0, ladder.numpy(), T, keys.numpy())
    assert_same_chains(got, ref)


def test_tempering_finds_small_optima_and_tracks_its_best():
    """Every slot's tracked e_best is the energy of its best state, and the ladder finds the brute-force
    optimum of small problems (4⁷ states enumerated)."""
    from qubo_nn.samplers.batch_anneal import temper_batch

    ps = random_problems(3, 7, 8, shared=False)
    arr = problem_arrays(ps)
    R = 6
    k0 = torch.zeros(3, R, 7, dtype=torch.int64)
    ladder = geometric_betas(torch.tensor([[0.5, 200.0]] * 3, dtype=torch.float64), R)
    out = jk.temper_levels(arr["A"].numpy(), arr["g"].numpy(), arr["kmin"].numpy(), arr["kmax"].numpy(), k0.numpy(),
                           ladder.numpy(), 150, chain_keys(torch.arange(3), R).numpy())
    for b, p in enumerate(ps):
        grid = np.array(list(itertools.product(range(-2, 2), repeat=7)))
        assert p.energy(out["k_best"][b]).min() == pytest.approx(p.energy(grid).min(), rel=1e-12)
        np.testing.assert_allclose(p.energy(out["k_best"][b]) - p.energy(np.zeros(7)), out["e_best"][b], atol=1e-9)


def test_tempering_schedule_in_the_pipeline_never_loses_and_matches_torch(monkeypatch):
    from qubo_nn.samplers import level_solvers

    ps = random_problems(5, 12, 9)
    kw = dict(k_start="cd", num_reads=4, num_sweeps=30, rounds=2, schedule="tempering")
    fast = level_solvers.solve_levels_batch(ps, list(range(5)), **kw)
    monkeypatch.setattr(level_solvers, "_use_jit", lambda device: False)
    slow = level_solvers.solve_levels_batch(ps, list(range(5)), **kw)
    start = level_solvers.classical_starts(ps, "cd")
    for (kf, _), (ks, _), (k0, _), p in zip(fast, slow, start, ps):
        np.testing.assert_array_equal(kf, ks)
        assert p.energy(kf) <= p.energy(k0) + 1e-12
    with pytest.raises(Exception, match="schedule"):
        level_solvers.solve_levels_batch(ps[:1], [0], schedule="bogus")
