"""The one step policy (qubo_nn.steps.policy): the rule on exact cases, the predicted change against
the closed-form damped model, the undo check, seeds, and the policy seen through decode.

References: hand-computed numbers; the damped model L0 + gᵀΔ + ½Δᵀ(H + μI)Δ evaluated in NumPy from
the encoding's Δ (independent of the BQM builder); true losses by qubo_nn.core.head.evaluate in float64.
"""
from __future__ import annotations

import dimod
import numpy as np
import pytest
import torch

from qubo_nn.core.bqm import build_bqm
from qubo_nn.core.encoding import optimize_encoding
from qubo_nn.core.head import Head, evaluate
from qubo_nn.core.model import LocalModel
from qubo_nn.data.featureset import synthetic_features
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import SEED_BOUND, child_seed
from qubo_nn.steps import policy as sp
from qubo_nn.workflows.build import BuildConfig, build_to_dir
from qubo_nn.workflows.solve import SolveConfig, decode, solve

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("before, after, tol, want", [
    (1.0, 0.9, 0.0, True),
    (1.0, 1.0, 0.0, False),             # strict: no change is no step
    (1.0, 1.1, 0.0, False),
    (1.0, 1.0 - 5e-7, 1e-6, False),     # a fall within the tolerance is not accepted
    (1.0, 1.0 - 2e-6, 1e-6, True),
    (1.0, float("nan"), 0.0, False),    # NaN never passes
    (float("nan"), 0.5, 0.0, False),
    (1.0, float("-inf"), 1e-6, True),
])
def test_accept_exact_cases(before, after, tol, want):
    assert sp.accept(before, after, tol) is want
    assert sp.StepPolicy(accept_tol=tol).accept(before, after) is want


def test_default_tolerance_and_gate():
    assert sp.DEFAULT_ACCEPT_TOL == 1e-6 and sp.StepPolicy().accept_tol == 1e-6
    assert sp.accept(1.0, 1.0 - 2e-6) and not sp.accept(1.0, 1.0 - 5e-7)
    assert sp.predicts_gain(-1.0, 0.0) and not sp.predicts_gain(0.0, 0.0) and not sp.predicts_gain(1.0, 0.0)


def test_retry_damping_and_policy_validation():
    assert sp.retry_damping(0.5, 0, 4.0) == 0.5
    assert sp.retry_damping(0.5, 2, 4.0) == 8.0
    assert sp.retry_damping(0.0, 0, 4.0, floor=0.01) == 0.0           # the first attempt is as built
    assert sp.retry_damping(0.0, 1, 4.0, floor=0.01) == pytest.approx(0.04)
    pol = sp.StepPolicy(max_retries=2, damping_growth=3.0)
    assert [pol.may_retry(a) for a in range(3)] == [True, True, False]
    assert pol.damping(1.0, 2) == 9.0
    for kw, match in [({"max_retries": -1}, "max_retries must be an integer >= 0, got -1"),
                      ({"damping_growth": 1.0}, "damping_growth must be > 1, got 1.0"),
                      ({"accept_tol": -1e-9}, "accept_tol must be >= 0, got -1e-09")]:
        with pytest.raises(QuboNNError, match=match):
            sp.StepPolicy(**kw).validate()


def test_seeds_are_child_seed_and_differ_from_the_old_derivation():
    """step_seed = child_seed(seed, sweep, block, attempt) = the SeedSequence word mod 2³¹; the
    hybrid's old _derive_seed took the same word >> 1, so the seeds changed (documented)."""
    for key in [(0, 0, 0, 0), (5, 1, 3, 2), (2**31 - 1, 7, 0, 1)]:
        word = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
        s = sp.step_seed(*key)
        assert s == child_seed(*key) == word % SEED_BOUND and 0 <= s < SEED_BOUND
        assert s != word >> 1
    assert len({sp.step_seed(0, 0, b, a) for b in range(20) for a in range(3)}) == 60


def test_best_sample_reorders_variables():
    ss = dimod.SampleSet.from_samples(([[1, 0, 1], [0, 1, 1]], [2, 0, 1]), "BINARY", energy=[0.5, -1.0])
    assert sp.best_sample(ss, 3).tolist() == [1, 1, 0]      # the second row, by label


def _model(m=3, seed=0) -> LocalModel:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, m + 2, generator=g, dtype=torch.float64)
    return LocalModel(idx=torch.arange(m), g=torch.randn(m, generator=g, dtype=torch.float64),
                      H=A @ A.T / m + 0.1 * torch.eye(m, dtype=torch.float64), L0=1.7,
                      theta0=torch.randn(m, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_predicted_change_is_the_damped_model_minus_L0(mu):
    """For every sample x of a 3-weight, 2-bit block: E(x) − L0 = gᵀΔ + ½Δᵀ(H + μI)Δ (NumPy), 1e-10."""
    model = _model()
    enc = optimize_encoding(model, 2, 1.0, mu)
    bqm = build_bqm(model, enc, mu)
    n = enc.num_variables
    X = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    g, H = model.g.numpy(), model.H.numpy() + mu * np.eye(model.m)
    for x in X:
        d = enc.delta(torch.as_tensor(x)).double().numpy()
        (e,) = sp.sample_energies(bqm, x)
        assert sp.predicted_change(e, model.L0) == pytest.approx(g @ d + 0.5 * d @ H @ d, abs=1e-10)
    rec = sp.attempt_record(0, mu, -0.25, 0.0, 1.0)
    assert rec["predicted_change"] == -1.25


class _Quadratic:
    """A toy state: loss ½‖θ − t‖²; ``drift`` is added to the loss an update reports (rounding)."""

    def __init__(self, drift=0.0):
        self.theta = torch.zeros(3, dtype=torch.float64)
        self.t = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
        self.drift, self.loss = drift, self._loss(self.theta)

    def _loss(self, th):
        return float(0.5 * ((th - self.t) ** 2).sum())

    def trial_loss(self, idx, values):
        th = self.theta.clone()
        th[idx] = values
        return self._loss(th)

    def update(self, idx, values):
        self.theta[idx] = values
        self.loss = self._loss(self.theta) + (self.drift if values.abs().sum() > 0 else 0.0)


def test_try_step_accepts_rejects_and_undoes():
    idx = torch.tensor([0, 2])
    st = _Quadratic()
    ok, trial, after = sp.try_step(st, idx, torch.tensor([1.0, 0.5], dtype=torch.float64), st.loss, 1e-6)
    assert ok and trial == after == st.loss == 0.5 and st.theta.tolist() == [1.0, 0.0, 0.5]
    st = _Quadratic()
    ok, trial, after = sp.try_step(st, idx, torch.tensor([-1.0, 0.0], dtype=torch.float64), st.loss, 1e-6)
    assert not ok and trial == pytest.approx(2.625) and after == 1.125 and st.theta.tolist() == [0.0, 0.0, 0.0]
    # the trial says the loss fell, the state after the update disagrees: the step is undone
    st = _Quadratic(drift=10.0)
    ok, trial, after = sp.try_step(st, idx, torch.tensor([1.0, 0.5], dtype=torch.float64), 1.125, 1e-6)
    assert not ok and trial == 0.5 and st.theta.tolist() == [0.0, 0.0, 0.0] and after == st.loss == 1.125


def test_step_record_has_the_shared_words():
    a0 = sp.decide(sp.attempt_record(0, 0.1, 0.5, 0.6, 0.6), False, sp.REASON_ROSE, 0.6, 0.6, 0.7)
    a1 = sp.decide(sp.attempt_record(1, 0.4, 0.55, 0.6, 0.6), True, sp.REASON_FELL, 0.6, 0.58, 0.58)
    rec = sp.step_record([a0, a1], block_id=3)
    assert set(sp.STEP_KEYS) <= set(rec) and rec["block_id"] == 3
    assert rec["accepted"] and rec["retries"] == 1 and rec["damping"] == 0.4
    assert rec["true_change"] == pytest.approx(-0.02) and rec["predicted_change"] == pytest.approx(-0.05)
    assert a0["true_change"] == pytest.approx(0.1) and a0["loss_after"] == 0.6


# --------------------------------------------------------------------------- decode under the policy

@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """Three seeded random heads (4 classes × 6 features), each built (2 bits) and solved by neal."""
    out = []
    for seed in range(3):
        train, _ = synthetic_features(n=300, dim=6, num_classes=4, seed=10 + seed, n_test=10)
        head = Head.init_like_linear(4, 6, seed=seed)
        d = tmp_path_factory.mktemp(f"dec{seed}")
        build_to_dir(head, train, BuildConfig(bits=2, window=1.0, device="cpu", dtype="float64"), d / "q")
        solve(d / "q", d / "sol", SolveConfig(params={"num_reads": 4, "num_sweeps": 100}, seed=seed))
        out.append((d, head, train))
    return out


def test_decode_acceptance_never_raises_the_true_loss(solved):
    """Property over seeded heads, decoded on the build's features and on the same features with
    shuffled labels (where some steps raise the loss): each injected block lowers the float64 loss
    of the head so far by more than accept_tol; the decoded head's loss is at most the start's."""
    from qubo_nn.data.featureset import FeatureSet

    counts = {True: 0, False: 0}
    cases = []
    for d, head, train in solved:
        perm = torch.randperm(train.n, generator=torch.Generator().manual_seed(3))
        cases += [(d, head, train), (d, head, FeatureSet(train.X, train.y[perm], train.num_classes))]
    for d, head, train in cases:
        r = decode(d / "sol", feats=train, device="cpu")
        counts[True] += r["blocks"] - r["blocks_kept_current"]
        counts[False] += r["blocks_kept_current"]
        assert set(sp.STEP_KEYS) <= set(r["per_block"][0])
        for b in r["per_block"]:
            if b["accepted"]:
                assert b["loss_after"] < b["loss_before"] - 1e-6 and b["true_change"] < -1e-6
            else:
                assert b["loss_after"] == b["loss_before"] and b["moved"] == 0
        f64 = train.to("cpu", torch.float64)
        assert r["true_loss"] <= r["loss_before"] + 1e-7
        assert evaluate(head.to("cpu", torch.float64), f64)[0] == pytest.approx(r["per_block"][0]["loss_before"],
                                                                               abs=1e-12)
    assert counts[True] >= 1 and counts[False] >= 1, counts      # both branches were exercised


def test_decode_uses_the_policy(solved, monkeypatch):
    """With the rule patched to refuse everything, decode keeps every block (force still injects);
    an accept_tol above any gain keeps them too."""
    d, head, train = solved[0]
    r = decode(d / "sol", feats=train, device="cpu", accept_tol=1e9)
    assert r["blocks_kept_current"] == r["blocks"] and r["true_loss"] == pytest.approx(r["loss_before"], abs=1e-7)
    monkeypatch.setattr(sp, "accept", lambda before, after, tol=0.0: False)
    r = decode(d / "sol", feats=train, device="cpu")
    assert r["blocks_kept_current"] == r["blocks"]
    forced = decode(d / "sol", feats=train, device="cpu", force=True)
    assert forced["blocks_kept_current"] == 0 and all(b["reason"] == "forced" for b in forced["per_block"])
