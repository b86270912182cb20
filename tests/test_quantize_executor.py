"""Quantize's row problems on the executor seam (issue 14): the levels of a head and of a whole
network are the same whether the rows run serially, on two threads, or as Ray tasks, and a
missing Ray fails before any work.

The reference is the serial loop (threads, one worker: rows solved one after another in index
order); every row's seed is derived from (seed, row) alone, so any executor and any completion
order must reproduce it bit for bit (``torch.equal`` / exact float equality, no tolerance).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.core.head import Head
from qubo_nn.workflows.head_quantize import QuantizeConfig, quantize_head
from qubo_nn.execution.row_tasks import group_row_task, head_row_task
from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, quantize_network
from test_network_quantize import _net_and_data
from qubo_nn.core.kernels import coordinate_descent, gptq, rtn
from qubo_nn.core.problem import IntegerProblem

FAST = {"num_sweeps": 60}


def _head_and_data(C=5, D=8, N=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    W = 0.5 * torch.randn(C, D, generator=g, dtype=torch.float64)
    return Head(W, 0.1 * torch.randn(C, generator=g, dtype=torch.float64)), FeatureSet(X, y, C)


def _quantize(**kw):
    head, feats = _head_and_data()
    cfg = QuantizeConfig(bits=2, method="qubo", sampler_params=FAST, dtype="float64", device="cpu", seed=3, **kw)
    return quantize_head(head, feats, None, cfg)


def _assert_same_head_results(a, b):
    assert a.methods.keys() == b.methods.keys()
    for m in a.methods:
        assert torch.equal(a.methods[m].codes, b.methods[m].codes), m
        assert a.methods[m].row_energies == b.methods[m].row_energies, m
        assert a.methods[m].energy == b.methods[m].energy, m
    for key in ("rows_improved", "rows_anneal_stage", "energy_classical", "energy_anneal_raw"):
        assert a.methods["qubo"].info[key] == b.methods["qubo"].info[key], key


def test_head_rows_same_levels_on_one_and_two_threads(one_thread):
    serial, parallel = _quantize(), _quantize(workers=2)
    _assert_same_head_results(serial, parallel)
    assert serial.timings["rows_wall_s"] > 0


def test_head_rows_same_levels_on_ray(ray_local, one_thread):
    _assert_same_head_results(_quantize(), _quantize(executor="ray", workers=2))


def test_head_row_task_matches_the_level_kernels_and_an_exhaustive_search():
    """The task computes each method by the kernels of ``levels`` (the same answers called directly),
    and no method goes below the exact minimum of the row (4 levels, 5 weights: 1,024 points)."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5))
    p = IntegerProblem(A @ A.T + 0.5 * np.eye(5), rng.normal(size=5), np.full(5, 0.7), -2, 1, 0.25)
    res = head_row_task({"problem": p, "rtn": rtn(p),
                         "qubo": {"encoding": "unary", "sampler": "neal", "seed": 5, "params": FAST}})
    np.testing.assert_array_equal(res["levels"]["gptq"], gptq(p, act_order=True))
    np.testing.assert_array_equal(res["levels"]["gptq-natural"], gptq(p, act_order=False))
    np.testing.assert_array_equal(res["levels"]["cd"], coordinate_descent(p, gptq(p, True))[0])
    grid = np.stack(np.meshgrid(*[np.arange(-2, 2)] * 5, indexing="ij"), -1).reshape(-1, 5)
    exact = float(np.min(p.energy(grid)))
    for m, e in res["energy"].items():
        assert e == pytest.approx(float(p.energy(res["levels"][m])), rel=1e-12)
        assert e >= exact - 1e-12, m
    assert res["energy"]["qubo"] <= res["energy"]["cd"] + 1e-12   # the pipeline starts from the best classical
    assert res["wall"]["cd"] >= res["wall"]["gptq"]                # CD's time includes its GPTQ start


def test_group_row_task_keeps_the_incumbent_unless_not_worse_and_skips_after_the_deadline():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4))
    p = IntegerProblem(A @ A.T + np.eye(4), rng.normal(size=4), np.full(4, 0.5), -2, 1)
    grid = np.stack(np.meshgrid(*[np.arange(-2, 2)] * 4, indexing="ij"), -1).reshape(-1, 4)
    best = grid[int(np.argmin(p.energy(grid)))]
    # the exact optimum as incumbent: cd cannot go below it, so the incumbent's energy is kept
    out = group_row_task({"problem": p, "method": "cd", "incumbent": best, "kwargs": {"seed": 0}, "deadline": None})
    assert p.energy(out["levels"]) == pytest.approx(p.energy(best), rel=1e-12)
    # the worst grid point as incumbent: cd from GPTQ replaces it
    worst = grid[int(np.argmax(p.energy(grid)))]
    out = group_row_task({"problem": p, "method": "cd", "incumbent": worst, "kwargs": {"seed": 0}, "deadline": None})
    assert out["kept"] and p.energy(out["levels"]) < p.energy(worst)
    assert group_row_task({"problem": p, "method": "cd", "incumbent": worst, "kwargs": {}, "deadline": 0.0}) is None


@pytest.mark.parametrize("method", ["cd", "qubo"])
def test_network_rows_same_levels_on_threads_and_ray(ray_local, method, one_thread):
    net, calib, test, labels = _net_and_data()
    base = dict(method=method, bits=2, first_last_bits=2, calib=12, group_size=4, device="cpu",
                factor_dtype="float64", solve_budget_s=1e3, sampler_params=FAST)
    serial = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(**base))
    two = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(workers=2, **base))
    ray = quantize_network(net, calib, test, labels, NetworkQuantizeConfig(executor="ray", workers=2, **base))
    assert all(L["coverage"] == 1.0 for L in serial.record["layers"])
    for other in (two, ray):
        for name in serial.levels:
            assert torch.equal(serial.levels[name], other.levels[name]), name
        for a, b in zip(serial.record["layers"], other.record["layers"]):
            assert a["energy"] == b["energy"] and a["stages"] == b["stages"]


def test_ray_missing_fails_at_once_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    head, feats = _head_and_data()
    with pytest.raises(QuboNNError, match=r"needs Ray, which is not installed: pip install 'qubo-nn\[ray\]'"):
        quantize_head(head, feats, None, QuantizeConfig(executor="ray", device="cpu"))
    net, calib, test, labels = _net_and_data()
    with pytest.raises(QuboNNError, match=r"needs Ray, which is not installed"):
        quantize_network(net, calib, test, labels, NetworkQuantizeConfig(method="cd", executor="ray", device="cpu"))
    out = tmp_path / "q.pt"
    res = CliRunner().invoke(main, ["quantize", "--executor", "ray", "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "pip install 'qubo-nn[ray]'" in res.output and not out.exists()
    res = CliRunner().invoke(main, ["quantize", "--executor", "threads", "--ray-address", "auto", "--out", str(out)])
    assert res.exit_code == 2 and "ray_address needs executor 'ray'" in res.output

