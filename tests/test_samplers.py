"""Samplers: dimod's contract tests, optima checked against brute force and planted answers,
seeds, energies, parameter validation, the polish composite, and the guarded samplers.

References are independent of the code under test: a NumPy enumeration of all 2^n states
(not dimod.ExactSolver) and QUBOs E(x) = (x − t)ᵀ M (x − t) with M positive definite, whose
unique minimum is the planted t.
"""
from __future__ import annotations

import json
import time
import unittest
import warnings

import dimod
import dimod.testing
import numpy as np
import pytest
import torch

import qubo_nn.samplers as S
from qubo_nn.runtime import child_seed
from qubo_nn.errors import QuboNNError
from qubo_nn.samplers import anneal, base, bifurcation, dwave_leap
from qubo_nn.core.kernels import sphere_decode

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST_SB = dict(num_reads=16, max_steps=400)


# --------------------------------------------------------------------------- references

def brute_force(Q: np.ndarray, offset: float = 0.0) -> tuple[float, np.ndarray]:
    """Minimum of xᵀ triu(Q) x + offset over x ∈ {0,1}^n by enumerating every state (NumPy)."""
    n = Q.shape[0]
    U = np.triu(Q) + np.triu(Q.T, 1)  # upper-triangular form of the same energy
    best_e, best_x = np.inf, None
    for start in range(0, 2 ** n, 1 << 16):
        k = np.arange(start, min(2 ** n, start + (1 << 16)))
        X = ((k[:, None] >> np.arange(n)) & 1).astype(np.float64)
        e = np.einsum("si,ij,sj->s", X, U, X) + offset
        i = int(np.argmin(e))
        if e[i] < best_e:
            best_e, best_x = float(e[i]), X[i].astype(np.int8)
    return best_e, best_x


def random_qubo(n: int, seed: int) -> tuple[dimod.BinaryQuadraticModel, np.ndarray]:
    rng = np.random.default_rng(seed)
    Q = np.triu(rng.normal(size=(n, n)))
    return dimod.BinaryQuadraticModel(Q, "BINARY", offset=0.25), Q


def planted_qubo(n: int, seed: int) -> tuple[dimod.BinaryQuadraticModel, np.ndarray]:
    """E(x) = (x − t)ᵀ M (x − t), M = GᵀG/n + 0.05 I (positive definite): unique minimum 0 at t."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    t[:2] = (0, 1)  # never trivial
    G = rng.normal(size=(n, n))
    M = G.T @ G / n + 0.05 * np.eye(n)
    Qm = M.copy()
    Qm[np.diag_indices(n)] = np.diag(M) - 2 * (M @ t)  # x_i² = x_i
    return dimod.BinaryQuadraticModel(Qm, "BINARY", offset=float(t @ M @ t)), t.astype(np.int8)


def labelled(bqm: dimod.BinaryQuadraticModel, x: np.ndarray) -> dict:
    return dict(zip(range(len(x)), x.tolist()))


# --------------------------------------------------------------------------- dimod contract

class FastSB(bifurcation.SBSampler):
    """SB with few agents and steps, so the ~30 contract cases stay fast."""

    def sample(self, bqm, **kw):
        return super().sample(bqm, **{**FAST_SB, "seed": 0, **kw})


CONTRACT = {
    "neal": anneal.NealSampler,
    "tabu": S.TabuSampler,
    "steepest": S.SteepestDescentSolver,
    "exact": S.ExactSampler,
    "sb": FastSB,
    "random": S.RandomSampler,
    "polish": lambda: S.PolishComposite(anneal.NealSampler()),
}


def _contract_case(name, factory):
    @dimod.testing.load_sampler_bqm_tests(factory)
    class Case(unittest.TestCase):
        def test_api(self):
            dimod.testing.assert_sampler_api(factory())

    Case.__name__ = Case.__qualname__ = f"TestContract_{name}"
    return Case


for _name, _factory in CONTRACT.items():
    globals()[f"TestContract_{_name}"] = _contract_case(_name, _factory)


def test_polish_composite_api():
    dimod.testing.assert_composite_api(S.PolishComposite(S.TabuSampler()))


def test_registry_lists_every_sampler():
    assert list(S.SAMPLERS) == ["neal", "tabu", "steepest", "exact", "sb", "random", "dwave",
                                "gptq", "cd", "pipeline", "decompose", "batch-anneal"]
    rows = {r["name"]: r for r in S.describe()}
    assert all(rows[n]["available"] for n in S.SAMPLERS if n != "dwave")
    assert "time_limit" in rows["neal"]["parameters"] and "num_sweeps" in rows["neal"]["parameters"]


# --------------------------------------------------------------------------- optima

@pytest.mark.parametrize("seed,n", [(0, 14), (1, 18), (2, 20)])
def test_random_qubo_optimum_matches_brute_force(seed, n):
    bqm, Q = random_qubo(n, seed)
    e_ref, x_ref = brute_force(Q, 0.25)
    assert bqm.energy(labelled(bqm, x_ref)) == pytest.approx(e_ref, abs=1e-9)
    runs = {"neal": dict(num_reads=10), "tabu": dict(), "sb": dict(FAST_SB, num_reads=32)}
    for name, params in runs.items():
        ss = S.sample(bqm, name, seed=seed, **params)
        assert ss.first.energy == pytest.approx(e_ref, abs=1e-9), name


@pytest.mark.parametrize("n,seed", [(12, 0), (48, 1)])
def test_planted_optimum_found(n, seed):
    bqm, t = planted_qubo(n, seed)
    assert bqm.energy(labelled(bqm, t)) == pytest.approx(0.0, abs=1e-9)
    runs = {"neal": dict(num_reads=8), "tabu": dict(), "sb": dict(num_reads=32, max_steps=1000)}
    for name, params in runs.items():
        ss = S.sample(bqm, name, seed=3, **params)
        best = np.array([ss.first.sample[v] for v in range(n)])
        assert ss.first.energy == pytest.approx(0.0, abs=1e-9), name
        np.testing.assert_array_equal(best, t, err_msg=name)


def test_exact_matches_brute_force_and_keeps_num_reads():
    bqm, Q = random_qubo(10, 5)
    e_ref, _ = brute_force(Q, 0.25)
    ss = S.sample(bqm, "exact", num_reads=3)
    assert len(ss) == 3 and ss.first.energy == pytest.approx(e_ref, abs=1e-12)
    assert ss.info["seed"] is None


# --------------------------------------------------------------------------- energies, seeds, info

@pytest.mark.parametrize("name,params", [
    ("neal", dict(num_reads=5, num_sweeps=200)),
    ("tabu", dict(num_reads=3, timeout=None, num_restarts=3)),
    ("steepest", dict(num_reads=5)),
    ("sb", FAST_SB),
    ("random", dict(num_reads=20)),
])
def test_energies_seeds_and_info(name, params):
    bqm, _ = random_qubo(30, 7)
    a = S.sample(bqm, name, seed=11, **params)
    b = S.sample(bqm, name, seed=11, **params)
    # energies are dimod's, lowest first
    np.testing.assert_allclose(a.record.energy, bqm.energies(a), rtol=0, atol=1e-12)
    assert np.all(np.diff(a.record.energy) >= 0)
    assert a.info["sampler_energy_error"] < 1e-8
    # same seed, same samples
    np.testing.assert_array_equal(a.record.sample, b.record.sample)
    for key in ("sampler", "params", "seed", "wall_time_s", "polish", "num_reads", "best_energy"):
        assert key in a.info
    assert a.info["sampler"] == name and a.info["seed"] == 11
    json.dumps(a.to_serializable())  # info must be plain JSON


def test_different_seeds_differ_and_unseeded_runs_record_their_seed():
    bqm, _ = random_qubo(40, 8)
    a = S.sample(bqm, "random", seed=1, num_reads=5)
    b = S.sample(bqm, "random", seed=2, num_reads=5)
    assert not np.array_equal(a.record.sample, b.record.sample)
    c = S.sample(bqm, "neal", num_reads=2, num_sweeps=50)
    d = S.sample(bqm, "neal", seed=c.info["seed"], num_reads=2, num_sweeps=50)
    assert isinstance(c.info["seed"], int)
    np.testing.assert_array_equal(c.record.sample, d.record.sample)


def test_spin_models_and_labels_round_trip():
    bqm, _ = random_qubo(12, 9)
    spin = bqm.change_vartype("SPIN", inplace=False).relabel_variables({i: f"v{i}" for i in range(12)},
                                                                        inplace=False)
    ss = S.sample(spin, "neal", seed=0, num_reads=4, polish=True)
    assert ss.vartype is dimod.SPIN and set(ss.variables) == set(spin.variables)
    np.testing.assert_allclose(ss.record.energy, spin.energies(ss), atol=1e-12)


# --------------------------------------------------------------------------- validation

def test_unknown_parameters_refused_by_name():
    bqm, _ = random_qubo(6, 0)
    with pytest.raises(QuboNNError, match=r"sampler 'neal' does not accept parameter\(s\) num_read;"):
        S.sample(bqm, "neal", num_read=5)
    with pytest.raises(QuboNNError, match=r"sampler 'tabu' does not accept parameter\(s\) num_sweeps;.*timeout"):
        S.sample(bqm, "tabu", num_sweeps=5)
    with pytest.raises(QuboNNError, match=r"sampler 'exact' does not accept parameter\(s\) time_limit"):
        S.sample(bqm, "exact", time_limit=1.0)
    with pytest.raises(QuboNNError, match=r"unknown sampler 'annealer'; expected one of neal, tabu"):
        S.sample(bqm, "annealer")
    with pytest.raises(QuboNNError, match=r"seed must be an integer in \[0, 2\*\*31\), got -1"):
        S.sample(bqm, "neal", seed=-1)
    with pytest.raises(QuboNNError, match=r"sampler 'neal' refused its input: 'beta_range' should be a 2-tuple"):
        S.sample(bqm, "neal", beta_range=[1.0])
    with pytest.raises(QuboNNError, match=r"sampler 'sb' does not take initial states"):
        S.sample(bqm, "sb", initial_states=np.zeros(6, dtype=int))
    with pytest.raises(QuboNNError, match=r"initial_states must be an array of shape \(S, 6\) or \(6,\), got shape \(5,\)"):
        S.sample(bqm, "steepest", initial_states=np.zeros(5, dtype=int))
    with pytest.raises(QuboNNError, match=r"initial_states must hold only 0/1 values"):
        S.sample(bqm, "steepest", initial_states=np.full(6, 2))
    with pytest.raises(QuboNNError, match=r"expected a dimod.BinaryQuadraticModel, got dict"):
        S.sample({}, "neal")


def test_initial_states_are_used():
    bqm, t = planted_qubo(24, 4)
    ss = S.sample(bqm, "steepest", initial_states=t)  # already optimal: stays put
    assert ss.info["initial_states"] == 1
    np.testing.assert_array_equal([ss.first.sample[v] for v in range(24)], t)


def test_exact_refuses_large_models_before_allocating(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("ExactSolver ran")

    monkeypatch.setattr(dimod.ExactSolver, "sample", boom)
    bqm = dimod.BinaryQuadraticModel({i: 1.0 for i in range(25)}, {}, 0.0, "BINARY")
    with pytest.raises(QuboNNError, match=r"sampler 'exact' enumerates all 2\^n states: expected at most 24 "
                                          r"variables, got 25"):
        S.sample(bqm, "exact")


def test_dwave_without_package_fails_clearly(monkeypatch):
    # dwave-hybrid (a dependency) pulls dwave-system in, so its absence is simulated
    monkeypatch.setattr(dwave_leap, "dwave_system_installed", lambda: False)
    with pytest.raises(QuboNNError, match=r"sampler 'dwave' needs the optional package dwave-system.*"
                                          r"pip install 'qubo-nn\[dwave\]'"):
        S.get_sampler("dwave")
    bqm, _ = random_qubo(4, 0)
    with pytest.raises(QuboNNError, match="dwave-system"):
        S.sample(bqm, "dwave")
    row = next(r for r in S.describe() if r["name"] == "dwave")
    assert row["available"] is False and "dwave-system" in row["reason"] and "time_limit" in row["parameters"]


def test_dwave_without_token_fails_clearly(monkeypatch):
    monkeypatch.setattr(dwave_leap, "dwave_system_installed", lambda: True)
    monkeypatch.setattr(dwave_leap, "leap_token", lambda: None)
    with pytest.raises(QuboNNError, match=r"needs a D-Wave Leap API token and none is configured: run `dwave config create`"):
        S.get_sampler("dwave")


# --------------------------------------------------------------------------- neal specifics

@pytest.mark.parametrize("make", [lambda: random_qubo(9, 3)[0],
                                  lambda: dimod.generators.randint(12, "SPIN", low=-3, high=3, seed=1)])
def test_vectorized_beta_range_matches_loop_references(make):
    """Hot end: a per-spin loop over the Ising biases; cold end: dwave-neal's own (looped) rule."""
    from neal import default_beta_range

    bqm = make()
    h, J, _ = bqm.to_ising()
    rms = {v: h[v] ** 2 for v in bqm.variables}
    for (u, v), j in J.items():
        rms[u] += j * j
        rms[v] += j * j
    hot = np.log(2) / (2 * np.median(np.sqrt(list(rms.values()))))
    expect = [hot, default_beta_range(bqm)[1]]
    np.testing.assert_allclose(anneal.vectorized_beta_range(bqm), expect, rtol=1e-12)
    other = bqm.change_vartype("SPIN" if bqm.vartype is dimod.BINARY else "BINARY", inplace=False)
    np.testing.assert_allclose(anneal.vectorized_beta_range(other), expect, rtol=1e-9)
    ss = S.sample(bqm, "neal", seed=0)
    np.testing.assert_allclose(ss.info["params"]["beta_range"], expect, rtol=1e-12)
    ss = S.sample(bqm, "neal", seed=0, beta_range=[0.5, 3.0])
    assert ss.info["params"]["beta_range"] == [0.5, 3.0]


def test_vectorized_beta_range_is_fast_on_a_dense_block():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(1500, 1500))
    bqm = dimod.BinaryQuadraticModel(A @ A.T / 1500, "BINARY")
    t0 = time.perf_counter()
    lo, hi = anneal.vectorized_beta_range(bqm)
    assert time.perf_counter() - t0 < 1.0  # dwave-neal's loop takes ~2 s here (0.1 s vectorized)
    assert 0 < lo < hi and np.isfinite(hi)


def test_neal_time_limit_stops_between_reads():
    bqm, _ = random_qubo(200, 1)
    ss = S.sample(bqm, "neal", seed=0, time_limit=0.3, num_sweeps=2000)
    assert 1 <= len(ss) < anneal.TIME_LIMIT_MAX_READS
    assert ss.info["wall_time_s"] < 0.3 + 1.0  # overrun: at most one read plus overhead


def test_tabu_time_limit_maps_to_timeout():
    bqm, _ = random_qubo(30, 2)
    ss = S.sample(bqm, "tabu", seed=0, time_limit=0.2, num_reads=4)
    assert ss.info["timeout_ms"] == 50 and len(ss) == 4
    with pytest.raises(QuboNNError, match="either time_limit"):
        S.sample(bqm, "tabu", time_limit=0.2, timeout=10)


# --------------------------------------------------------------------------- polish

def _single_flip_gains(bqm, x):
    """Energy change of flipping each bit of x alone, computed with NumPy from the dense Q."""
    n = len(x)
    Q = np.zeros((n, n))
    lin, (r, c, q), _ = bqm.to_numpy_vectors(variable_order=range(n))
    Q[r, c] = q
    Q = Q + Q.T
    d = 1 - 2 * x  # +1: 0→1, −1: 1→0
    return d * (lin + Q @ x)


def test_polish_returns_local_minima_no_worse_than_child():
    bqm, _ = random_qubo(40, 6)
    raw = S.sample(bqm, "random", seed=4, num_reads=8)
    pol = S.sample(bqm, "random", seed=4, num_reads=8, polish=True)
    assert pol.first.energy <= raw.first.energy
    for row in pol.record.sample:
        x = np.array([row[pol.variables.index(v)] for v in range(40)], dtype=float)
        assert (_single_flip_gains(bqm, x) >= -1e-12).all()
    assert pol.info["polish_stats"]["energy_before"] == pytest.approx(raw.first.energy)
    assert pol.info["polish_stats"]["improved"] >= 1 and pol.info["polish"] is True


# --------------------------------------------------------------------------- simulated bifurcation

@pytest.mark.parametrize("device", DEVICES)
def test_sb_does_not_double_the_linear_term(device):
    # a = (−1, −1), b01 = 1.5: optimum −1 at 10/01. Doubling the linear term would make 11 (−2.5) best.
    bqm = dimod.BinaryQuadraticModel({0: -1.0, 1: -1.0}, {(0, 1): 1.5}, 0.0, "BINARY")
    ss = S.sample(bqm, "sb", seed=0, device=device, **FAST_SB)
    assert ss.info["sb"]["energy_before_polish"] == pytest.approx(-1.0)
    assert ss.first.energy == pytest.approx(-1.0)
    assert ss.info["sb"]["device"].startswith(device)


def test_sb_seed_is_reproducible_and_leaves_torch_rng_alone():
    bqm, _ = random_qubo(24, 3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = S.sample(bqm, "sb", seed=5, **FAST_SB)
    after = torch.rand(3)
    b = S.sample(bqm, "sb", seed=5, **FAST_SB)
    torch.testing.assert_close(after, expected)
    np.testing.assert_array_equal(a.record.sample, b.record.sample)
    assert a.info["sb"]["mode"] == "discrete"


def test_sb_warns_when_every_agent_is_trivial(monkeypatch):
    import simulated_bifurcation as sb

    def zeros(Q, ell, c, **kw):
        return torch.zeros(kw["agents"], Q.shape[0]), torch.zeros(kw["agents"])

    monkeypatch.setattr(sb, "minimize", zeros)
    bqm, t = planted_qubo(10, 0)
    with pytest.warns(RuntimeWarning, match="ended every agent in an all-0/all-1 state"):
        ss = S.sample(bqm, "sb", seed=0, num_reads=4)
    assert ss.info["sb"]["trivial_agents"] == 4
    assert ss.first.energy < ss.info["sb"]["energy_before_polish"]
    with warnings.catch_warnings():  # optimum at all zeros: trivial but correct, no warning
        warnings.simplefilter("error")
        S.sample(dimod.BinaryQuadraticModel({0: 1.0, 1: 2.0}, {}, 0.0, "BINARY"), "sb", seed=0, num_reads=2)


def test_seed_helpers():
    assert base.check_seed(np.int64(7)) == 7
    with pytest.raises(QuboNNError, match="seed must be an integer"):
        base.check_seed(True)
    assert child_seed(0, 1) != child_seed(0, 2) and child_seed(0, 1) == child_seed(0, 1)
    assert 0 <= base.draw_seed() < 2**31


# --------------------------------------------------------------------------- level-space samplers

def level_block(m: int = 6, bits: int = 2, kind: str = "binary", seed: int = 0):
    """A small block (local model → encoding → BQM) and its integer form; H ill-conditioned."""
    from qubo_nn.core.encoding import optimize_encoding
    from qubo_nn.core.model import LocalModel
    from qubo_nn.core.bqm import build_bqm
    from qubo_nn.core.bqm import integer_form

    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, m, generator=g, dtype=torch.float64)
    H = B @ B.T / m + 1e-3 * torch.eye(m, dtype=torch.float64) + 0.9 * torch.ones(m, m, dtype=torch.float64)
    model = LocalModel(idx=torch.arange(m), g=torch.randn(m, generator=g, dtype=torch.float64), H=H, L0=1.0,
                       theta0=torch.randn(m, generator=g, dtype=torch.float64))
    enc = optimize_encoding(model, bits=bits, window=2.0, damping=0.05, kind=kind)
    return build_bqm(model, enc, 0.05), integer_form(model, enc, 0.05), enc


def exact_levels(form) -> tuple[float, np.ndarray]:
    """Independent reference: enumerate every level vector of the box."""
    import itertools

    p = form.problem
    K = np.array(list(itertools.product(*[range(a, b + 1) for a, b in zip(p.kmin, p.kmax)])))
    E = p.energy(K)
    return float(E.min()), K[int(np.argmin(E))]


@pytest.mark.parametrize("kind", ["binary", "unary", "domain-wall"])
def test_level_samplers_against_the_exact_optimum(kind):

    bqm, form, enc = level_block(kind=kind, seed=1)
    e_opt, k_opt = exact_levels(form)
    k_sd, info = sphere_decode(form.problem)
    assert info["complete"] and form.problem.energy(k_sd) == pytest.approx(e_opt, abs=1e-12)
    # the BQM's energy of the optimum's bits is the same number
    assert bqm.energy(dict(enumerate(form.to_bits(k_opt)))) == pytest.approx(e_opt, rel=1e-12, abs=1e-12)
    zeros = np.zeros((1, bqm.num_variables), dtype=np.int8)   # a far start: the workflow must move
    for name, params in [("pipeline", dict(seed=0, integer_form=form)),
                         ("decompose", dict(seed=0, initial_states=zeros, size=8, convergence=20))]:
        ss = S.sample(bqm, name, **params)
        assert ss.first.energy == pytest.approx(e_opt, rel=1e-9, abs=1e-9), name
    for name, params in [("gptq", {}), ("gptq", dict(act_order=False)), ("cd", {})]:
        ss = S.sample(bqm, name, integer_form=form, **params)
        assert ss.first.energy >= e_opt - 1e-9
        k = enc.levels(np.array([ss.first.sample[v] for v in range(bqm.num_variables)])).numpy().astype(int)
        assert ss.first.energy == pytest.approx(form.problem.energy(k), rel=1e-12, abs=1e-12)
        if name == "cd":  # a local minimum under every single ±1 and pair (±1, ±1) move (checked directly)
            p = form.problem
            e = p.energy(k)
            for i in range(p.m):
                for j in range(p.m):
                    for di in (-1, 0, 1):
                        for dj in (-1, 0, 1):
                            q = k.copy()
                            q[i] += di
                            q[j] += dj
                            if p.feasible(q) and (q != k).any():
                                assert p.energy(q) >= e - 1e-12


def test_pipeline_records_its_stages_and_the_annealers_own_energy():
    bqm, form, _ = level_block(m=12, bits=1, seed=2)
    ss = S.sample(bqm, "pipeline", integer_form=form, seed=3, rounds=2)
    info = ss.info
    assert info["stage"] in ("classical", "anneal", "polish")
    assert info["energy"] == pytest.approx(ss.first.energy, rel=1e-12, abs=1e-12)
    assert info["energy"] <= info["energy_classical"] + 1e-12
    assert np.isfinite(info["energy_anneal_raw"])
    # never above the classical start; the annealer's own best is a real sample energy, not the fallback
    e_opt, _ = exact_levels(form)
    assert info["energy_anneal_raw"] >= e_opt - 1e-9


def test_level_samplers_refuse_a_bare_bqm_and_wrong_forms():
    bqm, form, _ = level_block()
    for name in ("gptq", "cd", "pipeline"):
        with pytest.raises(QuboNNError, match=f"sampler '{name}' needs the block's integer form"):
            S.sample(bqm, name)
    with pytest.raises(QuboNNError, match="expected integer_form to be a levels.IntegerForm, got dict"):
        S.sample(bqm, "cd", integer_form={})
    other, _ = random_qubo(5, 0)
    with pytest.raises(QuboNNError, match="the integer form encodes 12 variables"):
        S.sample(other, "gptq", integer_form=form)


@pytest.mark.parametrize("name,key,value,want", [
    ("neal", "num_sweeps", "abc", "expected int, got 'abc'"),
    ("neal", "num_reads", 2.5, "expected int, got 2.5"),
    ("neal", "num_sweeps", True, "expected int, got True"),
    ("neal", "time_limit", "1s", "expected int or float, got '1s'"),
    ("gptq", "act_order", "yes", "expected bool, got 'yes'"),
])
def test_parameter_values_of_the_wrong_type_are_refused(name, key, value, want):
    bqm, form, _ = level_block()
    extra = {"integer_form": form} if name == "gptq" else {}
    with pytest.raises(QuboNNError, match=f"sampler '{name}' parameter '{key}': {want}"):
        S.sample(bqm, name, **{key: value}, **extra)
