"""Binary and ternary weights (qubo_nn.core.spins, qubo_nn.workflows.spin_quantize; issue 24).

References are independent: the row energy ½(αc − t)ᵀH(αc − t) evaluated directly, brute force over
every code vector (2^10 binary, 3^7 ternary), dimod's own BQM energies, SciPy's scalar minimiser for α.
"""
from __future__ import annotations

import itertools

import dimod
import numpy as np
import pytest
import torch

from qubo_nn.core.bounds import box_lower_bound
from qubo_nn.core.grid import levels_of
from qubo_nn.core.kernels import coordinate_descent, gptq, rtn, sphere_decode
from qubo_nn.core.spins import (TERNARY_ENCODINGS, alternate, binary_ising, codes_of_levels, init_alpha,
                                levels_of_codes, refit_alpha, row_energy, spin_bqm, spin_problem, ternary_from_spins,
                                ternary_spins, twn_codes)
from qubo_nn.errors import QuboNNError
from qubo_nn.samplers.level_solvers import solve_levels, solve_levels_batch
from qubo_nn.workflows.spin_quantize import RowGptq, anneal_spin_rows, spin_row_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _row(m, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3 * m, m)) + 0.8 * rng.normal(size=(3 * m, 1))     # correlated inputs
    H = X.T @ X / (3 * m) + 0.05 * np.eye(m)
    return H, 0.3 * rng.normal(size=m)


def _codes(grid, m):
    vals = (-1, 1) if grid == "binary" else (-1, 0, 1)
    return np.array(list(itertools.product(vals, repeat=m)), dtype=np.int64)


def _direct(H, t, a, C, const=0.0):
    R = a * C - t
    return const + 0.5 * np.einsum("si,ij,sj->s", R, H, R)


def test_binary_row_is_an_ising_model_and_its_bqm_has_the_row_energy_in_every_state(tmp_path):
    H, t = _row(10)
    a, const = 0.27, 0.4
    S = _codes("binary", 10)
    E = _direct(H, t, a, S, const)
    h, J, off = binary_ising(H, t, a, const)
    assert np.abs(off + S @ h + np.einsum("si,ij,sj->s", S, J, S) - E).max() < 1e-12
    bqm = spin_bqm(H, t, a, "binary", const)
    assert bqm.vartype is dimod.SPIN and bqm.num_variables == 10        # no encoding overhead
    assert np.abs(bqm.energies((S, list(range(10)))) - E).max() < 1e-12
    p = spin_problem(H, t, a, "binary", const)
    assert np.abs(p.energy(levels_of_codes(S, "binary")) - E).max() < 1e-12
    with open(tmp_path / "row.bqm", "wb") as f:                          # plain dimod reads it back
        f.write(bqm.to_file().read())
    back = dimod.BinaryQuadraticModel.from_file(open(tmp_path / "row.bqm", "rb"))
    assert np.abs(back.energies((S, list(range(10)))) - E).max() < 1e-12


@pytest.mark.parametrize("encoding", TERNARY_ENCODINGS)
def test_ternary_codes_and_their_spins_decode_to_the_same_weights_and_energies(encoding):
    m, a = 4, 0.31
    H, t = _row(m, 1)
    C = _codes("ternary", m)
    sig = ternary_spins(C, encoding)
    assert sig.shape == (len(C), 2 * m) and set(np.unique(sig)) <= {-1, 1}
    assert np.array_equal(ternary_from_spins(sig), C)
    # the IntegerForm route: bits x = (σ + 1)/2 of a unary window of 3 levels from −1
    k = levels_of((sig + 1) // 2, np.full(m, -1), "unary", 3)
    assert np.array_equal(a * k, a * C)
    bqm = spin_bqm(H, t, a, "ternary", 0.2, encoding)
    E = _direct(H, t, a, C, 0.2)
    assert np.abs(bqm.energies((sig, list(range(2 * m)))) - E).max() < 1e-12
    # every spin state: unary is penalty-free (energy of its decoded codes); domain-wall adds ≥ 0
    S = np.array(list(itertools.product((-1, 1), repeat=2 * m)))
    Es, Ed = bqm.energies((S, list(range(2 * m)))), _direct(H, t, a, ternary_from_spins(S), 0.2)
    if encoding == "unary":
        assert np.abs(Es - Ed).max() < 1e-12
    else:
        valid = ~((S[:, 0::2] == -1) & (S[:, 1::2] == 1)).any(1)
        assert np.abs(Es[valid] - Ed[valid]).max() < 1e-12 and (Es[~valid] > Ed[~valid]).all()


@pytest.mark.parametrize("grid", ["binary", "ternary"])
def test_alpha_refit_is_the_numeric_minimiser(grid):
    from scipy.optimize import minimize_scalar

    H, t = _row(12, 2)
    rng = np.random.default_rng(3)
    for _ in range(5):
        c = twn_codes(t, grid)
        flip = rng.choice(12, size=3, replace=False)
        c[flip] = rng.choice((-1, 1) if grid == "binary" else (-1, 0, 1), size=3)
        a = refit_alpha(H, t, c)
        num = minimize_scalar(lambda x: row_energy(H, t, x, c), bounds=(1e-6, 10.0), method="bounded",
                              options={"xatol": 1e-12})
        assert num.x > 1e-3 and a == pytest.approx(num.x, rel=1e-6)
        assert row_energy(H, t, a, c) <= num.fun + 1e-14
    # a negative optimum is clipped to a small positive scale; all-zero codes keep the given α
    assert 0 < refit_alpha(H, t, -twn_codes(t, "binary")) <= 1e-8 * np.abs(t).max()
    assert refit_alpha(H, t, np.zeros(12), 0.5) == 0.5


def test_initial_scales_and_threshold_codes():
    t = np.array([0.1, -0.5, 0.05, 0.9, -0.02])
    assert init_alpha(t, "binary") == pytest.approx(np.abs(t).mean())
    big = np.abs(t) > 0.7 * np.abs(t).mean()
    assert init_alpha(t, "ternary") == pytest.approx(np.abs(t)[big].mean())
    assert np.array_equal(twn_codes(t, "ternary"), np.sign(t) * big)
    # round-to-nearest at α: binary is the sign, ternary the threshold α/2
    for grid in ("binary", "ternary"):
        a = init_alpha(t, grid)
        c = codes_of_levels(rtn(spin_problem(np.eye(5), t, a, grid)), grid)
        want = np.where(t >= 0, 1, -1) if grid == "binary" else np.sign(t) * (np.abs(t) > a / 2)
        assert np.array_equal(c, want)
    with pytest.raises(QuboNNError, match=r"expected a spin grid \('binary', 'ternary'\), got 'signed'"):
        spin_problem(np.eye(5), t, 1.0, "signed")


@pytest.mark.parametrize("grid,m", [("binary", 10), ("ternary", 7)])
def test_every_method_against_brute_force_at_fixed_scale(grid, m):
    H, t = _row(m, 4)
    a = init_alpha(t, grid)
    p = spin_problem(H, t, a, grid, 0.1)
    C = _codes(grid, m)
    E = _direct(H, t, a, C, 0.1)
    e_min = float(E.min())
    tol = 1e-12
    ks = {"rtn": rtn(p), "gptq": gptq(p, True), "cd": coordinate_descent(p, gptq(p, True))[0],
          "exact": sphere_decode(p)[0],
          "pipeline": solve_levels(p, "qubo", encoding="unary", levels=3, seed=0, refine_span=None, sampler="neal",
                                   params={"num_reads": 4, "num_sweeps": 500})[0],
          "batch": solve_levels(p, "qubo", seed=0, params={"num_reads": 4, "num_sweeps": 200})[0],
          "batch-from-cd": solve_levels_batch([p], [0], k_start="cd", num_reads=4, num_sweeps=200, rounds=2)[0][0]}
    bqm = spin_bqm(H, t, a, grid, 0.1)
    ss = dimod.SampleSet.from_samples_bqm(*_tabu(bqm, seed=0))
    sig = ss.first.sample
    sig = np.array([sig[v] for v in range(bqm.num_variables)])
    ks["tabu"] = levels_of_codes(sig if grid == "binary" else ternary_from_spins(sig), grid)
    for name, k in ks.items():
        assert p.feasible(k), name
        c = codes_of_levels(k, grid)
        assert p.energy(k) == pytest.approx(row_energy(H, t, a, c, 0.1), abs=1e-12), name
        assert p.energy(k) >= e_min - tol, name
    for name in ("exact", "pipeline", "batch", "tabu"):          # these reach the optimum of such small rows
        assert p.energy(ks[name]) == pytest.approx(e_min, abs=1e-12), name
    assert p.energy(ks["cd"]) <= p.energy(ks["gptq"]) + tol
    b = box_lower_bound(p)
    assert b["lower_bound"] <= e_min + 1e-12
    if grid == "binary":      # the diagonal shift tightens the plain box relaxation on ±1 rows
        assert b["shift"] > 0 and b["lower_bound"] > box_lower_bound(p, shift=False)["lower_bound"]


def _tabu(bqm, seed):
    from qubo_nn.samplers.registry import sample

    ss = sample(bqm, "tabu", seed=seed, num_reads=1, timeout=50)
    return ss.record.sample[:, [ss.variables.index(v) for v in range(bqm.num_variables)]], bqm


@pytest.mark.parametrize("grid,m", [("binary", 9), ("ternary", 6)])
def test_alternation_chain_against_the_joint_brute_force_optimum(grid, m):
    """min over codes and α>0 by brute force (closed-form α per code vector): every method is above it,
    each method of the chain is not above the one it starts from, and the pipeline is not above the
    brute-force optimum at the α it starts from."""
    H, t = _row(m, 5)
    C = _codes(grid, m)
    joint = min(row_energy(H, t, refit_alpha(H, t, c), c) for c in C)
    res = spin_row_task({"H": H, "t": t, "const": 0.0, "grid": grid, "methods": ["rtn", "gptq", "cd", "qubo"],
                         "qubo": {"encoding": "unary", "sampler": "neal", "seed": 0, "levels": 3, "refine_span": None,
                                  "params": {"num_reads": 4, "num_sweeps": 500}}})
    E = res["energy"]
    for name, e in E.items():
        c, a = res["codes"][name], res["alpha"][name]
        assert set(np.unique(c)) <= ({-1, 1} if grid == "binary" else {-1, 0, 1})
        assert e == pytest.approx(row_energy(H, t, a, c), abs=1e-14) and e >= joint - 1e-12, name
        assert a == pytest.approx(refit_alpha(H, t, c, a), rel=1e-12), name        # α is refit for its codes
    assert E["qubo"] <= E["cd"] + 1e-14 <= E["gptq"] + 2e-14
    # qubo's first solve is at cd's final α and exact on so small a row: not above that α's optimum
    at_cd = _direct(H, t, res["alpha"]["cd"], C).min()
    assert E["qubo"] <= at_cd + 1e-12
    # (codes ↔ α alternation is a local method in α: it can stop above the joint optimum)
    assert joint <= at_cd + 1e-12


def test_alternate_never_returns_a_worse_pair_than_its_first_refit():
    H, t = _row(8, 6)
    calls = []

    good = twn_codes(t, "binary")

    def bad_solver(p, k_prev):               # the sign first, then its opposite (far worse)
        calls.append(1)
        return levels_of_codes(good if len(calls) == 1 else -good, "binary")

    c, a, info = alternate(H, t, "binary", bad_solver)
    assert len(calls) == 2 and info["energies"][1] > info["energies"][0]
    assert np.array_equal(c, good) and row_energy(H, t, a, c) == pytest.approx(info["energies"][0], abs=1e-15)


# ---------------------------------------------------------------- workflows

def _tiny_head():
    from qubo_nn.core.head import Head
    from qubo_nn.data.featureset import FeatureSet

    g = torch.Generator().manual_seed(0)
    C, D, n = 3, 8, 200
    means = 2.0 * torch.rand(C, D, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    X = torch.relu(means[y] + torch.randn(n, D, generator=g))
    W = 0.5 * torch.randn(C, D, generator=g)
    return Head(W, 0.1 * torch.randn(C, generator=g)), FeatureSet(X, y, C)


@pytest.mark.parametrize("grid,sampler", [("binary", "neal"), ("ternary", "neal"), ("binary", "batch-anneal"),
                                          ("ternary", "batch-anneal")])
def test_quantize_head_on_a_spin_grid(grid, sampler):
    from qubo_nn.curvature.head_stats import HeadStats
    from qubo_nn.workflows.head_quantize import QuantizeConfig, quantize_head

    head, train = _tiny_head()
    cfg = QuantizeConfig(grid=grid, method="qubo", sampler=sampler, device="cpu", dtype="float64", seed=0,
                         sampler_params={"num_sweeps": 200}, num_reads=2)
    res = quantize_head(head, train, None, cfg)
    stats = HeadStats(head, train, dtype="float64", device="cpu")
    D = head.dim
    for name, mres in res.methods.items():
        codes = mres.codes
        assert set(codes.unique().tolist()) <= ({-1, 1} if grid == "binary" else {-1, 0, 1}), name
        for c in range(head.num_classes):
            model = stats.block(torch.arange(c * (D + 1), c * (D + 1) + D))
            Ht = model.H.numpy() + cfg.damping_rel * float(model.H.diagonal().mean()) * np.eye(D)
            w = mres.head.W[c].numpy()
            a = float(np.abs(w).max())
            assert np.allclose(np.abs(w[codes[c].numpy() != 0]), a, rtol=1e-12), name       # one α per row
            d = w - model.theta0.numpy()
            assert mres.row_energies[c] == pytest.approx(float(model.L0) + 0.5 * d @ Ht @ d, abs=1e-10), name
    for c in range(head.num_classes):
        E = {m: res.methods[m].row_energies[c] for m in res.methods}
        assert E["qubo"] <= E["cd"] + 1e-12 and E["cd"] <= E["gptq"] + 1e-12
    assert torch.equal(res.head.W, res.methods["qubo"].head.W)
    assert res.methods["qubo"].info["grid"] == grid
    if sampler == "batch-anneal":       # the batched stage again on the same classical answers: same codes
        from qubo_nn.curvature.head_ce import HeadCE
        from qubo_nn.workflows.spin_quantize import spin_head_rows

        src = HeadCE(head.to("cpu", torch.float64), train, 0.0, "cpu", "float64", 4096, None, 0)
        params = {"num_reads": 2, "num_sweeps": 200}
        first = spin_head_rows(src, cfg, ["rtn", "gptq", "cd"], params, {}, keep_rows=True)
        again = spin_head_rows(src, cfg, ["rtn", "gptq", "cd", "qubo"], params, {}, classical=first)
        assert torch.equal(again["codes"]["qubo"], res.methods["qubo"].codes.to(torch.float64))
        assert "qubo" not in first["codes"] and again["energies"]["cd"] == first["energies"]["cd"]


@pytest.mark.parametrize("grid,method", [("binary", "gptq"), ("ternary", "cd"), ("binary", "rtn")])
def test_quantize_network_on_a_spin_grid(grid, method, one_thread):
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig, quantize_network
    from tests.test_network_quantize import _net_and_data

    net, calib, test, labels = _net_and_data()
    cfg = NetworkQuantizeConfig(grid=grid, method=method, first_last_bits=8, calib=12, group_size=20, device="cpu",
                                bn_correct=True, solve_budget_s=30.0)
    res = quantize_network(net, calib, test, labels, cfg)
    layers = {L["layer"]: L for L in res.record["layers"]}
    for name in ("conv2", "down"):
        k = res.levels[name].long()
        assert set(k.unique().tolist()) <= ({-1, 1} if grid == "binary" else {-1, 0, 1})
        assert layers[name]["grid"] == grid and layers[name]["alpha_iterations"] >= 1
        e = layers[name]["alpha_energies"]
        assert layers[name]["energy_spin"] == min(e)     # the best (codes, α) of the alternation is kept
    for name in ("conv1", "fc"):
        assert layers[name]["bits"] == 8 and "grid" not in layers[name]
    assert "bn_correct" in res.record and res.record["quantized"]["test_acc"] >= 0


@pytest.mark.parametrize("grid,m", [("binary", 10), ("ternary", 7)])
def test_bench_spins_row_scores_against_brute_force(load_script, monkeypatch, grid, m):
    """benchmarks/bench_spins.py's row record: energies are the problem's, the best known is the
    brute-force optimum on a tiny row, excess ≥ 0 and the certified bound is below it."""
    bs = load_script("benchmarks/bench_spins.py")
    monkeypatch.setitem(bs.LONG, "num_sweeps", 200)     # tiny rows: short runs
    monkeypatch.setitem(bs.HOT, "params", {"num_reads": 2, "num_sweeps": 300})
    H, t = _row(m, 7)
    r = bs.run_row(H, t, 0.05, grid, seed=0, encodings=True)
    E_all = _direct(H, t, r["alpha"], _codes(grid, m), 0.05)
    assert r["energy_best_known"] == pytest.approx(float(E_all.min()), abs=1e-12)
    assert all(x >= -1e-12 for x in r["excess"].values())
    assert r["bound"]["lower_bound"] <= float(E_all.min()) + 1e-12 and r["bound_gap"] >= 0
    assert r["info"]["pipeline"]["stage"] in ("classical", "anneal", "polish")
    assert r["info"]["batch"]["stage"] in ("classical", "anneal", "polish")
    assert set(r["excess"]) == set(bs.METHODS)
    summary = bs.summarise([dict(r, dataset="tiny", row=0)])
    for m in ("pipeline", "batch"):
        assert summary[grid]["methods"][m]["rows_at_best_known"] == 1
    assert summary[grid]["by_dataset"]["tiny"]["rows"] == 1
    assert "batch" in bs.render({"argv": {"rows": 1, "seed": 0}, "datasets": ["tiny"], "loadavg_start": (0, 0, 0),
                                 "loadavg_end": (0, 0, 0), "wall_time_s": 1.0, "summary": summary,
                                 "rows": [dict(r, dataset="tiny", row=0)]})


@pytest.mark.parametrize("grid", ["binary", "ternary"])
def test_row_gptq_reuses_its_factor_and_equals_gptq_at_every_scale(grid):
    H, t = _row(12, 8)
    g = RowGptq(H)
    for a in (0.05, 0.2, 0.7):
        p = spin_problem(H, t, a, grid, 0.3)
        for act in (True, False):
            assert np.array_equal(g(p, act), gptq(p, act))
    assert set(g._factors) == {True, False}


@pytest.mark.parametrize("grid,m", [("binary", 9), ("ternary", 6)])
def test_batched_anneal_stage_on_rows_against_brute_force(grid, m):
    """anneal_spin_rows on three rows at once: never above its start (cd's codes and α), α refit for the
    returned codes, and the returned (codes, α) not above the brute-force optimum at the start's α;
    each row's answer is the same alone as in the batch (one seed per row)."""
    rows, starts, alphas = [], [], []
    for j in range(3):
        H, t = _row(m, 20 + j)
        rows.append({"H": H, "t": t, "const": 0.01})
        c, a, _ = alternate(H, t, grid, lambda p, k: coordinate_descent(p, gptq(p, True))[0], None, 0.01)
        starts.append(c)
        alphas.append(a)
    res = anneal_spin_rows(rows, grid, starts, alphas, [1, 2, 3], num_reads=4, num_sweeps=100)
    C = _codes(grid, m)
    for r, c0, a0, o in zip(rows, starts, alphas, res):
        e0 = row_energy(r["H"], r["t"], a0, c0, 0.01)
        assert o["energy"] <= e0 + 1e-15
        assert o["energy"] == pytest.approx(row_energy(r["H"], r["t"], o["alpha"], o["codes"], 0.01), abs=1e-15)
        assert o["energy"] <= float(_direct(r["H"], r["t"], a0, C, 0.01).min()) + 1e-12
        assert o["stage"] in ("classical", "anneal", "polish")
        if o["stage"] != "classical":
            assert o["alpha"] == pytest.approx(refit_alpha(r["H"], r["t"], o["codes"], o["alpha"]), rel=1e-12)
    alone = anneal_spin_rows(rows[1:2], grid, starts[1:2], alphas[1:2], [2], num_reads=4, num_sweeps=100)[0]
    assert np.array_equal(alone["codes"], res[1]["codes"]) and alone["energy"] == res[1]["energy"]


def test_batched_spin_stage_refuses_parameters_it_does_not_take():
    from qubo_nn.workflows.head_quantize import QuantizeConfig, quantize_head

    head, train = _tiny_head()
    cfg = QuantizeConfig(grid="binary", method="qubo", device="cpu", dtype="float64",
                         sampler_params={"beta_range": [0.1, 1.0]})
    with pytest.raises(QuboNNError, match=r"sampler 'batch-anneal' does not accept parameter\(s\) beta_range"):
        quantize_head(head, train, None, cfg)
