"""nnqubo suite: formats round trip exactly, TTS99 on a sampler with a known success probability,
digests of the small subset equal the committed ones, the OR-Library bqp reader, bound validity."""
from __future__ import annotations

import itertools
import json
import math

import dimod
import numpy as np
import pytest

from qubo_nn.core.bounds import box_lower_bound
from qubo_nn.core.problem import IntegerProblem
from qubo_nn.errors import QuboNNError
from qubo_nn.suite.bqp import read_bqp
from qubo_nn.suite.formats import FORMATS, read_instance, write_instance
from qubo_nn.suite.harness import adopt_new_bests, rescore, run_bench, score, tts99
from qubo_nn.suite.generate import compare_content
from qubo_nn.suite.instance import (FINGERPRINT_RTOL, SuiteInstance, bqm_digest, bqm_fingerprint, pack_bits,
                                    problem_bqm, unpack_bits)


def _all_samples(n: int) -> np.ndarray:
    return np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8)


def _tiny_problem(seed: int, m: int, levels: int) -> IntegerProblem:
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(m, m))
    return IntegerProblem(B @ B.T + 0.1 * np.eye(m), rng.normal(size=m), 0.4, 0, levels - 1, const=0.25)


@pytest.mark.parametrize("kind,levels", [("binary", 4), ("unary", 3), ("domain-wall", 4)])
def test_every_format_round_trips_with_exact_energies(tmp_path, kind, levels):
    p = _tiny_problem(0, 4, levels)
    bqm = problem_bqm(p, kind, levels)
    bqm.add_quadratic(0, 1, 1e-17)          # a tiny and a huge bias survive every format
    bqm.add_linear(2, 3.0e12)
    n = bqm.num_variables
    X = _all_samples(n)
    want = bqm.energies((X, range(n)))
    files = write_instance(bqm, tmp_path / "x", FORMATS)
    assert sorted(files) == sorted(FORMATS)
    for fmt, path in files.items():
        back = read_instance(path)
        got = back.energies((X, range(n)))
        assert np.array_equal(got, want), fmt                       # bit-exact, every one of 2^n samples
        assert bqm_digest(back) == bqm_digest(bqm), fmt


def test_problem_bqm_energy_is_the_integer_energy():
    for kind, levels in (("binary", 4), ("unary", 3), ("unary", 4)):
        p = _tiny_problem(1, 3, levels)
        inst = SuiteInstance("t", "test", problem_bqm(p, kind, levels), {}, p, kind, levels)
        for k in itertools.product(range(levels), repeat=3):
            x = inst.to_bits(np.array(k))
            assert np.isclose(inst.bqm.energy((x, range(x.size))), p.energy(np.array(k)), rtol=1e-12, atol=0)


def test_ommx_reader_is_the_ommx_package():
    ommx = pytest.importorskip("ommx.v1")
    from qubo_nn.suite.formats import bqm_to_ommx

    p = _tiny_problem(2, 5, 2)
    bqm = problem_bqm(p, "binary", 2)
    inst = ommx.Instance.from_bytes(bqm_to_ommx(bqm).to_bytes())
    x = np.array([1, 0, 1, 1, 0])
    sol = inst.evaluate({i: int(v) for i, v in enumerate(x)})
    assert sol.objective == pytest.approx(bqm.energy((x, range(5))), rel=1e-12)


def test_pack_bits_round_trip():
    x = np.random.default_rng(0).integers(0, 2, size=37)
    assert np.array_equal(unpack_bits(pack_bits(x), 37), x)


def test_tts99_formula():
    assert tts99(0.0, 2.0) == math.inf
    assert tts99(1.0, 2.0) == 2.0
    assert tts99(0.5, 1.0) == pytest.approx(math.log(0.01) / math.log(0.5))       # 6.64 runs
    assert tts99(0.999, 1.0) == 1.0                                                 # never below one run
    with pytest.raises(QuboNNError, match="expected a success probability in"):
        tts99(1.5, 1.0)


class CoinSampler(dimod.Sampler):
    """Returns the all-zero optimum with probability ``p`` (seeded), else the all-one state."""

    parameters = {"seed": [], "p": []}
    properties: dict = {}

    def sample(self, bqm, seed=0, p=0.5, **_):
        n = bqm.num_variables
        hit = np.random.default_rng(seed).random() < p
        x = np.zeros((1, n), np.int8) if hit else np.ones((1, n), np.int8)
        return dimod.SampleSet.from_samples_bqm((x, range(n)), bqm)


def _suite_dir(tmp_path, bqm, best):
    paths = write_instance(bqm, tmp_path / "instances" / "a", ("dimod",))
    man = {"suite": "test", "instances": [{
        "name": "a", "family": "toy", "num_variables": bqm.num_variables, "content_digest": bqm_digest(bqm),
        "files": {"dimod": {"path": str(paths["dimod"].relative_to(tmp_path)), "sha256": ""}},
        "meta": {"best_known": {"energy": best}, "baselines": {}}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    return tmp_path


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_harness_tts_on_a_sampler_with_known_success_probability(tmp_path, p):
    n = 6
    bqm = dimod.BinaryQuadraticModel({i: 1.0 for i in range(n)}, {}, 2.0, "BINARY")     # E* = 2 at x = 0
    d = _suite_dir(tmp_path, bqm, 2.0)
    R = 400
    res = run_bench(d, CoinSampler(), {"p": p}, repeats=R, seed=3)
    row = res["instances"][0]
    # the seeds are child_seed(3, r): the draws are fixed, p̂ within 4 binomial sigmas of p
    assert abs(row["success_probability"] - p) <= 4 * math.sqrt(p * (1 - p) / R)
    assert row["successes"] == sum(e == 2.0 for e in row["energies"])
    tau = float(np.mean(row["times_s"]))
    assert row["tts99_s"] == pytest.approx(tau * math.log(0.01) / math.log(1 - row["success_probability"]), rel=1e-12)
    assert row["excess"] == 0.0 and row["excess_median"] in (0.0, (2.0 + n - 2.0) / 2.0)


def test_a_run_that_beats_the_best_known_becomes_it(tmp_path):
    n = 6
    bqm = dimod.BinaryQuadraticModel({i: 1.0 for i in range(n)}, {}, 2.0, "BINARY")     # optimum 2 at x = 0
    d = _suite_dir(tmp_path, bqm, 3.0)                                                   # a poor best known
    res = run_bench(d, CoinSampler(), {"p": 0.5}, repeats=8, seed=3)
    row = res["instances"][0]
    assert row["new_best"] and np.array_equal(unpack_bits(row["best_sample"], n), np.zeros(n))
    man = json.loads((d / "manifest.json").read_text())
    man["instances"][0]["meta"]["lower_bound"] = {"lower_bound": 1.0, "gap": 2 / 3}
    assert adopt_new_bests(man, res) == ["a"]
    best = man["instances"][0]["meta"]["best_known"]
    assert best["energy"] == 2.0 and best["found_by"] == "CoinSampler" and best["previous"]["energy"] == 3.0
    assert man["instances"][0]["meta"]["lower_bound"]["gap"] == 0.5
    assert adopt_new_bests(man, res) == []                                  # nothing lower the second time
    assert rescore(res, man)["instances"][0]["success_probability"] == row["successes"] / 8


def test_score_excess_and_tolerance():
    r = score([10.0, 10.000001, 11.0], [1.0, 1.0, 1.0], best=10.0, tol=1e-6)
    assert r["successes"] == 2 and r["success_probability"] == pytest.approx(2 / 3)
    assert r["excess"] == 0.0 and r["excess_median"] == pytest.approx(1e-7)
    assert score([9.0], [1.0], 10.0)["new_best"] is True


def test_bqp_reader_on_a_tiny_file(tmp_path):
    f = tmp_path / "bqp3.txt"
    f.write_text("2\n3 4\n1 1 5\n1 2 -3\n2 3 4\n3 3 -2\n2 1\n2 2 7\n")
    b1, b2 = read_bqp(f)
    assert b1.num_variables == 3 and b2.num_variables == 2
    for x in _all_samples(3):
        obj = 5 * x[0] - 3 * x[0] * x[1] + 4 * x[1] * x[2] - 2 * x[2]      # maximised in OR-Library
        assert b1.energy((x, range(3))) == -obj
    assert b2.energy(([1, 0], range(2))) == 0.0 and b2.energy(([1, 1], range(2))) == -7.0
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n3 2\n1 2 5\n")
    with pytest.raises(QuboNNError, match="expected 2 'i j q' lines for problem 1"):
        read_bqp(bad)


@pytest.mark.parametrize("seed,m,levels", [(0, 7, 4), (1, 7, 4), (2, 7, 4), (3, 12, 2), (4, 12, 2), (5, 8, 3)])
def test_lower_bound_is_below_the_brute_force_minimum(seed, m, levels):
    p = _tiny_problem(seed, m, levels)
    K = np.array(list(itertools.product(range(levels), repeat=m)))
    e_min = float(p.energy(K).min())
    b = box_lower_bound(p)
    assert b["lower_bound"] <= e_min + 1e-12
    assert b["lower_bound"] >= b["box_lower_bound"] == box_lower_bound(p, shift=False)["lower_bound"]
    rough = box_lower_bound(p, max_iter=1)              # certified however roughly the relaxation was solved
    assert rough["lower_bound"] <= e_min + 1e-12


def test_lower_bound_with_fixed_variables_and_an_ill_conditioned_hessian():
    rng = np.random.default_rng(7)
    U = np.linalg.qr(rng.normal(size=(10, 10)))[0]
    H = U @ np.diag(np.logspace(-4, 1, 10)) @ U.T
    kmax = np.array([1, 1, 0, 1, 1, 1, 2, 1, 1, 1])     # variable 2 fixed at 0
    p = IntegerProblem(H, rng.normal(size=10), 0.7, 0, kmax)
    K = np.array(list(itertools.product(*[range(int(k) + 1) for k in kmax])))
    e_min = float(p.energy(K).min())
    b = box_lower_bound(p)
    assert b["shift"] > 0 and b["box_lower_bound"] <= b["lower_bound"] <= e_min + 1e-12


def test_content_comparison_tolerates_round_off_and_catches_changes():
    bqm = problem_bqm(_tiny_problem(0, 5, 4), "binary", 4)
    ref = {"content_digest": bqm_digest(bqm), "fingerprint": bqm_fingerprint(bqm)}
    assert compare_content(dict(ref), ref) == ("identical", 0.0)
    for scale, want in ((1 + 1e-12, "within tolerance"), (1 + 1e-3, "differs")):
        other = bqm.copy()
        other.scale(scale)
        status, dist = compare_content({"content_digest": bqm_digest(other), "fingerprint": bqm_fingerprint(other)}, ref)
        assert status == want and (dist <= FINGERPRINT_RTOL) == (want == "within tolerance")
    assert compare_content({"content_digest": "0"}, ref) == ("differs", math.inf)


def test_small_subset_regenerates_as_committed(tmp_path):
    """``make test``'s digest check: the small subset regenerated (instances only) agrees with the
    committed manifest (bit for bit, or within the fingerprint tolerance on another CPU/BLAS), the
    committed best known adopted and re-evaluated on the regenerated files."""
    from qubo_nn.suite.generate import COMMITTED_MANIFEST, generate_suite, verify_suite

    if not COMMITTED_MANIFEST.is_file():
        pytest.fail(f"{COMMITTED_MANIFEST.name} is missing: expected the committed suite manifest")
    man = generate_suite(tmp_path, "small", ("dimod",), reference=False)
    check = verify_suite(tmp_path)
    assert check["ok"], check["problems"]
    assert check["identical"] + len(check["within_tolerance"]) == len(man["instances"]) == 3
    for e in man["instances"]:
        best = e["meta"]["best_known"]
        assert best["energy"] == pytest.approx(best["energy_committed"], rel=FINGERPRINT_RTOL)
