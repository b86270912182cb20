"""Discrete heads (issue 19): the local model of a code-flip step against the true loss, acceptance
on the true loss, STE's forward pass, the row problems and the α refit against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize
import torch

from qubo_nn.core.head import Head, evaluate
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.data.featureset import FeatureSet, realistic_features
from qubo_nn.errors import QuboNNError
from qubo_nn.train.sgd import convex_optimum
from qubo_nn.train.ste import quantize_rows, ste_weights, tune_ste
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.core.spins import alpha_floor, codes_of_levels, levels_of_codes, refit_alpha, row_energy, spin_problem
from qubo_nn.workflows import discrete_steps as ds
from qubo_nn.workflows import train_discrete as td


def tiny(C=4, D=6, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g, dtype=torch.float64)
    W = torch.randn(C, D, generator=g, dtype=torch.float64)
    y = torch.argmax(X @ W.T + 0.8 * torch.randn(n, C, generator=g, dtype=torch.float64), 1)
    return FeatureSet(X, y, C), Head(0.5 * torch.randn(C, D, generator=g, dtype=torch.float64),
                                    0.1 * torch.randn(C, generator=g, dtype=torch.float64))


def discrete(head: Head, grid: str) -> td.DiscreteHead:
    codes, alpha = td.threshold_codes(head.W, grid)
    return td.DiscreteHead(codes, alpha, head.b.to(torch.float64), grid)


@pytest.mark.parametrize("rows", [[1], [0, 2]])
def test_flip_step_model_is_exact_to_second_order_with_the_stated_remainder(rows):
    """L(Ŵ+εΔ) − [L + εgᵀΔ + ½ε²ΔᵀHΔ] is O(ε³): at most (1/6)·mean_n range_c(δz_n)³ (the third derivative
    of log-sum-exp along v is the third central moment of v under softmax, |·| ≤ range(v)³), and it
    shrinks about 8× when ε halves (checked below 0.2 per halving for ε ≤ 1/4)."""
    feats, head = tiny()
    dh = discrete(head, "binary")
    stats = HeadStats(dh.head().to("cpu", torch.float64), feats, device="cpu", dtype="float64")
    D = head.dim
    idx = ds._flat_idx(rows, D)
    model = stats.block(idx)
    flips = torch.zeros(len(idx), dtype=torch.float64)
    flips[::2] = 1.0                                   # flip every other code of the block
    codes = dh.codes[rows].reshape(-1).to(torch.float64)
    alpha = dh.alpha[rows].repeat_interleave(D)
    delta = -2 * alpha * codes * flips                 # Δ = −2α s_F
    errs = []
    for eps in (0.25, 0.125, 0.0625):
        d = eps * delta
        true = stats.trial_loss(idx, model.theta0 + d)
        pred = float(model.predict(d))
        dz = torch.zeros(feats.n, head.num_classes, dtype=torch.float64)
        for j, c in enumerate(rows):
            dz[:, c] = feats.X @ d[j * D:(j + 1) * D]
        rng = dz.max(1).values - dz.min(1).values      # unmoved logits are 0 columns of dz
        bound = float((rng ** 3).mean()) / 6
        assert abs(true - pred) <= bound + 1e-12
        errs.append(abs(true - pred))
    assert errs[1] / errs[0] < 0.2 and errs[2] / errs[1] < 0.2   # ~1/8 each halving (third order)


@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_block_problem_with_one_alpha_per_row_is_the_block_quadratic_for_every_code_vector(grid):
    """A block of two rows carries each row's α (spin_problem with a per-variable α)."""
    rng = np.random.default_rng(1)
    m = 6
    A = rng.standard_normal((m, m + 2))
    H, t, alpha = A @ A.T + 0.1 * np.eye(m), rng.standard_normal(m), np.repeat([0.7, 0.4], m // 2)
    p = spin_problem(H, t, alpha, grid, const=0.3)
    values = (-1, 1) if grid == "binary" else (-1, 0, 1)
    for codes in itertools.product(values, repeat=m):
        c = np.array(codes)
        r = alpha * c - t
        assert p.energy(levels_of_codes(c, grid)) == pytest.approx(0.3 + 0.5 * r @ H @ r, rel=1e-12, abs=1e-12)
        assert np.array_equal(codes_of_levels(levels_of_codes(c, grid), grid), c)


@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_best_alpha_matches_a_numeric_minimiser_and_round_row_is_near_brute_force(grid):
    rng = np.random.default_rng(2)
    m = 7
    A = rng.standard_normal((m, m + 3))
    H, t = A @ A.T / m + 0.05 * np.eye(m), rng.standard_normal(m)
    c = np.sign(t)
    c[0] = -c[0]
    a = refit_alpha(H, t, c)
    assert refit_alpha(H, t, -np.sign(t)) == alpha_floor(t)   # a negative optimum is clipped at the floor
    num = scipy.optimize.minimize_scalar(lambda x: 0.5 * (x * c - t) @ H @ (x * c - t), bounds=(1e-8, 10),
                                         method="bounded", options={"xatol": 1e-10})
    assert a == pytest.approx(num.x, rel=1e-6)
    values = (-1, 1) if grid == "binary" else (-1, 0, 1)
    best = min(row_energy(H, t, refit_alpha(H, t, np.array(cc)), np.array(cc))
               for cc in itertools.product(values, repeat=m))
    codes0, alpha0 = td.threshold_codes(torch.from_numpy(t)[None], grid)
    codes, alpha, energy = td.round_row(H, t, grid, codes0[0].numpy(), float(alpha0[0]), rounds=10)
    assert energy >= best - 1e-12
    assert energy == pytest.approx(row_energy(H, t, alpha, codes), rel=1e-12)
    start = row_energy(H, t, float(alpha0[0]), codes0[0].numpy())
    assert energy <= start + 1e-15                 # the alternation never ends above its start
    assert (energy - best) <= 0.25 * (start - best) + 1e-12   # and closes most of the gap here


@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_ste_forward_is_the_quantized_head_and_backward_is_straight_through(grid):
    W = torch.randn(5, 9, generator=torch.Generator().manual_seed(3), requires_grad=True)
    codes, alpha = quantize_rows(W.detach(), grid)
    Q = ste_weights(W, grid)
    assert torch.equal(Q.detach(), W.detach() + (alpha[:, None] * codes - W.detach()))
    assert torch.allclose(Q.detach(), alpha[:, None] * codes, atol=1e-6)
    G = torch.randn(5, 9, generator=torch.Generator().manual_seed(4))
    (Q * G).sum().backward()
    assert torch.equal(W.grad, G)
    assert set(codes.unique().tolist()) <= ({-1.0, 1.0} if grid == "binary" else {-1.0, 0.0, 1.0})


def test_a_step_is_kept_only_if_the_true_loss_falls(monkeypatch):
    feats, head = tiny(seed=5)
    cfg = td.DiscreteConfig(grid="binary", step_solver="cd", dtype="float64")
    dh = discrete(head, "binary")
    stats = HeadStats(dh.head().to("cpu", torch.float64), feats, device="cpu", dtype="float64")
    before_codes, before_loss = dh.codes.clone(), stats.loss
    # a solver that proposes the flip of every code of the row: predicted gain faked, true loss rises
    def bad(p, method="qubo", **kw):
        k = 1 - levels_of_codes(dh.codes[0].numpy(), "binary")
        return k, {"stage": "fake", "energy": -1e9}
    monkeypatch.setattr(ds, "solve_levels", bad)
    monkeypatch.setattr(IntegerProblem, "energy", lambda self, k: -1e9 if np.any(k != levels_of_codes(
        before_codes[0].numpy(), "binary")) else 0.0)
    rec = ds.block_step(stats, dh, [0], cfg, seed=0)
    assert rec["loss_after"] > before_loss and not rec["accepted"]
    assert torch.equal(dh.codes, before_codes) and stats.loss == before_loss


@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_qubo_training_never_raises_the_training_loss_and_beats_its_start(grid):
    tr, te = realistic_features(n_train=400, n_test=100, dim=12, num_classes=4, seed=0)
    head, _ = convex_optimum(tr, l2=1e-2, device="cpu", max_iter=100)
    cfg = td.DiscreteConfig(grid=grid, method="qubo", step_solver="cd", sweeps=2, patience=3)
    fit, val = td.split_fit_val(tr, cfg.val_fraction, cfg.seed)
    start, _ = td.ptq(head, fit, cfg)
    losses = []
    best, info = ds.qubo_train(start, fit, val, cfg, on_sweep=lambda s, cur: losses.append(evaluate(cur.head(), fit)[0]))
    l0 = evaluate(start.head(), fit)[0]
    assert all(b <= a + 1e-7 for a, b in zip([l0, *losses], losses))      # per sweep, on the fit split
    assert info["sweeps"][0]["accepted"] >= 1 and losses[0] < l0 - 1e-6
    assert set(best.codes.unique().tolist()) <= ({-1, 1} if grid == "binary" else {-1, 0, 1})


def test_ste_tuning_records_every_point_and_its_choice_is_the_best_validation_loss():
    tr, _ = realistic_features(n_train=600, n_test=100, dim=12, num_classes=3, seed=1)
    head, _ = convex_optimum(tr, l2=1e-2, device="cpu", max_iter=100)
    fit, val = td.split_fit_val(tr, 0.2, 0)
    out = tune_ste(head, fit, val, "binary", (1e-3, 1e-2), epochs=3, batch=64, seed=0)
    curves = out["val_loss_by_lr"]
    assert set(curves) == {"0.001", "0.01"} and all(len(v) == 3 for v in curves.values())
    assert out["val_loss"] <= min(min(v) for v in curves.values()) + 1e-12


def test_bad_settings_are_refused():
    with pytest.raises(QuboNNError, match="grid must be one of"):
        td.DiscreteConfig(grid="signed").validate()
    with pytest.raises(QuboNNError, match="method must be one of"):
        td.DiscreteConfig(method="sgd").validate()
    with pytest.raises(QuboNNError, match="sweeps must be an integer >= 1, got 0"):
        td.DiscreteConfig(sweeps=0).validate()


def test_the_experiment_resumes_and_its_summary_is_recomputed_from_the_records(tmp_path):
    from dataclasses import replace

    from qubo_nn.study.discrete import DiscreteExperimentConfig, run_discrete_experiment

    cfg = DiscreteExperimentConfig(dataset="synthetic-features", grid="ternary", methods=("ptq", "qubo"),
                                   seeds=(0, 1), n_train=300, n_test=100, dim=8, num_classes=3,
                                   train=replace(td.DiscreteConfig(), step_solver="cd", sweeps=1))
    first = run_discrete_experiment(cfg, tmp_path)
    recs = sorted((tmp_path / "per-seed").glob("*.json"))
    assert [p.name for p in recs] == ["ternary-ptq-seed0.json", "ternary-ptq-seed1.json",
                                      "ternary-qubo-seed0.json", "ternary-qubo-seed1.json"]
    stamps = [p.stat().st_mtime_ns for p in recs]
    again = run_discrete_experiment(cfg, tmp_path)
    assert [p.stat().st_mtime_ns for p in recs] == stamps          # loaded, not recomputed
    assert again["methods"] == first["methods"]
    import json
    vals = [json.loads(p.read_text())["final"]["test_acc"] for p in recs[2:]]
    assert first["methods"]["qubo"]["test_acc"]["mean"] == pytest.approx(sum(vals) / 2, rel=1e-12)
    assert (tmp_path / "discrete_ternary.png").stat().st_size > 10_000


def test_train_cli_refuses_options_of_the_other_grid(tmp_path):
    from click.testing import CliRunner

    from qubo_nn.cli.main import main

    r = CliRunner().invoke(main, ["train", "--grid", "binary", "--epochs", "3", "--out", str(tmp_path / "h.pt")])
    assert r.exit_code == 2 and "--epochs applies to --grid fp32 (SGD) only, not to --grid binary" in r.output
    r = CliRunner().invoke(main, ["train", "--method", "ste", "--out", str(tmp_path / "h.pt")])
    assert r.exit_code == 2 and "--method applies to --grid binary/ternary only, not to --grid fp32" in r.output
    r = CliRunner().invoke(main, ["train", "--grid", "binary", "--out", str(tmp_path / "h.json")])
    assert r.exit_code == 2 and "would be the same file" in r.output
    r = CliRunner().invoke(main, ["train", "--grid", "ternary", "--method", "ste", "--val-every", "5", "--sweeps", "2",
                                  "--out", str(tmp_path / "h.pt")])
    assert r.exit_code == 2 and "--sweeps, --val-every apply to --method qubo only, not to --method ste" in r.output
    assert not list(tmp_path.iterdir())


def test_experiment_grid_refuses_options_of_the_fp32_comparison_and_runs_tiny(tmp_path):
    import json

    from click.testing import CliRunner

    from qubo_nn.cli.main import main

    r = CliRunner().invoke(main, ["experiment", "--grid", "binary", "--epochs", "3", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--epochs: not an option of experiment --grid binary" in r.output
    r = CliRunner().invoke(main, ["experiment", "--grid", "binary", "--n-train", "100", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--n-train: only for --dataset synthetic-features" in r.output
    assert not (tmp_path / "y").exists()
    r = CliRunner().invoke(main, ["experiment", "--grid", "ternary", "--dataset", "synthetic-features",
                                  "--n-train", "200", "--n-test", "60", "--feature-dim", "6", "--num-classes", "3",
                                  "--seeds", "1", "--sweeps", "1", "--out", str(tmp_path / "d"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["methods"]) == {"ptq", "ste", "qubo"} and out["grid"] == "ternary"
    assert (tmp_path / "d" / "discrete_ternary.png").exists()


# ---------------------------------------------------------------- the stronger STE and the qubo regularisers

@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_scaled_ste_starts_at_its_discrete_head_forward_is_the_head_and_alpha_gets_the_exact_gradient(grid):
    from qubo_nn.train.ste import scaled_codes, scaled_ste_weights

    g = torch.Generator().manual_seed(7)
    codes = torch.randint(-1, 2, (5, 9), generator=g).float()
    if grid == "binary":
        codes = torch.where(codes >= 0, 1.0, -1.0)
    alpha = torch.rand(5, generator=g) + 0.1
    assert torch.equal(scaled_codes(alpha[:, None] * codes, alpha, grid), codes)      # the start is a fixed point
    W = (alpha[:, None] * codes + 0.2 * alpha[:, None] * torch.randn(5, 9, generator=g)).requires_grad_(True)
    a = alpha.clone().requires_grad_(True)
    Q = scaled_ste_weights(W, a, grid)
    k = scaled_codes(W.detach(), alpha, grid)
    assert torch.equal(Q.detach(), alpha[:, None] * k)                                 # forward = the quantized head
    G = torch.randn(5, 9, generator=g)
    (Q * G).sum().backward()
    assert torch.equal(W.grad, G)                                                      # straight through
    assert torch.allclose(a.grad, (G * k).sum(1))                                      # dQ/dα = codes


def test_ste_from_the_ptq_start_is_never_worse_on_validation_than_ptq_and_the_start_is_chosen_on_validation():
    tr, te = realistic_features(n_train=600, n_test=200, dim=12, num_classes=4, seed=2)
    head, _ = convex_optimum(tr, l2=1e-2, device="cpu", max_iter=100)
    cfg = td.DiscreteConfig(grid="binary", method="ste", ste_lrs=(1e-3, 1e-2), ste_epochs=3, ste_batch=64)
    start = td.ptq_start(head, tr, cfg)
    _, rec = td.train_discrete(head, tr, te, cfg, start=start)
    tun = rec["info"]["ste_tunings"]
    assert set(tun) == {"fp32", "ptq"}
    assert rec["info"]["ste_start"] == min(tun, key=lambda s: tun[s]["val_loss"])
    fit, val = td.split_fit_val(tr, cfg.val_fraction, cfg.seed)
    assert tun["ptq"]["val_loss"] <= evaluate(start.start.head(), val)[0] + 1e-6       # epoch 0 is the ptq start
    with pytest.raises(QuboNNError, match="ste_starts must be a non-empty subset"):
        td.DiscreteConfig(ste_starts=("sgd",)).validate()
    with pytest.raises(QuboNNError, match="prior_grid must be a non-empty list of finite numbers >= 0"):
        td.DiscreteConfig(prior_grid=(-1.0,)).validate()


def test_the_prior_objective_is_exact_and_its_steps_never_raise_it():
    feats, head = tiny(seed=9)
    dh = discrete(head, "ternary")
    lam = 0.3
    stats = HeadStats(dh.head().to("cpu", torch.float64), feats, device="cpu", dtype="float64")
    prior = ds.PriorStats(stats, head.W, lam)

    def objective(d: td.DiscreteHead) -> float:
        W = d.alpha[:, None] * d.codes.double()
        return HeadStats(d.head().to("cpu", torch.float64), feats, device="cpu", dtype="float64").loss + \
            0.5 * lam * float(((W - head.W.double()) ** 2).sum())

    assert prior.loss == pytest.approx(objective(dh), rel=1e-12)
    trial = dh.clone()
    trial.codes[1] = -trial.codes[1]
    idx = ds._flat_idx([1], dh.codes.shape[1])
    assert prior.trial_loss(idx, (trial.alpha[1] * trial.codes[1].double())) == pytest.approx(objective(trial), abs=1e-7)  # head() is float32
    dl = ds.per_sample_change(stats, idx, trial.alpha[1] * trial.codes[1].double())
    assert float(dl.mean()) == pytest.approx(stats.trial_loss(idx, trial.alpha[1] * trial.codes[1].double())
                                             - stats.loss, abs=1e-12)
    cfg = td.DiscreteConfig(grid="ternary", step_solver="cd")
    for j, rows in enumerate([[0], [1], [2, 3], [1]]):
        before = prior.loss
        rec = ds.block_step(stats, dh, rows, cfg, seed=j, prior=prior)
        assert prior.loss <= before + 1e-12                               # acceptance on the prior objective
        assert prior.loss == pytest.approx(objective(dh), abs=1e-7)       # the state follows the codes
        assert rec["accepted"] == (prior.loss < before)


def test_a_huge_noise_gate_accepts_nothing_and_qubo_picks_its_regulariser_on_validation():
    tr, te = realistic_features(n_train=500, n_test=100, dim=10, num_classes=4, seed=3)
    head, _ = convex_optimum(tr, l2=1e-2, device="cpu", max_iter=100)
    cfg = td.DiscreteConfig(grid="binary", method="qubo", step_solver="cd", sweeps=2, prior_grid=(0.0, 1.0),
                            z_grid=(0.0, 1e6))
    start = td.ptq_start(head, tr, cfg)
    _, rec = td.train_discrete(head, tr, te, cfg, start=start)
    runs = rec["info"]["qubo_grid"]
    assert [(r["prior_rel"], r["z"]) for r in runs] == [(0.0, 0.0), (0.0, 1e6), (1.0, 0.0), (1.0, 1e6)]
    for r in runs:
        if r["z"] == 1e6:
            assert all(s["accepted"] == 0 for s in r["sweeps"])
    assert rec["info"]["qubo"]["best_val_loss"] == min(r["best_val_loss"] for r in runs)
    assert runs[2]["prior_lambda"] > 0 and runs[0]["prior_lambda"] == 0


@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_batched_anneal_sweeps_never_raise_the_training_loss(grid):
    tr, _ = realistic_features(n_train=400, n_test=100, dim=12, num_classes=4, seed=0)
    head, _ = convex_optimum(tr, l2=1e-2, device="cpu", max_iter=100)
    cfg = td.DiscreteConfig(grid=grid, method="qubo", step_solver="anneal", sweeps=2, patience=3,
                            sampler_params={"num_reads": 4, "num_sweeps": 200})
    fit, val = td.split_fit_val(tr, cfg.val_fraction, cfg.seed)
    start, _ = td.ptq(head, fit, cfg)
    stats = HeadStats(start.head().to("cpu", torch.float64), fit, device="cpu", dtype="float64")
    dh, before = start.clone(), stats.loss
    steps = ds.anneal_sweep(stats, dh, [[0], [1], [2], [3]], cfg, seed=0)
    for s in steps:
        if s["accepted"]:
            assert s["loss_after"] < s["loss_before"]
    assert stats.loss <= before
    assert stats.loss == pytest.approx(HeadStats(dh.head().to("cpu", torch.float64), fit, device="cpu",
                                                 dtype="float64").loss, abs=1e-6)


def test_a_saved_ptq_start_is_reused_only_for_the_same_settings(tmp_path):
    from dataclasses import replace

    from qubo_nn.study.discrete import load_start, save_start, start_digest

    tr, _ = realistic_features(n_train=300, n_test=50, dim=8, num_classes=3, seed=4)
    head, _ = convex_optimum(tr, l2=1e-2, device="cpu", max_iter=100)
    cfg = td.DiscreteConfig(grid="ternary")
    start = td.ptq_start(head, tr, cfg)
    d = start_digest(cfg, "feat", 1e-2)
    save_start(start, tmp_path / "s.pt", d)
    back = load_start(tmp_path / "s.pt", d)
    assert torch.equal(back.start.codes, start.start.codes) and torch.equal(back.head.alpha, start.head.alpha)
    assert back.l2 == start.l2 and back.wall_time_s == start.wall_time_s
    assert start_digest(replace(cfg, method="qubo", sweeps=5, prior_grid=(0.0, 1.0)), "feat", 1e-2) == d
    assert start_digest(replace(cfg, alt_rounds=2), "feat", 1e-2) != d
    assert load_start(tmp_path / "s.pt", start_digest(replace(cfg, seed=1), "feat", 1e-2)) is None


@pytest.mark.parametrize("grid", td.DISCRETE_GRIDS)
def test_validation_checks_inside_a_sweep_keep_the_codes_of_the_best_checkpoint(grid):
    """``val_every``: the trace is the validation loss after every checked block (recomputed here by replaying
    the same steps), the codes put back are those of its first minimum; with the fit split as the validation
    split (and no L2) every accepted step lowers it, so nothing is undone and the codes are the plain sweep's."""
    from qubo_nn.runtime import child_seed

    tr, _ = realistic_features(n_train=160, n_test=50, dim=12, num_classes=4, seed=3)
    head, _ = convex_optimum(tr, l2=1e-3, device="cpu", max_iter=100)
    cfg = td.DiscreteConfig(grid=grid, method="qubo", step_solver="cd", sweeps=1, val_every=1)
    fit, val = td.split_fit_val(tr, cfg.val_fraction, cfg.seed)
    start, _ = td.ptq(head, fit, cfg)
    blocks = [[0], [1], [2], [3]]

    def stats_of(dh):
        return HeadStats(dh.head().to("cpu", torch.float64), fit, device="cpu", dtype="float64")

    dh = start.clone()
    steps, stop = ds._sweep_with_val_stop(stats_of(dh), dh, blocks, cfg, 0, val, None, 0.0)
    ref, trace, snaps = start.clone(), [evaluate(start.head(), val)[0]], [start.codes.clone()]
    st = stats_of(ref)
    for j, rows in enumerate(blocks):
        ds.block_step(st, ref, rows, cfg, child_seed(cfg.seed, 0, j))
        trace.append(evaluate(ref.head(), val)[0])
        snaps.append(ref.codes.clone())
    assert [t for _, t in stop["trace"]] == pytest.approx(trace, abs=1e-12)
    k = int(np.argmin(trace))
    assert stop["kept_blocks"] == k and torch.equal(dh.codes, snaps[k])
    assert sum(s["accepted"] for s in steps) >= 1
    assert evaluate(dh.head(), val)[0] <= min(trace) + 1e-12

    plain, same = start.clone(), start.clone()
    s1 = stats_of(plain)
    for j, rows in enumerate(blocks):
        ds.block_step(s1, plain, rows, cfg, child_seed(cfg.seed, 0, j))
    ds._sweep_with_val_stop(stats_of(same), same, blocks, cfg, 0, fit, None, 0.0)
    assert torch.equal(same.codes, plain.codes)
    with pytest.raises(QuboNNError, match="val_every works with step_solver 'qubo' or 'cd'"):
        td.DiscreteConfig(step_solver="anneal", val_every=2).validate()
    assert "val_every" not in td.DiscreteConfig().to_dict()        # absent at 0: old records keep their digests


def test_a_heldout_reference_is_fit_on_each_seeds_fit_split_only(tmp_path):
    """``heldout_reference``: seed k's fp32 head is reference_head(fit split of seed k) (recomputed here), kept
    per seed, and the records of such a run do not pass for those of the shared reference."""
    import json
    from dataclasses import replace

    from qubo_nn.study.discrete import DiscreteExperimentConfig, run_discrete_experiment
    from qubo_nn.train.sgd import reference_head

    cfg = DiscreteExperimentConfig(dataset="synthetic-features", grid="binary", methods=("ptq",), seeds=(0, 1),
                                   n_train=300, n_test=100, dim=8, num_classes=3,
                                   train=replace(td.DiscreteConfig(), step_solver="cd", sweeps=1),
                                   heldout_reference=True)
    run_discrete_experiment(cfg, tmp_path)
    from qubo_nn.study.discrete import load_discrete_features

    train, _, _ = load_discrete_features(cfg)
    for seed in (0, 1):
        saved = torch.load(tmp_path / f"fp32-reference-fit-seed{seed}.pt", weights_only=False)
        fit, val = td.split_fit_val(train, cfg.train.val_fraction, seed)
        ref, _ = reference_head(fit, seed=0, device="cpu")
        torch.testing.assert_close(saved["W"], ref.W, rtol=0, atol=0)
        assert fit.n + val.n == train.n
    assert not (tmp_path / "fp32-reference.pt").exists()
    held = json.loads((tmp_path / "per-seed" / "binary-ptq-seed0.json").read_text())["digest"]
    shared = tmp_path / "shared"
    run_discrete_experiment(replace(cfg, heldout_reference=False, seeds=(0,)), shared)
    assert json.loads((shared / "per-seed" / "binary-ptq-seed0.json").read_text())["digest"] != held
