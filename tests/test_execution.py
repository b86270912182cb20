"""The executor seam (threads | Ray) and the solve loop on it: same samples whatever runs them,
a killed Ray worker costs nothing, bad input fails the same way, an interrupted solve resumes.

The Ray tests share one local instance with 2 CPUs (conftest's module fixture ``ray_local``); they are skipped, with the
install command as the reason, only when Ray is not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import dimod
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.execution import block_task
from qubo_nn.cli.main import main
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import ExecutorConfig, map_unordered
from qubo_nn.data.featureset import synthetic_features
from qubo_nn.workflows.build import build_to_dir
from qubo_nn.io.blocks import read_block
from qubo_nn.core.head import Head
from qubo_nn.workflows.build import BuildConfig
from qubo_nn.samplers import child_seed, sample
from qubo_nn.workflows.solve import SOLUTION_NAME, SolveConfig, decode, read_samples, solve

FAST = {"num_reads": 20, "num_sweeps": 200}
SLOW = {"num_reads": 100, "num_sweeps": 20000}  # about a second per 14-variable block: time to kill a worker


@pytest.fixture(scope="module")
def tiny():
    """3 classes × 6 features: 3 row blocks of 7 weights, 2 bits → 14 variables each."""
    torch.manual_seed(0)
    train, _ = synthetic_features(n=400, dim=6, num_classes=3, seed=0, n_test=100)
    return Head.init_like_linear(3, 6, seed=0), train


@pytest.fixture(scope="module")
def build(tiny, tmp_path_factory):
    head, train = tiny
    out = tmp_path_factory.mktemp("build")
    build_to_dir(head, train, BuildConfig(bits=2, window=0.25, device="cpu", dtype="float64"), out)
    return out


def _samples(sol: Path, summary: dict) -> list[dimod.SampleSet]:
    return [read_samples(sol / r["samples"]) for r in summary["blocks"]]


def _assert_same_samples(a: list[dimod.SampleSet], b: list[dimod.SampleSet]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert list(sa.variables) == list(sb.variables)
        np.testing.assert_array_equal(sa.record.sample, sb.record.sample)
        np.testing.assert_array_equal(sa.record.energy, sb.record.energy)  # bit-identical, not approx


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --------------------------------------------------------------------------- compact arrays

@pytest.mark.parametrize("case", ["dense", "sparse-zero-coupler", "labels-spin-float32"])
def test_packed_bqm_rebuilds_the_same_model(case):
    rng = np.random.default_rng(1)
    if case == "dense":
        n = 40
        bqm = dimod.BinaryQuadraticModel(rng.normal(size=n), np.triu(rng.normal(size=(n, n)), 1), 0.7, "BINARY")
    elif case == "sparse-zero-coupler":
        bqm = dimod.BinaryQuadraticModel({0: 1.0, 1: -2.0, 2: 0.5, 3: 0.0}, {(0, 1): 0.0, (2, 3): 1.5}, -1.0, "BINARY")
    else:
        bqm = dimod.BinaryQuadraticModel({"a": 1.0, "b": -0.25, "d": 0.5}, {("a", "b"): 2.0, ("b", "c"): -1.0}, 3.0,
                                         "SPIN", dtype=np.float32)
    packed = block_task.pack_bqm(bqm)
    assert ("upper" in packed) == (case == "dense")  # dense triangle only when most pairs interact
    assert all(not isinstance(v, dimod.BinaryQuadraticModel) for v in packed.values())
    back = block_task.unpack_bqm(packed)
    assert back == bqm and back.dtype == bqm.dtype and back.vartype is bqm.vartype
    assert list(back.variables) == list(bqm.variables) and back.num_interactions == bqm.num_interactions
    states = rng.integers(0, 2, size=(50, bqm.num_variables)).astype(np.int8)
    if bqm.vartype is dimod.SPIN:
        states = 2 * states - 1
    labels = list(bqm.variables)
    np.testing.assert_array_equal(back.energies((states, labels)), bqm.energies((states, labels)))


# --------------------------------------------------------------------------- executors

def _square(x: int) -> int:
    if x < 0:
        raise QuboNNError(f"expected x >= 0, got {x}")
    return x * x


def _bounded_run(cfg: ExecutorConfig, n: int) -> tuple[dict[int, int], int]:
    taken = [0]
    done = 0
    most = 0

    def items():
        for i in range(n):
            taken[0] += 1
            yield i

    results = {}
    with closing(map_unordered(_square, items(), cfg)) as it:
        for i, value in it:
            most = max(most, taken[0] - done)
            done += 1
            results[i] = value
    return results, most


@pytest.mark.parametrize("executor", ["threads", "ray"])
def test_map_unordered_every_result_and_bounded_in_flight(request, executor):
    if executor == "ray":
        request.getfixturevalue("ray_local")
    results, most = _bounded_run(ExecutorConfig(executor=executor, workers=2, max_in_flight=3), 20)
    assert results == {i: i * i for i in range(20)}
    assert most <= 3  # the lazy source is never read more than max_in_flight ahead of the results


@pytest.mark.parametrize("executor", ["threads", "ray"])
def test_task_error_reaches_the_driver_unchanged(request, executor):
    if executor == "ray":
        request.getfixturevalue("ray_local")
    with pytest.raises(QuboNNError, match=r"^expected x >= 0, got -1$") as info:
        list(map_unordered(_square, [1, -1, 2], ExecutorConfig(executor=executor, workers=2)))
    assert type(info.value) is QuboNNError


def test_executor_config_is_checked():
    with pytest.raises(QuboNNError, match="executor must be one of threads, ray, got 'dask'"):
        ExecutorConfig(executor="dask").validate()
    with pytest.raises(QuboNNError, match="ray_address needs executor 'ray'"):
        ExecutorConfig(ray_address="auto").validate()
    with pytest.raises(QuboNNError, match="max_in_flight must be None or an integer >= 1, got 0"):
        ExecutorConfig(max_in_flight=0).validate()


def test_ray_missing_fails_at_once_with_the_install_command(build, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "new" / "sol"
    with pytest.raises(QuboNNError, match=r"needs Ray, which is not installed: pip install 'qubo-nn\[ray\]'"):
        solve(build, out, SolveConfig(executor="ray"))
    assert not (tmp_path / "new").exists()
    res = CliRunner().invoke(main, ["solve", str(build), "--out", str(out), "--executor", "ray", "--no-progress"])
    assert res.exit_code == 2 and "pip install 'qubo-nn[ray]'" in res.output
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- solve on the seam

def test_threads_and_ray_give_bit_identical_samples(ray_local, build, tmp_path):
    cfg = SolveConfig(params=FAST, seed=11, workers=2)
    a = solve(build, tmp_path / "threads", cfg)
    b = solve(build, tmp_path / "ray", replace(cfg, executor="ray"))
    sa, sb = _samples(tmp_path / "threads", a), _samples(tmp_path / "ray", b)
    _assert_same_samples(sa, sb)
    # the reference, independent of any executor: each block sampled directly, seed derived as documented
    for row, ss in zip(b["blocks"], sb):
        bqm, enc, _ = read_block(build / f"block_{row['block_id']:05d}.bqm")
        x0 = enc.current_bits().numpy().astype(np.int8)
        ref = sample(bqm, "neal", seed=child_seed(11, row["block_id"]), initial_states=x0, **FAST)
        np.testing.assert_array_equal(ss.record.sample, ref.record.sample)
        assert row["seed"] == child_seed(11, row["block_id"])
    nodes = {r["node"] for r in b["blocks"]}
    assert nodes == {ray_local.get_runtime_context().get_node_id()} and {r["node"] for r in a["blocks"]} == {"local"}
    assert [r["best_energy"] for r in a["blocks"]] == [r["best_energy"] for r in b["blocks"]]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _ray_task_pids() -> list[int]:
    """Workers of THIS test's Ray instance running a task of ours: Ray sets the process title to
    ray::<function>, and the workers are children of the raylet that this process started (never
    touch another process's Ray workers on a shared machine)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
                if cmd.startswith(b"ray::_ray_call") and _parent(_parent(int(entry))) == os.getpid():
                    pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray workers through /proc (Linux)")
def test_killed_ray_worker_still_gives_the_full_identical_result(ray_local, build, tmp_path):
    cfg = SolveConfig(params=SLOW, seed=5, workers=2)
    ref = solve(build, tmp_path / "threads", cfg)
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not killed:
            for pid in _ray_task_pids():
                os.kill(pid, signal.SIGKILL)  # a worker process dies in the middle of a block
                killed.append(pid)
                break
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        got = solve(build, tmp_path / "ray", replace(cfg, executor="ray"))
    finally:
        stop.set()
        thread.join()
    assert killed, "no Ray worker was seen running a block"
    assert got["totals"]["blocks"] == 3
    _assert_same_samples(_samples(tmp_path / "threads", ref), _samples(tmp_path / "ray", got))


def _corrupt_copy(build: Path, dest: Path) -> Path:
    shutil.copytree(build, dest)
    path = dest / "block_00001.bqm"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes: the sidecar's sha256 no longer matches
    path.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("damage", ["block file", "sampler option"])
def test_bad_input_fails_the_same_with_threads_and_ray(ray_local, build, tmp_path, damage):
    src = _corrupt_copy(build, tmp_path / "bad") if damage == "block file" else build
    params = FAST if damage == "block file" else {"num_read": 3}  # refused inside the task, on the worker
    match = "does not match its sidecar" if damage == "block file" else "does not accept parameter"
    messages, outputs = {}, {}
    for executor in ("threads", "ray"):
        out = tmp_path / f"sol-{executor}"
        with pytest.raises(QuboNNError, match=match) as info:
            solve(src, out, SolveConfig(params=params, workers=2, executor=executor))
        messages[executor] = str(info.value)
        assert not out.exists()  # a failing solve leaves nothing, not even the folder it made
        args = ["solve", str(src), "--out", str(out), "--executor", executor, "--workers", "2", "--no-progress",
                "--params", json.dumps(params)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        outputs[executor] = res.output
        assert not out.exists()
    assert messages["threads"] == messages["ray"]
    assert outputs["threads"] == outputs["ray"] and outputs["ray"].startswith("Error: ")


# --------------------------------------------------------------------------- interruption, resume, outputs

def test_interrupted_solve_keeps_finished_blocks_and_resumes(build, tmp_path, monkeypatch):
    import qubo_nn.workflows.solve as solve_mod

    cfg = SolveConfig(params=FAST, seed=3, workers=1)
    fresh = solve(build, tmp_path / "fresh", cfg)
    out = tmp_path / "sol"
    real = solve_mod._finish_block
    calls = []

    def interrupt_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C while the second block is being handled
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(solve_mod, "_finish_block", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        solve(build, out, cfg)
    monkeypatch.setattr(solve_mod, "_finish_block", real)
    left = _tree(out)
    assert left == ["block_00000.samples.json"]  # the finished block; no solution.json, nothing hidden

    solved = []
    monkeypatch.setattr(solve_mod, "_finish_block",
                        lambda meta, *a, **k: solved.append(meta["blk"]["block_id"]) or real(meta, *a, **k))
    again = solve(build, out, cfg)
    assert sorted(solved) == [1, 2]  # block 0 was not solved again
    assert [r["resumed"] for r in again["blocks"]] == [True, False, False] and again["totals"]["resumed"] == 1
    _assert_same_samples(_samples(tmp_path / "fresh", fresh), _samples(out, again))
    assert [r["best_energy"] for r in again["blocks"]] == [r["best_energy"] for r in fresh["blocks"]]
    assert _tree(out) == [f"block_0000{k}.samples.json" for k in range(3)] + [SOLUTION_NAME]

    solved.clear()
    third = solve(build, out, cfg)  # all done: nothing solved, the same summary rows
    assert solved == [] and third["totals"]["resumed"] == 3


def test_resume_is_refused_when_settings_or_sources_changed(build, tmp_path):
    src = tmp_path / "build"
    shutil.copytree(build, src)
    out = tmp_path / "sol"
    solve(src, out, SolveConfig(params=FAST, seed=3))
    before = {p: (out / p).read_bytes() for p in _tree(out)}
    with pytest.raises(QuboNNError, match=r"holds 3 samples file\(s\) of other blocks or made with other settings"):
        solve(src, out, SolveConfig(params=FAST, seed=4))
    assert {p: (out / p).read_bytes() for p in _tree(out)} == before  # refused: nothing touched
    # same settings, but a block's encoding changed since: its stored result is not trusted
    npz = src / "block_00002.npz"
    npz.write_bytes(npz.read_bytes() + b"\0")
    with pytest.raises(QuboNNError, match=r"holds 1 samples file\(s\).*block_00002\.samples\.json"):
        solve(src, out, SolveConfig(params=FAST, seed=3))
    again = solve(build, out, SolveConfig(params=FAST, seed=4), overwrite=True)
    assert again["totals"]["resumed"] == 0


def test_existing_output_of_other_blocks_is_refused_without_overwrite(build, tmp_path):
    out = tmp_path / "sol"
    solve(build / "block_00001.bqm", out, SolveConfig(params=FAST))  # a solution of one file
    (out / "notes.txt").write_text("mine")
    with pytest.raises(QuboNNError, match=r"holds .*a solution\.json of another source or other settings.*"
                                          r"pass overwrite \(--overwrite\)"):
        solve(build, out, SolveConfig(params=FAST))
    res = CliRunner().invoke(main, ["solve", str(build), "--out", str(out), "--no-progress", "--params",
                                    json.dumps(FAST)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    (out / "block_00007.samples.json").write_text("{}")  # samples of a block this build does not have
    res = CliRunner().invoke(main, ["solve", str(build), "--out", str(out), "--no-progress", "--params",
                                    json.dumps(FAST), "--overwrite", "--json"])
    assert res.exit_code == 0, res.output
    assert _tree(out) == [f"block_0000{k}.samples.json" for k in range(3)] + ["notes.txt", SOLUTION_NAME]
    assert (out / "notes.txt").read_text() == "mine"  # only the solve's own files were replaced


def test_failing_solve_into_an_existing_folder_leaves_it_as_it_was(build, tmp_path):
    bad = _corrupt_copy(build, tmp_path / "bad")
    out = tmp_path / "sol"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(QuboNNError, match="does not match its sidecar"):
        solve(bad, out, SolveConfig(params=FAST, workers=2))
    assert _tree(out) == ["keep.txt"]


def test_solution_names_blocks_relative_to_its_folder_and_survives_a_move(tiny, build, tmp_path):
    head, train = tiny
    work = tmp_path / "work"
    shutil.copytree(build, work / "build")
    s = solve(work / "build", work / "runs" / "sol", SolveConfig(params=FAST))
    for row in s["blocks"]:
        assert row["file"] == f"../../build/block_{row['block_id']:05d}.bqm"
    assert s["manifest"] == "../../build/manifest.json"
    moved = tmp_path / "moved"
    shutil.move(str(work), str(moved))  # build and solution move together
    report = decode(moved / "runs" / "sol", feats=train, device="cpu")
    assert report["blocks"] == 3
    L0 = s["totals"]["L0"]
    assert report["predicted_loss"] == pytest.approx(L0 + sum(min(r["best_energy"], r["current_energy"]) - L0
                                                               for r in s["blocks"]), abs=1e-12)


# --------------------------------------------------------------------------- the hybrid's anneal stage

def test_hybrid_anneal_stage_gives_the_same_run_on_ray(ray_local, one_thread):
    from qubo_nn.workflows.head_optimize import HybridConfig, hybrid_sweeps

    train, _ = synthetic_features(n=400, dim=8, num_classes=4, seed=3, n_test=10, separation=0.5)
    head = Head.init_like_linear(4, 8, seed=0)
    cfg = HybridConfig(build=BuildConfig(bits=3), sampler_params={"num_reads": 2, "num_sweeps": 50}, sweeps=2,
                       tol=0.0, workers=2, seed=9)
    out_t, rec_t = hybrid_sweeps(head, train, cfg, "cpu")
    out_r, rec_r = hybrid_sweeps(head, train, replace(cfg, executor="ray"), "cpu")
    assert rec_t["accepted"] >= 1  # the run did something to compare
    assert torch.equal(out_t.W, out_r.W) and torch.equal(out_t.b, out_r.b)
    keys = ("accepted", "energy_best", "energy_current", "seed", "moved_weights", "loss_after")
    assert [[{k: a.get(k) for k in keys} for a in e["attempts"]] for e in rec_t["blocks"]] == \
           [[{k: a.get(k) for k in keys} for a in e["attempts"]] for e in rec_r["blocks"]]
    with pytest.raises(QuboNNError, match="ray_address needs executor 'ray'"):
        replace(cfg, ray_address="auto").validate()
