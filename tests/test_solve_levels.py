"""`solve` of a build folder with the level samplers (gptq, cd, pipeline): the block's integer
form is stored by `build` (block_NNNNN.levels.npz) and handed to the sampler.

References, independent of the code under test: every BQM state enumerated with NumPy (12 binary
variables per block), levels decoded from bits by hand (k_i = Σ_j d_j x_ij), the integer energy
E(k) = const + ½(s∘k − t)ᵀH(s∘k − t) evaluated from the stored arrays, and the samplers called
directly with ``qubo.integer_form`` of the in-memory blocks (no files).
"""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.execution.block_task import pack_bqm, sample_task, to_sampleset
from qubo_nn.cli.main import main
from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import synthetic_features
from qubo_nn.workflows.build import build_to_dir
from qubo_nn.io.blocks import read_block, read_integer_form
from qubo_nn.io.manifest import read_manifest
from qubo_nn.io.bqm_files import write_bqm
from qubo_nn.core.head import Head
from qubo_nn.workflows.build import BuildConfig, iter_block_qubos
from qubo_nn.core.bqm import integer_form
from qubo_nn.samplers import sample
from qubo_nn.workflows.solve import SolveConfig, read_samples, solve
from qubo_nn.core.kernels import gptq
from qubo_nn.core.problem import IntegerForm, IntegerProblem

WIDTH = {"binary": 3, "unary": 3, "domain-wall": 3}   # variables per weight (binary 3 bits; unary 2 bits)
BITS = {"binary": 3, "unary": 2, "domain-wall": 2}


def cfg_for(encoding: str) -> BuildConfig:
    """Top-k blocks of 4 weights: 12 binary variables per block in every encoding."""
    return BuildConfig(blocks="topk", size=4, num_blocks=2, bits=BITS[encoding], encoding=encoding, window=0.5,
                       device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    train, _ = synthetic_features(n=300, dim=5, num_classes=3, seed=1, n_test=50)
    return Head.init_like_linear(3, 5, seed=2), train


@pytest.fixture(scope="module", params=["binary", "unary", "domain-wall"])
def build(request, tiny, tmp_path_factory):
    head, train = tiny
    out = tmp_path_factory.mktemp(f"build-{request.param}")
    build_to_dir(head, train, cfg_for(request.param), out)
    return request.param, out


def all_states(n: int) -> np.ndarray:
    return ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(np.int8)


def hand_levels(x: np.ndarray, encoding: str, width: int) -> np.ndarray:
    """Levels of bits x (…, m·width): binary digits worth 2^j, unary/domain-wall a count."""
    d = 2 ** np.arange(width) if encoding == "binary" else np.ones(width, dtype=np.int64)
    return (x.reshape(*x.shape[:-1], -1, width) * d).sum(-1)


def hand_energy(arrs: dict, k: np.ndarray) -> np.ndarray:
    r = arrs["scale"] * k - arrs["target"]
    return float(arrs["const"]) + 0.5 * np.einsum("...i,ij,...j->...", r, arrs["H"], r)


def stored_arrays(build_dir: Path, block: dict) -> dict:
    """The .levels.npz arrays, with H rebuilt from its stored upper triangle (row-major)."""
    with np.load(build_dir / block["levels"]) as z:
        arrs = {k: z[k] for k in z.files}
    up = arrs.pop("H_upper")
    m = arrs["target"].size
    assert up.size == m * (m + 1) // 2
    H = np.zeros((m, m))
    H[np.triu_indices(m)] = up
    arrs["H"] = H + np.triu(H, 1).T
    return arrs


# ------------------------------------------------------------------------- what build stores

def test_build_stores_the_integer_problem_of_every_block(build, tiny):
    encoding, out = build
    man = read_manifest(out)
    streamed = list(iter_block_qubos(*tiny, cfg_for(encoding)))
    X = all_states(12)
    for entry, blk in zip(man["blocks"], streamed):
        side = json.loads((out / entry["sidecar"]).read_text())
        assert entry["levels"] == side["levels"] == f"block_{entry['block_id']:05d}.levels.npz"
        bqm, enc, _ = read_block(entry["path"])
        assert bqm.num_variables == 12
        arrs = stored_arrays(out, entry)
        assert str(arrs["kind"]) == encoding and int(arrs["bits"]) == BITS[encoding]
        # every state of the BQM: its energy is E(levels of the state) (+ the domain-wall penalty,
        # zero on thermometer codes and >= 0 elsewhere), so the two minima agree
        e_bqm = bqm.energies((X, range(12)))
        e_lev = hand_energy(arrs, hand_levels(X, encoding, WIDTH[encoding]))
        if encoding == "domain-wall":
            codes = np.all(np.diff(X.reshape(-1, 4, 3), axis=-1) <= 0, axis=(1, 2))   # thermometer codes
            np.testing.assert_allclose(e_bqm[codes], e_lev[codes], rtol=0, atol=1e-10)
            assert np.all(e_bqm[~codes] > e_lev[~codes] - 1e-10)
        else:
            np.testing.assert_allclose(e_bqm, e_lev, rtol=0, atol=1e-10)
        assert e_bqm.min() == pytest.approx(e_lev.min(), abs=1e-10)
        # the stored form is the in-memory form of the same block (no torch needed to read it)
        direct = integer_form(blk.model, blk.enc, blk.damping)
        form = read_integer_form(entry["path"])
        for key, val in direct.arrays().items():
            np.testing.assert_array_equal(np.asarray(form.arrays()[key]), np.asarray(val), err_msg=key)


def test_integer_form_arrays_round_trip_and_refuse_missing_keys():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(5, 5))
    p = IntegerProblem(B @ B.T + np.eye(5), rng.normal(size=5), rng.uniform(0.5, 1, 5), 0, 3, const=1.5)
    form = IntegerForm(p, "unary", 2)
    back = IntegerForm.from_arrays(pickle.loads(pickle.dumps(form.arrays())))
    K = rng.integers(0, 4, size=(20, 5))
    assert back.kind == "unary" and back.bits == 2
    np.testing.assert_array_equal(back.problem.energy(K), p.energy(K))
    arrs = form.arrays()
    del arrs["scale"]
    with pytest.raises(QuboNNError, match=r"integer form arrays lack \['scale'\]"):
        IntegerForm.from_arrays(arrs)


# ------------------------------------------------------------------------- solve with level samplers

def test_solve_cd_gives_the_direct_levels_and_their_bqm_energy(build, tiny, tmp_path):
    encoding, out = build
    res = CliRunner().invoke(main, ["solve", str(out), "--sampler", "cd", "--out", str(tmp_path / "sol"), "--json",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    man = read_manifest(out)
    streamed = list(iter_block_qubos(*tiny, cfg_for(encoding)))
    X = all_states(12)
    for row, entry, blk in zip(summary["blocks"], man["blocks"], streamed):
        bqm, _, _ = read_block(entry["path"])
        ss = read_samples(tmp_path / "sol" / row["samples"])
        x = ss.record.sample[0, [ss.variables.index(v) for v in range(12)]]
        k = hand_levels(x, encoding, WIDTH[encoding])
        arrs = stored_arrays(out, entry)
        # the reported energy is the BQM's energy of the bits and E(k) of the levels they encode
        assert row["best_energy"] == pytest.approx(bqm.energy(dict(enumerate(x.tolist()))), abs=1e-12)
        assert row["best_energy"] == pytest.approx(hand_energy(arrs, k), abs=1e-10)
        # same levels as the sampler called directly with the in-memory block's integer form
        direct = sample(blk.bqm, "cd", integer_form=integer_form(blk.model, blk.enc, blk.damping))
        xd = direct.record.sample[0, [direct.variables.index(v) for v in range(12)]]
        np.testing.assert_array_equal(k, hand_levels(xd, encoding, WIDTH[encoding]))
        # not below the brute-force optimum of the BQM, and no single level move lowers E (CD's stop rule)
        assert row["best_energy"] >= bqm.energies((X, range(12))).min() - 1e-10
        kmax = 2 ** BITS[encoding] - 1
        for i in range(4):
            for step in (-1, 1):
                kk = k.copy()
                kk[i] += step
                if 0 <= kk[i] <= kmax:
                    assert hand_energy(arrs, kk) >= hand_energy(arrs, k) - 1e-12


@pytest.mark.parametrize("sampler,params", [("gptq", {}), ("gptq", {"act_order": False}),
                                            ("pipeline", {"num_reads": 2, "num_sweeps": 50, "rounds": 2})])
def test_gptq_and_pipeline_through_solve(build, tmp_path, sampler, params):
    encoding, out = build
    s = solve(out, tmp_path / "sol", SolveConfig(sampler=sampler, params=params, seed=1))
    cd = solve(out, tmp_path / "cd", SolveConfig(sampler="cd"))
    for row, row_cd, entry in zip(s["blocks"], cd["blocks"], read_manifest(out)["blocks"]):
        form = read_integer_form(entry["path"])
        ss = read_samples(tmp_path / "sol" / row["samples"])
        x = ss.record.sample[0, [ss.variables.index(v) for v in range(12)]]
        k = hand_levels(x, encoding, WIDTH[encoding])
        assert row["best_energy"] == pytest.approx(hand_energy(stored_arrays(out, entry), k), abs=1e-10)
        if sampler == "gptq":   # GPTQ's rounding of the stored problem, computed here without files
            np.testing.assert_array_equal(k, gptq(form.problem, act_order=params.get("act_order", True)))
        else:                   # the pipeline starts from the best classical answer: never above cd's
            assert row["best_energy"] <= row_cd["best_energy"] + 1e-12
            assert ss.info["stage"] in ("classical", "anneal", "polish")


def test_shipped_task_carries_the_form_as_arrays_without_torch(build, tmp_path):
    """The Ray path: the task travels pickled with pack_bqm arrays and the form's arrays; the
    worker needs no torch and returns the same samples as the in-process task."""
    encoding, out = build
    entry = read_manifest(out)["blocks"][0]
    bqm, _, _ = read_block(entry["path"])
    form = read_integer_form(entry["path"])
    # subsampler neal: the BQM-window path needs no torch in the worker (the default, batch-anneal, is a
    # torch kernel and loads it)
    base = {"sampler": "pipeline", "params": {"num_reads": 2, "num_sweeps": 50, "subsampler": "neal"}, "seed": 5,
            "polish": False,
            "initial": None, "keep": None}
    local = to_sampleset(sample_task({**base, "bqm": bqm, "form": form}))
    task = tmp_path / "task.pkl"
    task.write_bytes(pickle.dumps({**base, "bqm": pack_bqm(bqm), "form": form.arrays()}))
    code = ("import pickle, sys; from qubo_nn.execution.block_task import sample_task; "
            f"r = sample_task(pickle.loads(open({str(task)!r}, 'rb').read())); "
            f"pickle.dump((r, 'torch' in sys.modules), open({str(tmp_path / 'r.pkl')!r}, 'wb'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    result, torch_loaded = pickle.loads((tmp_path / "r.pkl").read_bytes())
    assert not torch_loaded
    np.testing.assert_array_equal(to_sampleset(result).record.sample, local.record.sample)


# ------------------------------------------------------------------------- files without the integer data

@pytest.fixture
def binary_build(tiny, tmp_path):
    out = tmp_path / "b"
    build_to_dir(*tiny, cfg_for("binary"), out)
    return out


def test_a_build_without_integer_forms_is_refused_with_exit_2(binary_build, tmp_path):
    side = binary_build / "block_00001.json"           # as written before builds stored the form
    obj = json.loads(side.read_text())
    for key in ("levels", "levels_sha256", "levels_bytes"):
        obj.pop(key)
    side.write_text(json.dumps(obj))
    sol = tmp_path / "sol"
    res = CliRunner().invoke(main, ["solve", str(binary_build), "--sampler", "cd", "--out", str(sol), "--no-progress"])
    assert res.exit_code == 2
    assert "block 'block_00001.bqm' has no integer form: its sidecar names no .levels.npz file" in res.output
    assert not sol.exists()                              # nothing of the failed call is left
    # neal needs no integer form: the same folder still solves
    res = CliRunner().invoke(main, ["solve", str(binary_build), "--out", str(sol), "--no-progress"])
    assert res.exit_code == 0, res.output


def test_a_bare_file_or_a_changed_form_is_refused(binary_build, tmp_path):
    bare = tmp_path / "elsewhere" / "block.bqm"
    bare.parent.mkdir()
    shutil.copy(binary_build / "block_00000.bqm", bare)
    res = CliRunner().invoke(main, ["solve", str(bare), "--sampler", "gptq", "--out", str(tmp_path / "s1"),
                                    "--no-progress", "--json"])
    assert res.exit_code == 2 and json.loads(res.output.splitlines()[0])["ok"] is False
    assert "has no integer form: expected a block built by `qubo-nn build`" in res.output
    lev = binary_build / "block_00000.levels.npz"
    lev.write_bytes(lev.read_bytes() + b"\0")
    with pytest.raises(QuboNNError, match=r"integer form file .*block_00000\.levels\.npz' is missing or does not "
                                          r"match its sidecar"):
        solve(binary_build, tmp_path / "s2", SolveConfig(sampler="pipeline"))
    with pytest.raises(QuboNNError, match=r"the integer form comes from the build's files"):
        SolveConfig(sampler="cd", params={"integer_form": None}).validate()
    write_bqm(read_block(binary_build / "block_00001.bqm")[0], tmp_path / "x.bqm")   # dimod still reads it
    assert read_block(tmp_path / "x.bqm")[1] is None
