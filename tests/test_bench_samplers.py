"""Helpers of benchmarks/bench_samplers.py: the certified lower bound, exact sub-solves, the LNS
and the merge of an added run. References: enumeration of every level vector of small problems."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_samplers as B  # noqa: E402
from qubo_nn.core.kernels import rtn
from qubo_nn.core.problem import IntegerProblem


def problem(m: int, top: int, seed: int, far: bool = False) -> IntegerProblem:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3 * m, m))
    H = X.T @ X / m + 0.1 * np.eye(m)
    scale = rng.uniform(0.5, 1.5, m)
    # far: targets well outside the box on alternating sides (the relaxation sits at the box's corners)
    t = scale * (np.where(np.arange(m) % 2, top + 20.0, -20.0) if far else rng.uniform(-0.5, top + 0.5, m))
    return IntegerProblem(H, t, scale, 0, top, const=0.25)


def enumerate_min(p: IntegerProblem) -> tuple[np.ndarray, float]:
    K = np.array(list(itertools.product(*[range(a, b + 1) for a, b in zip(p.kmin, p.kmax)])))
    E = p.energy(K)
    return K[int(np.argmin(E))], float(E.min())


@pytest.mark.parametrize("seed", range(4))
def test_box_bound_is_below_the_exact_minimum(seed):
    p = problem(6, 3, seed)
    _, e_min = enumerate_min(p)
    b = B.box_lower_bound(p)
    assert b["lower_bound"] <= e_min + 1e-12
    assert b["lower_bound"] <= b["relaxation"] + 1e-12
    # the bound is still valid from a poor relaxation (first-order gap of an early stop)
    rough = B.box_lower_bound(p, max_iter=1)
    assert rough["lower_bound"] <= e_min + 1e-12


def test_box_bound_certifies_the_optimum_when_the_relaxation_is_integral():
    p = problem(6, 1, 0, far=True)
    k_min, e_min = enumerate_min(p)
    b = B.box_lower_bound(p)
    assert b["relaxation_integral_fraction"] == 1.0
    assert b["lower_bound"] == pytest.approx(e_min, rel=1e-9)
    row = {"energy_rtn": float(p.energy(rtn(p))) + 1.0, "energy_long_pipeline": e_min + 1.0,
           "energy": {"cd": e_min}, "bound": b}
    B.rescore_row(row)
    assert row["bound"]["certified_optimal"] and row["best_known_by"] == "cd"


@pytest.mark.parametrize("top,max_states", [(1, 1 << 16), (3, 1 << 16), (3, 1)])   # 1: forces sphere decoding
def test_exact_sub_and_conditional_problem_match_enumeration(top, max_states):
    p = problem(9, top, 1)
    rng = np.random.default_rng(2)
    k = rng.integers(0, top + 1, 9)
    S = np.array([1, 4, 5, 7])
    sub = B.conditional(p, k, S)
    # same energy as the full problem up to one constant, for every assignment of k_S
    Z = np.array(list(itertools.product(range(top + 1), repeat=S.size)))
    full = np.repeat(k[None, :], len(Z), 0)
    full[:, S] = Z
    diff = p.energy(full) - sub.energy(Z)
    np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-9 * np.abs(p.energy(full)).max())
    kS = B.exact_sub(sub, k[S], max_states=max_states)
    assert sub.energy(kS) == pytest.approx(sub.energy(Z).min(), abs=1e-12)


def test_lns_with_whole_problem_neighbourhoods_reaches_the_exact_minimum():
    p = problem(7, 3, 3)
    k_min, e_min = enumerate_min(p)
    k0 = rtn(p)
    k, info = B.lns_exact(p, k0, budget_s=60.0, size=7, seed=0, max_tries=1)
    assert p.energy(k) == pytest.approx(e_min, abs=1e-12) and info["tries"] == 1
    # a small neighbourhood never raises the energy of its start
    k2, _ = B.lns_exact(p, k0, budget_s=60.0, size=3, seed=1, max_tries=20)
    assert p.energy(k2) <= p.energy(k0) + 1e-15


def test_merge_recomputes_best_known_and_fractions_and_keeps_each_runs_peer_time():
    row = {"energy_rtn": 10.0, "energy_long_pipeline": 2.0, "energy": {"gptq": 6.0, "cd": 4.0, "pipeline": 2.0},
           "time_s": {"gptq": 1.0, "cd": 1.0, "pipeline": 3.0}}
    B.rescore_row(row)
    assert row["fraction"] == {"gptq": 0.5, "cd": 0.75, "pipeline": 1.0}
    added = {"energy": {"lns": 0.0}, "time_s": {"lns": 9.0}, "peer_time_s": {"gptq": 0.5, "cd": 0.5}, "info": {}}
    B.merge_added(row, added, 1)
    assert row["energy_best_known"] == 0.0 and row["best_known_by"] == "lns"
    assert row["fraction"] == {"gptq": 0.4, "cd": 0.6, "pipeline": 0.8, "lns": 1.0}
    assert B.peer_time(row, "pipeline") == 2.0 and B.peer_time(row, "lns") == 1.0
    row.update(bits=2, pipeline_info={"stage": "anneal"})
    tg = B.targets([row], "lns")["2"]
    assert tg["rows_strictly_below_gptq_cd"] == 1 and tg["rows_strictly_below_within_10x"] == 1
    assert tg["time_ratio_median"] == 9.0 and tg["rows_meeting_fraction"] == 1
    assert B.targets([row], "pipeline")["2"]["rows_meeting_fraction"] == 0   # 0.8 < 0.999
