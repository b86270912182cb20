"""Pipelined hybrid optimizer: true-loss acceptance, retries, time accounting, reproducibility."""
from __future__ import annotations

import pytest
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import synthetic_features
from qubo_nn.core.head import Head, evaluate
from qubo_nn.workflows.head_optimize import HybridConfig, _check_disjoint, hybrid_sweeps, interval_accounting
from qubo_nn.workflows.build import BuildConfig

FAST = {"num_reads": 1, "num_sweeps": 50}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


@pytest.fixture(scope="module")
def tiny():
    train, _ = synthetic_features(n=400, dim=8, num_classes=4, seed=3, n_test=10, separation=0.5)
    return train, Head.init_like_linear(4, 8, seed=0)


def _cfg(**kw) -> HybridConfig:
    build = kw.pop("build", BuildConfig(bits=3))
    return HybridConfig(build=build, sampler_params=dict(FAST), **kw)


def test_accepted_steps_never_raise_the_true_loss(tiny):
    train, head = tiny
    seen = []
    out, rec = hybrid_sweeps(head, train, _cfg(sweeps=2, tol=0.0), "cpu",
                             callback=lambda e, h: seen.append((e, evaluate(h.to("cpu", torch.float64),
                                                                              train.to("cpu", torch.float64))[0])))
    assert len(seen) == len(rec["blocks"]) == rec["blocks_visited"] == 8  # 4 row blocks × 2 sweeps
    prev = evaluate(head.to("cpu", torch.float64), train.to("cpu", torch.float64))[0]
    assert rec["loss_start"] == pytest.approx(prev, abs=1e-5)
    for entry, loss in seen:
        if entry["accepted"]:
            assert loss < prev, entry           # exact float64 loss fell
            assert entry["true_change"] < 0
            assert entry["true_change"] == pytest.approx(loss - prev, abs=2e-5)
        else:
            assert loss == pytest.approx(prev, abs=1e-6), entry   # old weights kept
        # the incremental (HeadStats.update) loss agrees with head.evaluate
        assert entry["attempts"][-1]["loss_after"] == pytest.approx(loss, abs=2e-5)
        prev = loss
    assert rec["accepted"] >= 1
    assert rec["loss_end"] == pytest.approx(prev, abs=1e-5)
    assert rec["loss_end"] < rec["loss_start"]
    assert evaluate(out, train)[0] == pytest.approx(rec["loss_end"], abs=1e-6)


def test_rejected_steps_are_retried_with_more_damping_then_kept(tiny):
    train, head = tiny
    cfg = _cfg(accept_tol=1e9, max_retries=2, damping_growth=3.0)   # nothing can be accepted
    out, rec = hybrid_sweeps(head, train, cfg, "cpu")
    assert torch.equal(out.W, head.W) and torch.equal(out.b, head.b)
    assert rec["accepted"] == 0 and rec["stopped"] == "tol"
    for entry in rec["blocks"]:
        assert not entry["accepted"] and entry["retries"] == 2
        damp = [a["damping"] for a in entry["attempts"]]
        assert len(damp) == 3
        # same head at every attempt (steps undone), so μ grows by exactly the factor
        assert damp[1] / damp[0] == pytest.approx(3.0, rel=1e-5)
        assert damp[2] / damp[1] == pytest.approx(3.0, rel=1e-5)
    assert rec["retries"] == 2 * len(rec["blocks"])


@pytest.mark.parametrize("workers", [1, 2])
def test_time_accounting_adds_up(tiny, workers):
    train, head = tiny
    _, rec = hybrid_sweeps(head, train, _cfg(workers=workers, max_retries=1), "cpu")
    for s in rec["sweeps"]:
        # wall = device + anneal − intersection + gap, exactly by construction of the intervals
        assert s["wall_s"] == pytest.approx(s["device_s"] + s["anneal_s"] - s["intersection_s"] + s["gap_s"], abs=1e-9)
        assert s["hidden_s"] == pytest.approx(s["device_s"] + s["anneal_s"] - s["wall_s"], abs=1e-9)
        assert s["gap_s"] >= -1e-9 and s["intersection_s"] >= 0
        assert s["device_s"] <= s["wall_s"] + 1e-9 and s["anneal_s"] <= s["wall_s"] + 1e-9
        assert s["anneal_cpu_s"] <= workers * s["wall_s"] + 1e-9
    attempts = [a for e in rec["blocks"] for a in e["attempts"]]
    # stage times of the blocks are the interval lengths the accounting used
    assert sum(a["build_s"] + a["evaluate_s"] for a in attempts) == pytest.approx(rec["device_s"], rel=1e-9)
    assert sum(a["solve_s"] for a in attempts) == pytest.approx(rec["anneal_cpu_s"], rel=1e-9)
    assert rec["setup_s"] + rec["wall_s"] + rec["final_eval_s"] <= rec["total_wall_s"] + 1e-9
    assert all(a["stale_steps"] <= workers for a in attempts)


def test_interval_accounting_by_hand():
    acc = interval_accounting([(0.0, 1.0), (2.0, 3.0)], [(0.5, 2.5), (0.75, 1.5)], 0.0, 3.5)
    assert acc["device_s"] == 2.0 and acc["anneal_s"] == 2.0 and acc["anneal_cpu_s"] == 2.75
    assert acc["intersection_s"] == 1.0 and acc["gap_s"] == 0.5
    assert acc["hidden_s"] == 0.5 and acc["overlap"] == 0.25


def test_same_seed_same_result(tiny):
    train, head = tiny
    a, ra = hybrid_sweeps(head, train, _cfg(workers=2, seed=5), "cpu")
    b, rb = hybrid_sweeps(head, train, _cfg(workers=2, seed=5), "cpu")
    assert torch.equal(a.W, b.W) and torch.equal(a.b, b.b)
    assert [e["accepted"] for e in ra["blocks"]] == [e["accepted"] for e in rb["blocks"]]


def test_record_is_json_serializable(tiny):
    import json

    train, head = tiny
    _, rec = hybrid_sweeps(head, train, _cfg(), "cpu")
    back = json.loads(json.dumps(rec))
    assert back["config"]["build"]["bits"] == 3
    for key in ("wall_s", "device_s", "anneal_s", "hidden_s", "overlap", "loss_start", "loss_end"):
        assert isinstance(back[key], float)
    blk = back["blocks"][0]
    assert {"accepted", "retries", "predicted_change", "true_change", "attempts"} <= set(blk)
    assert {"build_s", "solve_s", "evaluate_s", "damping", "energy_best"} <= set(blk["attempts"][0])


@pytest.mark.parametrize("kw, match", [
    ({"sweeps": 0}, "sweeps must be an integer >= 1, got 0"),
    ({"workers": 0}, "workers must be an integer >= 1, got 0"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
    ({"damping_growth": 1.0}, "damping_growth must be > 1, got 1.0"),
    ({"device_threads": 0}, "device_threads must be None or an integer >= 1, got 0"),
])
def test_config_validation(tiny, kw, match):
    train, head = tiny
    with pytest.raises(QuboNNError, match=match):
        hybrid_sweeps(head, train, _cfg(**kw), "cpu")


def test_overlapping_blocks_refused():
    with pytest.raises(QuboNNError, match="blocks of a sweep must be disjoint"):
        _check_disjoint([torch.tensor([0, 1]), torch.tensor([1, 2])])


@pytest.mark.parametrize("kind, kw", [("rows", {}), ("rows", {"per_block": 2}), ("columns", {}),
                                      ("random", {"size": 7})])
def test_trial_loss_matches_update_and_evaluate(tiny, kind, kw):
    from qubo_nn.curvature.head_stats import HeadStats, select_blocks

    train, head = tiny
    stats = HeadStats(head, train, l2=0.01, device="cpu", dtype="float64")
    idx = select_blocks(kind, 4, 8, **kw)[0]
    new = stats.theta[idx] + 0.3 * torch.randn(idx.numel(), generator=torch.Generator().manual_seed(1),
                                                dtype=torch.float64)
    before = stats.theta.clone()
    trial = stats.trial_loss(idx, new)
    assert torch.equal(stats.theta, before)                       # the head did not move
    stats.update(idx, new)
    assert trial == pytest.approx(stats.loss, abs=1e-12)
    assert trial == pytest.approx(evaluate(stats.head(), train.to("cpu", torch.float64), l2=0.01)[0], abs=1e-12)
    # the incremental state after the update agrees with a fresh HeadStats of the moved head:
    # block gradients computed per class row equal the full gradient, and the block Hessian too
    fresh = HeadStats(stats.head(), train, l2=0.01, device="cpu", dtype="float64")
    for blk in select_blocks("rows", 4, 8)[:2] + [idx]:
        a, b = stats.block(blk), fresh.block(blk)
        assert torch.allclose(a.g, b.g, atol=1e-12) and torch.allclose(a.H, b.H, atol=1e-12)
    assert torch.allclose(stats.grad, fresh.grad, atol=1e-12)


# --------------------------------------------------------------------------- the one step policy

@pytest.mark.parametrize("sampler, params", [("gptq", {}), ("cd", {}),
                                             ("pipeline", {"num_reads": 1, "num_sweeps": 20})])
def test_level_samplers_run_inside_the_hybrid(tiny, sampler, params):
    """The hybrid attaches each block's integer form, so the level samplers run (they refuse a bare
    BQM); one sweep, the exact loss does not rise, and their steps are taken."""
    train, head = tiny
    cfg = HybridConfig(build=BuildConfig(bits=3), sampler=sampler, sampler_params=params, max_retries=1)
    out, rec = hybrid_sweeps(head, train, cfg, "cpu")
    assert rec["integer_form_used"] and len(rec["sweeps"]) == 1
    assert rec["loss_end"] <= rec["loss_start"] + 1e-6
    assert rec["accepted"] >= 1 and rec["loss_end"] < rec["loss_start"]
    assert evaluate(out, train)[0] == pytest.approx(rec["loss_end"], abs=1e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_acceptance_never_raises_the_true_loss_on_random_heads(seed):
    """Property over seeded random heads and features: after every block decision the float64 loss
    of the current head is strictly lower if the step was accepted, unchanged (1e-6) if not."""
    train, _ = synthetic_features(n=200, dim=6, num_classes=3, seed=20 + seed, n_test=10, separation=0.3)
    head = Head.init_like_linear(3, 6, seed=seed)
    f64 = train.to("cpu", torch.float64)
    losses = [evaluate(head.to("cpu", torch.float64), f64)[0]]
    decisions = []
    hybrid_sweeps(head, train, _cfg(build=BuildConfig(bits=2, blocks="random", size=5), sweeps=2, tol=0.0,
                                    seed=seed), "cpu",
                  callback=lambda e, h: (decisions.append(e["accepted"]),
                                         losses.append(evaluate(h.to("cpu", torch.float64), f64)[0])))
    for acc, a, b in zip(decisions, losses, losses[1:]):
        assert b < a if acc else b == pytest.approx(a, abs=1e-6)
    assert any(decisions)


def test_hybrid_uses_the_policy(tiny, monkeypatch):
    """Patched to refuse every step, the hybrid keeps the head and retries each block max_retries
    times with μ × growth per retry; the seeds are child_seed(seed, sweep, block, attempt)."""
    from qubo_nn.runtime import child_seed
    from qubo_nn.steps import policy as sp

    train, head = tiny
    monkeypatch.setattr(sp, "accept", lambda before, after, tol=0.0: False)
    out, rec = hybrid_sweeps(head, train, _cfg(max_retries=2, damping_growth=2.0, seed=9), "cpu")
    assert torch.equal(out.W, head.W) and torch.equal(out.b, head.b) and rec["accepted"] == 0
    for e in rec["blocks"]:
        assert set(sp.STEP_KEYS) <= set(e) and e["retries"] == 2 and not e["accepted"]
        damp = [a["damping"] for a in e["attempts"]]
        assert damp[1] == pytest.approx(2 * damp[0], rel=1e-5) and damp[2] == pytest.approx(4 * damp[0], rel=1e-5)
        assert [a["seed"] for a in e["attempts"]] == [child_seed(9, 0, e["block_id"], r) for r in range(3)]
        for a in e["attempts"]:   # E(x) − L0: the damped model's change, beside the energies
            assert a["predicted_change"] == pytest.approx(a["energy_best"] - e["attempts"][0]["loss_before"],
                                                          abs=1e-5)
