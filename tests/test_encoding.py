"""Binary encodings: Δ = A x + c, encode/decode round trips, step and offset rules, quantize grids."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from qubo_nn.core.encoding import Encoding, optimize_encoding, quantize_encoding
from qubo_nn.core.grid import check_bits, variables_per_weight
from qubo_nn.errors import QuboNNError
from qubo_nn.core.model import LocalModel

f64 = torch.float64


def toy_model(m: int = 6, seed: int = 0) -> LocalModel:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, m, generator=g, dtype=f64)
    grad = torch.randn(m, generator=g, dtype=f64)
    grad[0] = 0.0  # a weight with no gradient: frozen by the curvature rule
    return LocalModel(idx=torch.arange(10, 10 + m), g=grad, H=B @ B.T / m + 0.1 * torch.eye(m, dtype=f64),
                      L0=2.5, theta0=torch.randn(m, generator=g, dtype=f64))


def all_samples(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=f64)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_optimize_encoding_layout_and_rules(bits):
    model = toy_model()
    mu = 0.3
    enc = optimize_encoding(model, bits=bits, window=1.5, damping=mu)
    m, half = model.m, 2 ** (bits - 1)
    assert enc.mode == "optimize" and enc.num_variables == m * bits
    assert torch.equal(enc.ref, model.theta0) and torch.equal(enc.idx, model.idx)
    # offset: the longer side of the window points downhill
    assert torch.equal(enc.offset, torch.where(model.g > 0, torch.full_like(model.g, half),
                                               torch.full_like(model.g, half - 1)))
    # curvature rule: the downhill end of the window is window × the diagonal Newton step
    newton = model.g.abs() / (model.H.diagonal() + mu)
    assert torch.allclose(enc.step, 1.5 * newton / half, rtol=1e-15, atol=0)
    lo = enc.ref + enc.step * (0 - enc.offset)
    hi = enc.ref + enc.step * (2 ** bits - 1 - enc.offset)
    down = torch.where(model.g > 0, lo, hi)
    assert torch.allclose(down, model.theta0 - 1.5 * model.g / (model.H.diagonal() + mu), rtol=1e-14, atol=1e-15)
    assert enc.info["frozen_weights"] == 1 and enc.step[0] == 0
    # A is block diagonal with a[i, j] = step_i 2^j at column i*bits + j
    A = enc.A()
    assert A.shape == (m, m * bits)
    for i in range(m):
        for j in range(bits):
            assert A[i, i * bits + j] == enc.step[i] * 2 ** j
    assert int((A != 0).sum()) == (m - 1) * bits


@pytest.mark.parametrize("bits", [1, 3])
def test_optimize_round_trip(bits):
    model = toy_model(seed=1)
    enc = optimize_encoding(model, bits=bits, window=2.0, damping=0.1)
    x0 = enc.current_bits()
    assert x0.dtype == torch.int8 and x0.shape == (enc.num_variables,)
    assert torch.equal(enc.decode(x0), model.theta0)          # exactly the current weights
    assert torch.equal(enc.delta(x0), torch.zeros_like(model.theta0))
    X = torch.randint(0, 2, (40, enc.num_variables), generator=torch.Generator().manual_seed(0)).to(f64)
    A, c = enc.A(), enc.c
    for x in X:
        assert torch.allclose(enc.delta(x), A @ x + c, rtol=0, atol=1e-15)
        assert torch.allclose(enc.decode(x), model.theta0 + A @ x + c, rtol=0, atol=1e-15)
        back = enc.encode(enc.decode(x))
        free = (enc.step != 0).repeat_interleave(bits)
        assert torch.equal(back[free].to(f64), x[free])       # grid points map back to themselves
    assert torch.allclose(enc.delta(X), X @ A.T + c, rtol=0, atol=1e-15)  # batched
    # off-grid values go to the nearest level, outside the window to its ends
    far = enc.encode(model.theta0 + 1e6 * torch.sign(enc.step + 1e-30))
    assert torch.equal(enc.levels(far)[1:], torch.full((model.m - 1,), 2.0 ** bits - 1, dtype=f64))


def test_fixed_step_rule_and_arrays_round_trip():
    model = toy_model(seed=2)
    enc = optimize_encoding(model, bits=4, step_rule="fixed", step=0.01)
    assert torch.equal(enc.step, torch.full((model.m,), 0.01, dtype=f64))
    arrs = enc.arrays()
    assert set(arrs) == {"idx", "theta0", "ref", "step", "offset", "bits", "kind", "A_values", "c"}
    assert arrs["A_values"].shape == (model.m, 4)
    back = Encoding.from_arrays(arrs, mode="optimize")
    X = torch.randint(0, 2, (7, enc.num_variables), generator=torch.Generator().manual_seed(1))
    assert torch.equal(back.decode(X), enc.decode(X)) and torch.equal(back.idx, enc.idx)
    assert torch.equal(back.A(), enc.A()) and torch.equal(back.c, enc.c)


@pytest.mark.parametrize("bits,qmin,qmax", [(1, -8, 7), (2, -8, 7), (2, 0, 15), (3, -4, 3)])
def test_quantize_encoding_grid(bits, qmin, qmax):
    model = toy_model(seed=3)
    scale = torch.linspace(0.2, 0.5, model.m, dtype=f64)
    zero = torch.full((model.m,), 0.0 if qmin < 0 else 8.0, dtype=f64)
    enc = quantize_encoding(model, scale, qmin, qmax, bits=bits, zero=zero)
    assert enc.mode == "quantize"
    X = all_samples(enc.num_variables) if enc.num_variables <= 12 else \
        torch.randint(0, 2, (300, enc.num_variables), generator=torch.Generator().manual_seed(2)).to(f64)
    W = enc.decode(X)
    q = W / scale + zero
    assert torch.allclose(q, q.round(), atol=1e-12, rtol=0)    # every level is on the grid s·(q − z)
    assert q.round().min() >= qmin and q.round().max() <= qmax
    u = model.theta0 / scale + zero
    if bits == 1:  # AdaRound: round down or up, clipped to the grid
        lo = torch.floor(u).clamp(qmin, qmax - 1)
        assert ((q.round() == lo) | (q.round() == lo + 1)).all()
    for x in X[:20]:
        assert torch.equal(enc.encode(enc.decode(x)).to(f64), x)   # grid points map back to themselves
    # the current weights decode to their nearest level (within half a step unless clipped)
    w0 = enc.decode(enc.current_bits())
    inside = (u >= qmin) & (u <= qmax)
    assert ((w0 - model.theta0).abs()[inside] <= 0.5 * scale[inside] + 1e-12).all()


def test_bad_encodings_are_refused():
    model = toy_model()
    good = optimize_encoding(model, bits=2).arrays()
    for bits in (0, 17, 2.5, "4"):   # checked once, at the boundary (configs, files); kernels trust it
        with pytest.raises(QuboNNError, match=r"bits per weight must be an integer in \[1, 16\], got"):
            check_bits(bits)
    for bits in (0, 17):
        with pytest.raises(QuboNNError, match=rf"bits per weight must be an integer in \[1, 16\], got {bits}"):
            Encoding.from_arrays({**good, "bits": np.asarray(bits)})
    with pytest.raises(QuboNNError, match="window must be > 0, got 0"):
        optimize_encoding(model, window=0)
    with pytest.raises(QuboNNError, match="step_rule 'fixed' needs step > 0, got None"):
        optimize_encoding(model, step_rule="fixed")
    with pytest.raises(QuboNNError, match="step_rule must be 'curvature' or 'fixed', got 'newton'"):
        optimize_encoding(model, step_rule="newton")
    with pytest.raises(QuboNNError, match="scale must be positive and finite with shape"):
        quantize_encoding(model, torch.zeros(model.m, dtype=f64), -8, 7)
    with pytest.raises(QuboNNError, match="a 3-bit window needs 8 levels but the grid has 4"):
        quantize_encoding(model, torch.ones(model.m, dtype=f64), -2, 1, bits=3)
    enc = optimize_encoding(model, bits=2)
    with pytest.raises(QuboNNError, match="sample must have 12 bits, got 11"):
        enc.decode(torch.zeros(11))
    with pytest.raises(QuboNNError, match=r"encoding step must have shape \(6,\), got \(5,\)"):
        Encoding(enc.idx, enc.theta0, enc.ref, enc.step[:5], enc.offset, 2)
    with pytest.raises(QuboNNError, match="mode must be one of"):
        Encoding(enc.idx, enc.theta0, enc.ref, enc.step, enc.offset, 2, mode="round")
    assert np.asarray(enc.arrays()["bits"]) == 2


# ---------------------------------------------------------------- encoding kinds (binary, unary, domain-wall)

def _kind_encodings(bits: int, seed: int = 3):
    from qubo_nn.core.encoding import ENCODINGS
    model = toy_model(m=3, seed=seed)
    return model, {kind: optimize_encoding(model, bits=bits, window=1.5, damping=0.2, kind=kind) for kind in ENCODINGS}


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_every_kind_decodes_to_the_weights_of_its_levels(bits):
    model, encs = _kind_encodings(bits)
    rng = np.random.default_rng(0)
    K = rng.integers(0, 2 ** bits, size=(20, model.m))
    K[:, 0] = int(encs["binary"].offset[0])   # weight 0 has no gradient: frozen (step 0) at its offset
    for kind, enc in encs.items():
        width = bits if kind == "binary" else 2 ** bits - 1
        assert enc.width == width == variables_per_weight(kind, bits) and enc.num_variables == model.m * width
        X = enc.bits_of_levels(K)
        # independent reference: w = ref + step·(k − offset), straight from the levels
        want = enc.ref + enc.step * (torch.as_tensor(K, dtype=f64) - enc.offset)
        assert torch.equal(enc.levels(X), torch.as_tensor(K, dtype=f64))
        assert torch.allclose(enc.decode(X), want, rtol=0, atol=1e-15)
        assert torch.allclose(enc.A() @ torch.as_tensor(X, dtype=f64).T + enc.c[:, None],
                              want.T - enc.theta0[:, None], rtol=0, atol=1e-14)
        # encode ∘ decode is the identity on every level vector
        for row in range(len(K)):
            assert torch.equal(enc.encode(enc.decode(X[row])), torch.as_tensor(X[row]))
    # unary and domain-wall: the thermometer code x_ij = [j < k_i]
    X = encs["unary"].bits_of_levels(K).reshape(len(K), model.m, -1)
    assert (X.sum(-1) == K).all() and (np.diff(X.astype(int), axis=-1) <= 0).all()


@pytest.mark.parametrize("bits", [1, 2])
def test_bqm_energies_equal_across_kinds_and_equal_the_integer_energy(bits):
    from qubo_nn.core.bqm import build_bqm
    from qubo_nn.core.bqm import integer_form
    model, encs = _kind_encodings(bits, seed=4)
    mu = 0.2
    K = np.array(list(itertools.product(range(2 ** bits), repeat=model.m)))
    energies = {}
    for kind, enc in encs.items():
        bqm = build_bqm(model, enc, damping=mu)
        X = enc.bits_of_levels(K)
        energies[kind] = bqm.energies((X, range(enc.num_variables)))
        form = integer_form(model, enc, mu)
        assert form.kind == kind and form.num_variables == bqm.num_variables
        # E(k) of levels.IntegerProblem agrees with the BQM (the frozen weight 0 is pinned: compare where feasible)
        free = (K >= form.problem.kmin).all(1) & (K <= form.problem.kmax).all(1)
        assert free.sum() == 2 ** (bits * (model.m - 1))
        np.testing.assert_allclose(form.problem.energy(K[free]), energies[kind][free], rtol=1e-12, atol=1e-12)
        # and the predicted loss of the local model, an independent route
        want = model.predict(enc.delta(X), mu).numpy()
        np.testing.assert_allclose(energies[kind], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(energies["unary"], energies["binary"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(energies["domain-wall"], energies["binary"], rtol=1e-12, atol=1e-12)


def test_domain_wall_penalises_exactly_the_non_thermometer_codes():
    from qubo_nn.core.bqm import build_bqm
    model, encs = _kind_encodings(2, seed=5)
    uni, dw = build_bqm(model, encs["unary"], 0.2), build_bqm(model, encs["domain-wall"], 0.2)
    X = np.array(list(itertools.product([0, 1], repeat=uni.num_variables)))
    gap = dw.energies((X, range(dw.num_variables))) - uni.energies((X, range(uni.num_variables)))
    walls = (np.diff(X.reshape(len(X), model.m, 3), axis=-1) > 0).sum((1, 2))   # 0→1 steps upward
    assert (gap[walls == 0] == pytest.approx(0, abs=1e-12))
    assert (gap[walls > 0] > 0).all()
    # every state still decodes by its count, so the minimum over all states is unary's
    assert dw.energies((X, range(dw.num_variables))).min() == pytest.approx(
        uni.energies((X, range(uni.num_variables))).min(), abs=1e-12)


def test_kind_survives_arrays_round_trip_and_old_arrays_are_binary():
    model, encs = _kind_encodings(2)
    for kind, enc in encs.items():
        back = Encoding.from_arrays(enc.arrays())
        assert back.kind == kind and back.num_variables == enc.num_variables
        x = enc.bits_of_levels(np.array([[1, 2, 3]]))[0]
        assert torch.equal(back.decode(x), enc.decode(x))
    old = {k: v for k, v in encs["binary"].arrays().items() if k != "kind"}
    assert Encoding.from_arrays(old).kind == "binary"
    with pytest.raises(QuboNNError, match="encoding must be one of"):
        optimize_encoding(model, bits=2, kind="one-hot")
