"""The block QUBO: BQM energy == predicted loss (two independent references), brute force over
≤ 16 bits against the true loss, memory guard, streaming builds and bad settings."""
from __future__ import annotations

import itertools
import time

import dimod
import numpy as np
import pytest
import torch

import qubo_nn.workflows.build as build_mod

from qubo_nn.core.bqm import (
    apply,
    build_bqm,
    check_fits,
    predicted_loss,
    qubo_arrays,
    qubo_bytes,
)
from qubo_nn.core.encoding import optimize_encoding, quantize_encoding
from qubo_nn.core.head import Head, evaluate
from qubo_nn.core.layout import flat_params
from qubo_nn.core.model import LocalModel
from qubo_nn.curvature.head_stats import HeadStats, select_blocks
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.build import BuildConfig, iter_block_qubos, make_block_qubo

REL = 1e-9   # BQM energy vs predicted loss, float64, relative


def tiny(seed: int = 0, n: int = 60, c: int = 3, d: int = 4) -> tuple[Head, FeatureSet]:
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5)
    y = torch.randint(0, c, (n,), generator=g)
    head = Head(0.3 * torch.randn(c, d, generator=g, dtype=torch.float64),
                0.1 * torch.randn(c, generator=g, dtype=torch.float64))
    return head, FeatureSet(X, y, c)


def dense_reference(model: LocalModel, A: np.ndarray, c: np.ndarray, mu: float, X: np.ndarray) -> np.ndarray:
    """L0 + gᵀΔ + ½ Δᵀ(H + μI)Δ with Δ = A x + c, in plain NumPy (dense A)."""
    g, H = model.g.numpy(), model.H.numpy() + mu * np.eye(model.m)
    D = X @ A.T + c
    return model.L0 + D @ g + 0.5 * np.einsum("si,ij,sj->s", D, H, D)


def samples(n: int, k: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).integers(0, 2, (k, n)).astype(np.float64)
    return np.vstack([X, np.zeros(n), np.ones(n)])


@pytest.mark.parametrize("blocks", [dict(kind="rows"), dict(kind="rows", per_block=2),
                                    dict(kind="columns"), dict(kind="random", size=5)])
@pytest.mark.parametrize("bits", [1, 3])
def test_bqm_energy_is_the_predicted_loss(blocks, bits):
    head, feats = tiny(1)
    stats = HeadStats(head, feats, l2=0.01, device="cpu", dtype="float64", chunk=7)
    blocks = dict(blocks)
    kind = blocks.pop("kind")
    for idx in select_blocks(kind, 3, 4, seed=2, **blocks)[:2]:
        model = stats.block(idx)
        mu = 0.05
        enc = optimize_encoding(model, bits=bits, window=2.0, damping=mu)
        bqm = build_bqm(model, enc, mu)
        assert bqm.num_variables == model.m * bits and list(bqm.variables) == list(range(model.m * bits))
        assert bqm.vartype is dimod.BINARY and bqm.dtype == np.float64
        X = samples(bqm.num_variables, 40, seed=bits)
        X = np.vstack([X, enc.current_bits().numpy()])
        energy = bqm.energies((X, list(range(bqm.num_variables))))
        via_model = model.predict(enc.delta(X), mu).numpy()
        via_numpy = dense_reference(model, enc.A().numpy(), enc.c.numpy(), mu, X)
        np.testing.assert_allclose(energy, via_model, rtol=REL, atol=0)
        np.testing.assert_allclose(energy, via_numpy, rtol=REL, atol=0)
        np.testing.assert_allclose(predicted_loss(model, enc, X, mu), via_numpy, rtol=REL, atol=0)
        assert energy[-1] == pytest.approx(model.L0, rel=1e-14)   # current bits: no step, loss L0


def test_qubo_arrays_layout_and_quantize_mode():
    head, feats = tiny(2)
    model = HeadStats(head, feats, device="cpu", dtype="float64").block(torch.arange(5))
    scale = torch.full((5,), 0.05, dtype=torch.float64)
    enc = quantize_encoding(model, scale, -16, 15, bits=2)
    Q, lin, off = qubo_arrays(model, enc, damping=0.2)
    X = samples(enc.num_variables, 30, seed=0)
    assert np.array_equal(Q, Q.T) and not np.diag(Q).any()     # symmetric, linear part apart
    E = X @ lin + np.einsum("si,ij,sj->s", X, 2 * np.triu(Q, 1), X) + off
    ref = dense_reference(model, enc.A().numpy(), enc.c.numpy(), 0.2, X)
    np.testing.assert_allclose(E, ref, rtol=REL, atol=0)
    bqm = build_bqm(model, enc, 0.2)
    np.testing.assert_allclose(bqm.energies((X, range(enc.num_variables))), ref, rtol=REL, atol=0)
    # a float32 BQM keeps the same energies to float32 precision
    bqm32 = build_bqm(model, enc, 0.2, dtype="float32")
    assert bqm32.dtype == np.float32
    np.testing.assert_allclose(bqm32.energies((X, range(enc.num_variables))), ref, rtol=1e-5, atol=0)


def majorizing_damping(feats: FeatureSet, idx: torch.Tensor, D: int, l2: float) -> float:
    """μ with H + μI ⪰ every Hessian of the block along any step, so predicted ≥ true loss.

    diag(p) − ppᵀ ⪯ ½ I (⪯ ¼ for one class) and the block's features are f̃[:, d]:
    ∇²L ⪯ κ λ_max(mean f̃_d f̃_dᵀ) I + l2 I, κ = ¼ (one class) or ½; H ⪰ 0.
    """
    Xt = torch.cat([feats.X, torch.ones(feats.n, 1, dtype=feats.X.dtype)], 1)
    c, d = idx // (D + 1), idx % (D + 1)
    F = Xt[:, d]
    kappa = 0.25 if bool((c == c[0]).all()) else 0.5
    return kappa * float(torch.linalg.eigvalsh(F.T @ F / feats.n).max()) + l2


@pytest.mark.parametrize("idx,bits", [(torch.arange(5, 10), 3),          # a class row with its bias: 15 bits
                                      (torch.tensor([1, 6, 11]), 5),    # a column across the 3 classes: 15 bits
                                      (torch.tensor([0, 7, 13, 14]), 4)])  # scattered weights: 16 bits
def test_brute_force_minimizer_does_not_increase_the_true_loss(idx, bits):
    head, feats = tiny(3, n=80)
    l2 = 0.01
    stats = HeadStats(head, feats, l2=l2, device="cpu", dtype="float64")
    model = stats.block(idx)
    mu = majorizing_damping(feats, idx, 4, l2)
    enc = optimize_encoding(model, bits=bits, window=3.0, damping=mu)
    bqm = build_bqm(model, enc, mu)
    n = bqm.num_variables
    assert n <= 16
    X = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int8)
    E = bqm.energies((X, range(n)))
    best = X[np.argmin(E)]
    assert E.min() == pytest.approx(dimod.ExactSolver().sample(bqm).first.energy, rel=1e-12)
    L0, _ = evaluate(head, feats, l2=l2)
    assert E.min() <= L0 + 1e-12                      # the current bits are a sample: E = L0 there
    new_head = apply(head, enc, best)
    L_new, _ = evaluate(new_head, feats, l2=l2)
    assert L_new <= E.min() + 1e-12                   # μ majorizes: the true loss is below the prediction
    assert L_new < L0 - 1e-6                          # and it went down
    theta = flat_params(new_head)
    keep = torch.ones_like(theta, dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(theta[keep], flat_params(head)[keep])  # other weights untouched


def test_memory_guard_refuses_before_allocating(monkeypatch):
    assert qubo_bytes(1000, 8) == 1000 * 1000 * 24
    check_fits(1000, 8, 24_000_000)
    with pytest.raises(QuboNNError, match=r"a dense QUBO of 1001 variables needs about 0\.0 GiB, over the limit"):
        check_fits(1001, 8, 24_000_000)
    # a block of 10,000 weights at 16 bits = 160,000 variables (≈ 570 GiB): refused at once
    m = 10_000
    model = LocalModel(idx=torch.arange(m), g=torch.ones(m), H=torch.ones(1, 1).expand(m, m),
                       L0=1.0, theta0=torch.zeros(m))
    enc = optimize_encoding(model, bits=16)
    t0 = time.perf_counter()
    with pytest.raises(QuboNNError, match="a dense QUBO of 160000 variables needs about 572.2 GiB"):
        build_bqm(model, enc)
    assert time.perf_counter() - t0 < 1.0
    # a whole-head build checks the largest block before any Hessian pass
    head, feats = tiny(4)
    monkeypatch.setattr(HeadStats, "block", lambda *a, **k: pytest.fail("Hessian computed before the check"))
    cfg = BuildConfig(blocks="rows", bits=4, device="cpu", max_qubo_bytes=1_000)
    with pytest.raises(QuboNNError, match="a dense QUBO of 20 variables needs about"):
        next(iter_block_qubos(head, feats, cfg))


def test_iter_block_qubos_streams_every_block():
    head, feats = tiny(5)
    cfg = BuildConfig(blocks="rows", bits=2, device="cpu", dtype="float64", damping_rel=0.1, l2=0.01, chunk=16)
    calls = []
    orig = make_block_qubo

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    build_mod.make_block_qubo = counting
    try:
        it = iter_block_qubos(head, feats, cfg)
        first = next(it)
        assert len(calls) == 1                               # one block at a time
        blocks = [first, *it]
    finally:
        build_mod.make_block_qubo = orig
    assert [b.block_id for b in blocks] == [0, 1, 2]
    stats = HeadStats(head, feats, l2=0.01, device="cpu", dtype="float64")
    for blk, idx in zip(blocks, select_blocks("rows", 3, 4)):
        assert torch.equal(blk.model.idx, idx)
        assert blk.damping == pytest.approx(0.1 * float(blk.model.H.diagonal().mean()), rel=1e-14)
        assert set(blk.timings) == {"hessian_s", "qubo_s"}
        ref = make_block_qubo(stats, idx, cfg, blk.block_id)
        X = samples(blk.bqm.num_variables, 10, seed=blk.block_id)
        np.testing.assert_allclose(blk.bqm.energies((X, range(X.shape[1]))),
                                   ref.bqm.energies((X, range(X.shape[1]))), rtol=1e-12)


def test_bad_settings_are_refused():
    head, feats = tiny()
    model = HeadStats(head, feats, device="cpu", dtype="float64").block(torch.arange(5))
    enc = optimize_encoding(model, bits=2)
    with pytest.raises(QuboNNError, match="damping must be >= 0, got -1"):
        build_bqm(model, enc, damping=-1.0)
    with pytest.raises(QuboNNError, match=r"BQM dtype must be one of \['float32', 'float64'\], got 'float16'"):
        build_bqm(model, enc, dtype="float16")
    other = HeadStats(head, feats, device="cpu", dtype="float64").block(torch.arange(5, 10))
    with pytest.raises(QuboNNError, match="encoding and local model describe different blocks"):
        build_bqm(other, enc)
    bad = [(dict(bits=0), r"bits per weight must be an integer in \[1, 16\], got 0"),
           (dict(bits=17), r"bits per weight must be an integer in \[1, 16\], got 17"),
           (dict(blocks="diag"), "block kind must be one of"),
           (dict(blocks="random"), "block kind 'random' needs size >= 1"),
           (dict(per_block=0), "per_block must be an integer >= 1, got 0"),
           (dict(window=-1.0), "window must be > 0, got -1.0"),
           (dict(damping_rel=float("nan")), "damping_rel must be finite and >= 0, got nan"),
           (dict(step_rule="fixed"), "step_rule 'fixed' needs step > 0, got None"),
           (dict(dtype="half"), "dtype must be one of"),
           (dict(subsample=0), "subsample must be None or an integer >= 1, got 0"),
           (dict(saliency="hess"), "saliency must be one of")]
    for kw, msg in bad:
        with pytest.raises(QuboNNError, match=msg):
            next(iter_block_qubos(head, feats, BuildConfig(device="cpu", **kw)))
    with pytest.raises(QuboNNError, match="head is 3 classes × 4 features but the feature set has 3 classes × 5"):
        next(iter_block_qubos(head, FeatureSet(torch.rand(10, 5), torch.zeros(10, dtype=torch.long), 3),
                              BuildConfig(device="cpu")))


def _head_qubo_before_dedupe(model, enc, damping):
    """The head's own builder before issue 18 (core/bqm.qubo_arrays as it was: a 4-D torch product,
    its own domain-wall call), kept here as the reference of the one builder (core.problem.bit_qubo)."""
    from qubo_nn.core.problem import add_domain_wall, domain_wall_penalty

    H = model.H.to(torch.float64, copy=True)
    H.diagonal().add_(damping)
    a, c = enc.a.to(H), enc.c.to(H)
    m, b = a.shape
    n = m * b
    Hc = H @ c
    lin = (a * (model.g.to(H) + Hc)[:, None]).reshape(n)
    Q = ((0.5 * a)[:, :, None, None] * H[:, None, :, None] * a[None, None, :, :]).reshape(n, n)
    Q.diagonal().add_(lin)
    offset = model.L0 + float(model.g.to(H) @ c) + 0.5 * float(c @ Hc)
    lin = Q.diagonal().numpy().copy()
    Q.diagonal().zero_()
    Qn = Q.numpy()
    if enc.kind == "domain-wall":
        hdiag = (model.H.diagonal().double() + damping).numpy()
        add_domain_wall(Qn, lin, enc.m, enc.width, domain_wall_penalty(enc.step.double().numpy(), hdiag))
    return Qn, lin, offset


@pytest.mark.parametrize("kind", ["binary", "unary", "domain-wall"])
def test_the_one_builder_gives_the_head_bqm_of_before_bit_for_bit(kind):
    """The head's BQM now comes from the same builder as the level windows; its arrays equal the
    pre-issue-18 head builder's exactly (float64), so its energy is still the predicted loss."""
    head, feats = tiny(3)
    model = HeadStats(head, feats, device="cpu", dtype="float64").block(torch.arange(6))
    for enc in (optimize_encoding(model, bits=2, damping=0.1, kind=kind),
                quantize_encoding(model, torch.full((6,), 0.05, dtype=torch.float64), -8, 7, bits=2, kind=kind)):
        Q, lin, off = qubo_arrays(model, enc, 0.1)
        Q0, lin0, off0 = _head_qubo_before_dedupe(model, enc, 0.1)
        assert np.array_equal(Q, Q0) and np.array_equal(lin, lin0) and off == off0
