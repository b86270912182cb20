"""The batched level-space annealer (issue 20): brute force on small problems (levels and spins),
incremental fields equal to a full recomputation, seeded results independent of batch size and
order, the dimod sampler contract, and the pipeline stage it became."""
import itertools
import unittest

import dimod
import dimod.testing
import numpy as np
import pytest
import torch

from qubo_nn.core.kernels import coordinate_descent, gptq
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.errors import QuboNNError
from qubo_nn.samplers import sample
from qubo_nn.samplers.batch_anneal import (BatchAnnealSampler, anneal_batch, beta_range_levels, chain_keys,
                                           geometric_betas, problem_arrays, uniforms)
from qubo_nn.samplers.level_solvers import solve_levels, solve_levels_batch


def problem(m, seed, lo=-2, hi=1, scale=0.4):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, m + 3))
    H = A @ A.T / m + 0.05 * np.eye(m)
    return IntegerProblem(H=H, scale=np.full(m, scale), target=rng.standard_normal(m), kmin=np.full(m, lo),
                          kmax=np.full(m, hi), const=0.1 * seed)


def brute(p):
    grid = np.array(list(itertools.product(*[range(a, b + 1) for a, b in zip(p.kmin, p.kmax)])))
    return float(p.energy(grid).min())


def test_general_form_equals_problem_energy():
    ps = [problem(7, s) for s in range(3)]
    arr = problem_arrays(ps)
    K = np.random.default_rng(0).integers(-2, 2, (3, 7))
    for b, p in enumerate(ps):
        k = torch.as_tensor(K[b], dtype=torch.float64)
        e = arr["c"][b] + arr["g"][b] @ k + 0.5 * k @ arr["A"][b] @ k
        assert float(e) == pytest.approx(p.energy(K[b]), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("m,seed", [(5, 0), (7, 1), (8, 2)])
def test_levels_reach_the_brute_force_optimum(m, seed):
    p = problem(m, seed)
    arr = problem_arrays([p])
    k0 = torch.zeros(1, 4, m, dtype=torch.int64)
    out = anneal_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], k0,
                       geometric_betas(beta_range_levels(arr["A"], 1000.0), 150), chain_keys(torch.tensor([seed]), 4))
    E = p.energy(out["k_best"][0].numpy())
    assert E.min() == pytest.approx(brute(p), rel=1e-12, abs=1e-12)
    # e_best is the energy of k_best relative to the start, tracked incrementally
    np.testing.assert_allclose(out["e_best"][0].numpy() + p.energy(np.zeros(m)), E, rtol=1e-10, atol=1e-10)


def test_incremental_fields_equal_a_full_recomputation():
    ps = [problem(12, s) for s in range(5)]
    arr = problem_arrays(ps)
    k0 = torch.zeros(5, 3, 12, dtype=torch.int64)
    out = anneal_batch(arr["A"], arr["g"], arr["kmin"], arr["kmax"], k0,
                       geometric_betas(beta_range_levels(arr["A"], 1e4), 100), chain_keys(torch.arange(5), 3))
    assert int(out["accepted"].min()) > 250          # many moves were made
    full = arr["g"][:, None, :] + torch.einsum("bij,brj->bri", arr["A"], out["k"].double())
    assert float((out["field"] - full).abs().max()) < 1e-12
    assert bool(((out["k"] >= -2) & (out["k"] <= 1)).all())


def test_spins_reach_the_brute_force_optimum():
    for seed in range(3):
        bqm = dimod.generators.gnp_random_bqm(10, 0.6, "SPIN", random_state=seed)
        ss = sample(bqm, "batch-anneal", seed=seed, num_reads=4, num_sweeps=100)
        assert ss.first.energy == pytest.approx(dimod.ExactSolver().sample(bqm).first.energy, abs=1e-9)
        dimod.testing.assert_sampleset_energies(ss, bqm)


def test_uniforms_are_uniform_and_counter_based():
    u = uniforms(chain_keys(torch.arange(4), 2)[:, :, None], torch.arange(5000))
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    # a chain's stream is a function of its own key only
    v = uniforms(chain_keys(torch.tensor([2, 0]), 2)[:, :, None], torch.arange(5000))
    assert torch.equal(u[2], v[0]) and torch.equal(u[0], v[1])


def test_seeded_levels_do_not_depend_on_batch_size_or_order():
    ps = [problem(10, s, scale=0.25) for s in range(64)]
    seeds = [1000 + s for s in range(64)]
    kw = dict(k_start="gptq", num_reads=2, num_sweeps=20, polish=False)
    full = [k for k, _ in solve_levels_batch(ps, seeds, **kw)]
    for j in range(7):
        (k1, _), = solve_levels_batch([ps[j]], [seeds[j]], **kw)
        np.testing.assert_array_equal(k1, full[j])
    seven = solve_levels_batch(ps[10:17], seeds[10:17], **kw)
    for j, (k, _) in enumerate(seven):
        np.testing.assert_array_equal(k, full[10 + j])
    order = np.random.default_rng(0).permutation(64)
    shuffled = solve_levels_batch([ps[j] for j in order], [seeds[j] for j in order], **kw)
    for pos, j in enumerate(order):
        np.testing.assert_array_equal(shuffled[pos][0], full[j])
    # problems of another size in the same call do not change them either
    mixed = solve_levels_batch(ps[:3] + [problem(6, 99)], seeds[:3] + [5], **kw)
    for j in range(3):
        np.testing.assert_array_equal(mixed[j][0], full[j])


def test_pipeline_never_worse_than_its_classical_start_and_finds_small_optima():
    ps = [problem(6, s) for s in range(6)]
    res = solve_levels_batch(ps, list(range(6)), k_start="cd", num_sweeps=200)
    for p, (k, info) in zip(ps, res):
        cd = coordinate_descent(p, gptq(p, True))[0]
        assert info["energy"] <= p.energy(cd) + 1e-12
        assert info["energy"] == pytest.approx(p.energy(k), rel=1e-12)
        assert info["energy"] == pytest.approx(brute(p), rel=1e-9, abs=1e-12)
        assert info["stage"] in ("classical", "anneal", "polish")


def test_solve_levels_default_stage_is_batch_anneal_and_neal_stays_selectable():
    p = problem(8, 3)
    k, info = solve_levels(p, "qubo", seed=4, params={"num_sweeps": 30})
    assert info["sampler"] == "batch-anneal" and info["num_sweeps"] == 30
    (kb, _), = solve_levels_batch([p], [4], num_sweeps=30, rounds=4)
    np.testing.assert_array_equal(k, kb)
    k2, info2 = solve_levels(p, "qubo", sampler="neal", seed=4, params={"num_sweeps": 30})
    assert info2["sampler"] == "neal"
    with pytest.raises(QuboNNError, match=r"sampler 'batch-anneal' does not accept parameter\(s\) beta; expected"):
        solve_levels(p, "qubo", params={"beta": 1.0})
    with pytest.raises(QuboNNError, match=r"num_sweeps must be a positive integer, got 0"):
        solve_levels(p, "qubo", params={"num_sweeps": 0})
    with pytest.raises(QuboNNError, match=r"expected one seed per problem \(1\), got 2"):
        solve_levels_batch([p], [1, 2])


def test_sampler_seeds_initial_states_and_errors():
    bqm = dimod.generators.gnp_random_bqm(20, 0.5, "BINARY", random_state=4)
    a = sample(bqm, "batch-anneal", seed=7, num_reads=3, num_sweeps=50)
    b = sample(bqm, "batch-anneal", seed=7, num_reads=3, num_sweeps=50)
    np.testing.assert_array_equal(a.record.sample, b.record.sample)
    x0 = np.ones((1, 20), dtype=np.int8)
    c = sample(bqm, "batch-anneal", seed=7, num_reads=2, num_sweeps=1, beta_range=[1e6, 1e7], initial_states=x0)
    assert c.first.energy <= bqm.energy(dict(zip(bqm.variables, x0[0]))) + 1e-9
    with pytest.raises(QuboNNError, match=r"num_reads and num_sweeps must be >= 1, got 0 and 10"):
        sample(bqm, "batch-anneal", num_reads=0, num_sweeps=10)
    with pytest.raises(QuboNNError, match=r"beta_range must be two positive numbers"):
        sample(bqm, "batch-anneal", beta_range=[-1.0, 1.0])


class FastBatchAnneal(BatchAnnealSampler):
    """Few sweeps, so the ~30 contract cases stay fast."""

    def sample(self, bqm, **kw):
        return super().sample(bqm, **{"num_sweeps": 20, "seed": 0, **kw})


@dimod.testing.load_sampler_bqm_tests(FastBatchAnneal)
class TestBatchAnnealContract(unittest.TestCase):
    def test_api(self):
        dimod.testing.assert_sampler_api(BatchAnnealSampler())
