"""The integer view: kernels against brute force and an independent OBS reference."""
import itertools
import subprocess
import sys
from pathlib import Path

import dimod
import numpy as np
import pytest

from qubo_nn.errors import QuboNNError
from qubo_nn.core.grid import ENCODINGS, bits_of, levels_of
from qubo_nn.core.problem import window_base
from qubo_nn.samplers.level_solvers import LEVEL_METHODS, anneal_window, solve_levels
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.core.kernels import coordinate_descent, gptq, gptq_rows, rtn, sphere_decode
from qubo_nn.core.problem import window_qubo


def problem(seed: int, m: int = 7, bits: int = 2, cond: float = 30.0) -> IntegerProblem:
    """A random ill-conditioned PSD problem on a signed b-bit grid (like a class row)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(m, m)))
    H = Q @ np.diag(np.geomspace(1.0, 1.0 / cond, m)) @ Q.T
    w = rng.normal(size=m)
    s = 2 * np.abs(w).max() / (2 ** bits - 1) * rng.uniform(0.5, 1.0)
    return IntegerProblem(H, w, np.full(m, s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, const=0.3)


def brute_force(p: IntegerProblem) -> tuple[np.ndarray, float]:
    K = np.array(list(itertools.product(*[range(a, b + 1) for a, b in zip(p.kmin, p.kmax)])))
    E = p.energy(K)
    return K[int(np.argmin(E))], float(E.min())


def obs_fixed_order(p: IntegerProblem, order) -> np.ndarray:
    """Optimal Brain Surgeon updates in a fixed order with an explicitly shrinking inverse Hessian
    (the textbook form GPTQ's Cholesky recursion is equivalent to)."""
    w = p.target.copy()
    Hinv = np.linalg.inv(p.H)
    free = list(range(p.m))
    k = np.zeros(p.m, dtype=np.int64)
    for d in order:
        k[d] = int(np.clip(np.round(w[d] / p.scale[d]), p.kmin[d], p.kmax[d]))
        j = free.index(d)
        err = (w[d] - p.scale[d] * k[d]) / Hinv[j, j]
        w[free] -= err * Hinv[:, j]
        keep = [i for i in range(len(free)) if i != j]
        Hinv = Hinv[np.ix_(keep, keep)] - np.outer(Hinv[keep, j], Hinv[j, keep]) / Hinv[j, j]
        free.pop(j)
    return k


def test_energy_closed_form_and_batch():
    p = problem(0)
    k = np.array([0, -1, 1, -2, 0, 1, -1])
    r = p.scale * k - p.target
    assert p.energy(k) == pytest.approx(0.3 + 0.5 * r @ p.H @ r, rel=1e-12)
    K = np.stack([k, -k.clip(-1, 1)])
    assert np.allclose(p.energy(K), [p.energy(K[0]), p.energy(K[1])], rtol=1e-12)


def test_problem_validation_messages():
    with pytest.raises(QuboNNError, match=r"scale must be positive"):
        IntegerProblem(np.eye(2), np.zeros(2), np.array([1.0, 0.0]), -1, 1)
    with pytest.raises(QuboNNError, match=r"kmin must be <= kmax"):
        IntegerProblem(np.eye(2), np.zeros(2), 1.0, 1, 0)
    with pytest.raises(QuboNNError, match=r"target must have shape \(2,\)"):
        IntegerProblem(np.eye(2), np.zeros(3), 1.0, 0, 1)
    with pytest.raises(QuboNNError, match=r"method must be one of"):
        solve_levels(problem(0), "obq")
    with pytest.raises(QuboNNError, match=r"encoding must be one of"):
        solve_levels(problem(0), "qubo", encoding="one-hot")


@pytest.mark.parametrize("seed,bits", [(0, 1), (1, 2), (2, 2), (3, 3), (4, 1)])
def test_sphere_decode_is_exact(seed, bits):
    p = problem(seed, m=6 if bits == 3 else 8, bits=bits)
    k_bf, e_bf = brute_force(p)
    k, info = sphere_decode(p, k0=rtn(p))      # a weak incumbent: the search must do the work
    assert info["complete"]
    assert p.energy(k) == pytest.approx(e_bf, rel=1e-10, abs=1e-12)
    assert p.feasible(k)


def test_sphere_decode_refuses_large_problems():
    p = IntegerProblem(np.eye(41), np.zeros(41), 1.0, 0, 1)
    with pytest.raises(QuboNNError, match=r"at most 40 level variables, got 41"):
        sphere_decode(p)


@pytest.mark.parametrize("seed", range(4))
def test_gptq_matches_obs_reference(seed):
    p = problem(seed, m=9, bits=2)
    assert np.array_equal(gptq(p, act_order=False), obs_fixed_order(p, range(p.m)))
    order = np.argsort(-np.diag(p.H), kind="stable")
    assert np.array_equal(gptq(p, act_order=True), obs_fixed_order(p, order))


def upper_inverse_factor(H: np.ndarray) -> np.ndarray:
    """U upper with UᵀU = H⁻¹ (GPTQ's factor), by its definition."""
    return np.linalg.cholesky(np.linalg.inv(H)).T


def test_gptq_rows_batch_matches_obs_reference_row_by_row():
    """Rows sharing one Hessian, each with its own scale and box: the batched kernel gives every row
    the textbook OBS answer of that row alone (exact integer equality)."""
    rows = [problem(seed, m=9, bits=3) for seed in range(5)]
    H = rows[0].H
    X = np.stack([p.target for p in rows])
    S = np.stack([p.scale for p in rows])
    k = gptq_rows(X, upper_inverse_factor(H), S, -4, 3)
    for r, p in enumerate(rows):
        same_h = IntegerProblem(H, p.target, p.scale, -4, 3)
        assert np.array_equal(k[r], obs_fixed_order(same_h, range(9)))
        assert np.array_equal(k[r], gptq(same_h, act_order=False))
    assert np.array_equal(X, np.stack([p.target for p in rows]))   # the input is left as it was


def test_gptq_rows_is_bit_identical_to_the_old_network_loop():
    """Against the network path's torch loop before issue 18 (kept as the peer of
    benchmarks/bench_gptq_rows.py)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_gptq_rows import torch_loop_before_issue_18

    rng = np.random.default_rng(12)
    A = rng.normal(size=(16, 40))
    H = A @ A.T / 40 + 0.01 * np.eye(16)
    W = rng.normal(size=(6, 16))
    scale = rng.uniform(0.05, 0.4, size=6)
    U = upper_inverse_factor(H)
    old = torch_loop_before_issue_18(torch.tensor(W), torch.tensor(U), torch.tensor(scale), -8, 7)
    assert np.array_equal(gptq_rows(W, U, scale[:, None], -8, 7), old.numpy())


def test_gptq_with_diagonal_hessian_is_rtn():
    rng = np.random.default_rng(5)
    p = IntegerProblem(np.diag(rng.uniform(0.5, 2, 12)), rng.normal(size=12), 0.3, -2, 1)
    assert np.array_equal(gptq(p), rtn(p))
    assert np.array_equal(gptq(p, act_order=False), rtn(p))


@pytest.mark.parametrize("seed", range(4))
def test_coordinate_descent_ends_in_a_pair_local_minimum(seed):
    p = problem(seed, m=8, bits=2)
    k0 = rtn(p)
    k, info = coordinate_descent(p, k0)
    e = p.energy(k)
    assert e <= p.energy(k0) + 1e-12 and p.feasible(k)
    # no single change of one level, and no ±1 change of two levels, lowers the energy
    for i in range(p.m):
        for v in range(p.kmin[i], p.kmax[i] + 1):
            kk = k.copy(); kk[i] = v
            assert p.energy(kk) >= e - 1e-12
    for i, j in itertools.combinations(range(p.m), 2):
        for di, dj in itertools.product((-1, 1), repeat=2):
            kk = k.copy(); kk[i] += di; kk[j] += dj
            if p.feasible(kk):
                assert p.energy(kk) >= e - 1e-12


def test_pair_moves_escape_a_single_flip_minimum():
    # two strongly coupled weights: moving either alone costs, moving both together gains
    H = np.array([[1.0, -0.99], [-0.99, 1.0]])
    p = IntegerProblem(H, np.array([1.0, 1.0]), 1.0, 0, 1)
    k_single, _ = coordinate_descent(p, np.array([0, 0]), pairs=False)
    k_pair, info = coordinate_descent(p, np.array([0, 0]), pairs=True)
    assert k_single.tolist() == [0, 0]
    assert k_pair.tolist() == [1, 1] and info["pair_moves"] == 1
    assert p.energy(k_pair) == pytest.approx(brute_force(p)[1])


@pytest.mark.parametrize("kind", ENCODINGS)
def test_window_qubo_energy_equals_level_energy(kind):
    p = problem(6, m=5, bits=3)
    levels = 4
    base = window_base(p, rtn(p), levels)
    Q, lin, off, d = window_qubo(p, base, kind, levels)
    bqm = dimod.BinaryQuadraticModel("BINARY")
    bqm.add_linear_from_array(lin)
    bqm.add_quadratic_from_dense(Q)
    bqm.offset = off
    rng = np.random.default_rng(0)
    K = base + rng.integers(0, levels, size=(20, p.m))
    X = bits_of(K, base, kind, levels)
    assert np.array_equal(levels_of(X, base, kind, levels), K)
    assert np.allclose(bqm.energies((X, range(bqm.num_variables))), p.energy(K), rtol=1e-10, atol=1e-12)


def test_domain_wall_penalty_and_minimum():
    p = problem(7, m=3, bits=2)
    levels = 4
    base = p.kmin.copy()
    res = {}
    for kind in ("unary", "domain-wall"):
        Q, lin, off, d = window_qubo(p, base, kind, levels)
        bqm = dimod.BinaryQuadraticModel("BINARY")
        bqm.add_linear_from_array(lin)
        bqm.add_quadratic_from_dense(Q)
        bqm.offset = off
        X = np.array(list(itertools.product((0, 1), repeat=bqm.num_variables)))
        res[kind] = (X, bqm.energies((X, range(bqm.num_variables))))
    X, e_u = res["unary"]
    _, e_dw = res["domain-wall"]
    xs = X.reshape(len(X), p.m, -1)
    thermo = (np.diff(xs, axis=2) <= 0).all(axis=(1, 2))
    assert np.allclose(e_dw[thermo], e_u[thermo], atol=1e-12)      # no penalty on valid codes
    assert (e_dw[~thermo] > e_u[~thermo] + 1e-9).all()              # a positive one elsewhere
    assert e_dw.min() == pytest.approx(brute_force(p)[1], rel=1e-10)


@pytest.mark.parametrize("method", LEVEL_METHODS)
def test_solve_levels_every_method_feasible_and_scored(method):
    p = problem(8, m=10, bits=2)
    k, info = solve_levels(p, method, seed=3, params={"num_reads": 2, "num_sweeps": 50})
    assert p.feasible(k) and k.dtype == np.int64
    assert info["energy"] == pytest.approx(p.energy(k), rel=1e-12)
    assert info["method"] == method and "stage" in info and info["wall_time_s"] >= 0
    assert info["energy"] >= brute_force(p)[1] - 1e-12


def test_annealer_own_samples_reach_the_exact_optimum():
    """neal's raw samples (no polish, no fallback) on a fixed 12-variable instance started from the
    worst corner: the best of 10 reads is the certified optimum."""
    p = problem(9, m=12, bits=1)
    k_opt, info = sphere_decode(p)
    assert info["complete"]
    start = np.where(k_opt == p.kmin, p.kmax, p.kmin)           # every level wrong
    K, _ = anneal_window(p, start, encoding="unary", levels=2, seed=11, refine_span=None,
                         params={"num_reads": 10, "num_sweeps": 500})
    assert p.energy(K).min() == pytest.approx(p.energy(k_opt), rel=1e-10)


def test_levels_and_samplers_import_without_torch():
    code = "import sys, qubo_nn.core.grid, qubo_nn.samplers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
