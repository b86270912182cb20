"""Issue 23 (reliability, round two): one test per item. Each runs the command (or library call),
checks the exit code and the message, and that no input, earlier result or folder was changed or
left half-written."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dimod
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from qubo_nn.errors import QuboNNError
from qubo_nn.io.bqm_files import read_bqm, write_bqm
from qubo_nn.io.locks import LOCK_NAME, folder_lock
from qubo_nn.samplers import sample

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["--dataset", "synthetic-features", "--n-train", "300", "--n-test", "50", "--device", "cpu"]


def invoke(*args: str, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) → sha256: equal snapshots, nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def refused(res, message: str, as_json: bool = True) -> None:
    """Exit 2, the message on stderr, and (``--json``) exactly one JSON object, without NaN, saying so."""
    assert res.exit_code == 2, res.output
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.output
    if as_json:
        obj = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
        assert obj["ok"] is False and message in obj["error"]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Three top-k blocks of 4 weights × 2 bits (8 variables each), 300 synthetic samples."""
    out = tmp_path_factory.mktemp("rel2") / "sb"
    res = invoke("build", *FEATURES, "--warmup-epochs", "0", "--blocks", "topk", "--block-size", "4",
                 "--num-blocks", "3", "--bits", "2", "--out", out, "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def sb(build, tmp_path):
    """A private copy of the build (tests may damage it)."""
    return Path(shutil.copytree(build, tmp_path / "sb"))


@pytest.fixture(scope="module")
def solved(build, tmp_path_factory):
    sol = tmp_path_factory.mktemp("rel2sol") / "sol"
    res = invoke("solve", build, "--out", sol, "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    return sol


def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


# --------------------------------------------------------------------------- 1: huge biases

@pytest.mark.parametrize("sampler", ["tabu", "neal", "steepest", "random", "sb"])
def test_1_biases_that_overflow_are_refused_by_every_sampler(tmp_path, sampler):
    huge = dimod.BinaryQuadraticModel({0: 1e308, 1: -1e308, 2: 1e308}, {(0, 1): 1e308, (1, 2): -1e308}, 0.0, "BINARY")
    with huge.to_file() as src:                       # written by dimod itself: our writer is not the gate
        (tmp_path / "huge.bqm").write_bytes(src.read())
    (tmp_path / "dup.coo").write_text("0 0 1.0\n0 1 1e308\n1 0 1e308\n1 1 2.0\n")   # finite, inf once summed
    before = snapshot(tmp_path)
    for name in ("huge.bqm", "dup.coo"):
        res = invoke("solve", tmp_path / name, "--sampler", sampler, "--out", tmp_path / "sol", "--json",
                     "--no-progress")
        refused(res, "the biases are too large")
        assert "beta_range" not in res.output and "NaN" not in res.output
    assert snapshot(tmp_path) == before and not (tmp_path / "sol").exists()
    with pytest.raises(QuboNNError, match=r"the biases are too large: \|offset\| \+ sum of \|biases\| = inf"):
        sample(huge, sampler, seed=0)


def test_1_json_output_never_holds_nan(capsys):
    from qubo_nn.cli.common import emit

    emit({"a": float("nan"), "b": [float("inf"), 1.5]}, True)
    assert json.loads(capsys.readouterr().out) == {"ok": True, "a": None, "b": [None, 1.5]}


# --------------------------------------------------------------------------- 4, 7, 10: manifests

MANIFEST_DAMAGE = [
    ("duplicate id", lambda m: m["blocks"].append(dict(m["blocks"][0])), "block id 0 is listed twice"),
    ("missing key", lambda m: m.pop("L0"), "the manifest lacks ['L0']"),
    ("null L0", lambda m: m.update(L0=None), "field 'L0' must be a number, got None"),
    ("wrong type", lambda m: m["blocks"][1].update(file=5), "block entry 1 field 'file' must be a string, got 5"),
    ("string id", lambda m: m["blocks"][0].update(block_id="0"), "field 'block_id' must be an integer, got '0'"),
    ("negative id", lambda m: m["blocks"][2].update(block_id=-1), "block entry 2 has block_id -1, expected a non"),
    ("blocks dict", lambda m: m.update(blocks={"0": m["blocks"][0]}), "field 'blocks' must be a list"),
    ("outside", lambda m: m["blocks"][0].update(file="../../other/block_00000.bqm"), "lies outside the folder"),
]


@pytest.mark.parametrize("what, damage, message", MANIFEST_DAMAGE, ids=[d[0] for d in MANIFEST_DAMAGE])
def test_4_7_10_damaged_manifests_exit_2_and_change_nothing(sb, tmp_path, what, damage, message):
    other = tmp_path / "other"                          # a real block file outside the build
    other.mkdir()
    shutil.copy(sb / "block_00000.bqm", other / "block_00000.bqm")
    edit_json(sb / "manifest.json", damage)
    before = snapshot(tmp_path)
    refused(invoke("solve", sb, "--out", tmp_path / "sol", "--json", "--no-progress"), message)
    assert snapshot(tmp_path) == before


def test_10_symlinked_block_files_are_not_followed(sb, tmp_path):
    real = tmp_path / "elsewhere.bqm"
    shutil.move(sb / "block_00001.bqm", real)
    (sb / "block_00001.bqm").symlink_to(real)
    before = snapshot(tmp_path)
    refused(invoke("solve", sb, "--out", tmp_path / "sol", "--json", "--no-progress"), "is a symbolic link")
    assert snapshot(tmp_path) == before


def test_7_solution_rows_and_decode_build_are_checked(sb, solved, tmp_path):
    sol = Path(shutil.copytree(solved, tmp_path / "sol"))
    edit_json(sol / "solution.json", lambda s: s["blocks"][1].pop("samples"))
    before = snapshot(tmp_path)
    refused(invoke("decode", sol, "--build", sb, "--device", "cpu", "--json"), "block row 1 lacks ['samples']")
    shutil.copy(solved / "solution.json", sol / "solution.json")
    edit_json(sb / "manifest.json", lambda m: m.pop("head_digest"))
    before = snapshot(tmp_path)
    refused(invoke("decode", sol, "--build", sb, "--device", "cpu", "--json"), "the manifest lacks ['head_digest']")
    assert snapshot(tmp_path) == before


def test_7_odd_names_and_numbers_exit_2(tmp_path, monkeypatch):
    m = tmp_path / "m.coo"
    m.write_text("0 0 1.0\n0 1 -2.0\n1 1 0.5\n")
    refused(invoke("solve", m, "--out", tmp_path / ("x" * 300), "--json", "--no-progress"), "File name too long")
    (tmp_path / "big.qubo").write_text("p qubo 0 3000000000 1 0\n0 0 1\n")
    (tmp_path / "big.coo").write_text("# num_variables=3000000000\n0 0 1\n")
    (tmp_path / "label.coo").write_text("0 0 1\n2999999999 2999999999 1\n")
    for name, message in (("big.qubo", "maxNodes = 3000000000, expected 0..67108864"),
                          ("big.coo", "num_variables=3000000000 exceeds the 67108864 variables"),
                          ("label.coo", "label 2999999999 exceeds the largest supported label")):
        refused(invoke("solve", tmp_path / name, "--out", tmp_path / "sol", "--json", "--no-progress"), message)
    refused(invoke("build", *FEATURES, "--warmup-epochs", "0", "--step-rule", "fixed", "--step", "1e308",
                   "--out", tmp_path / "b", "--json"), "step must be a finite number of at most 1e+06")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.coo", "big.qubo", "label.coo", "m.coo"]


@pytest.mark.parametrize("command", [
    ["train", "--dataset", "digits", "--epochs", "1"],
    ["build", "--dataset", "digits", "--warmup-epochs", "0"],
    ["quantize", "--dataset", "digits", "--bits", "2", "--method", "rtn"],
])
def test_7_8_cache_folder_below_a_file_exits_2_before_any_extraction(tmp_path, monkeypatch, command):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("QUBO_NN_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.chdir(tmp_path)
    res = invoke(*command, "--device", "cpu", "--no-progress", "--json")
    refused(res, "is a file, expected a folder (check $QUBO_NN_CACHE or --cache-dir)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --------------------------------------------------------------------------- 5, 14: resume

def test_5_14_resume_recomputes_and_refuses_edited_rows(build, tmp_path):
    sol = tmp_path / "sol"
    first = json.loads(invoke("solve", build, "--out", sol, "--no-progress", "--json").stdout)
    (sol / "solution.json").unlink()
    res = invoke("solve", build, "--out", sol, "--no-progress", "--json")
    again = json.loads(res.stdout)
    assert again["totals"]["resumed"] == 3 and again["totals"]["sample_time_s"] == 0
    assert again["totals"]["sample_time_s"] <= again["totals"]["wall_time_s"]
    assert [r["builder_block"] for r in again["blocks"]] == [True] * 3      # not 1
    assert [r["best_energy"] for r in again["blocks"]] == [r["best_energy"] for r in first["blocks"]]
    # the edit of the issue: best_energy −123 in a finished samples file, solution.json deleted
    edit_json(sol / "block_00001.samples.json",
              lambda o: o["info"]["qubo_nn_solve"]["row"].update(best_energy=-123.0))
    (sol / "solution.json").unlink()
    before = snapshot(sol)
    refused(invoke("solve", build, "--out", sol, "--no-progress", "--json"),
            "1 damaged samples file(s) (truncated, not a SampleSet, or its row does not match its samples: "
            "block_00001.samples.json)")
    assert snapshot(sol) == before
    # a truncated file is called damaged too, not "made with other settings"
    text = (sol / "block_00002.samples.json").read_text()
    (sol / "block_00002.samples.json").write_text(text[:len(text) // 2])
    res = invoke("solve", build, "--out", sol, "--no-progress")
    assert res.exit_code == 2 and "2 damaged samples file(s)" in res.stderr and "other settings" not in res.stderr


# --------------------------------------------------------------------------- 6: one run per folder

def test_6_a_second_solve_into_a_locked_folder_exits_2_naming_the_holder(build, tmp_path):
    out = tmp_path / "sol"
    out.mkdir()
    with folder_lock(out):
        before = snapshot(out)
        refused(invoke("solve", build, "--out", out, "--seed", "1", "--json", "--no-progress"),
                f"output folder {str(out)!r} is in use by another qubo-nn run (pid {os.getpid()})")
        assert snapshot(out) == before
    assert not (out / LOCK_NAME).exists()
    assert invoke("solve", build, "--out", out, "--no-progress").exit_code == 0


# --------------------------------------------------------------------------- 8: checks before writing

@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
    (["--device", "cuda:3"], "CUDA is not available"),
    (["--subsample", "999999"], "subsample must be at most the 300 training samples, got 999999"),
    (["--max-qubo-gib", "1e-9"], "a dense QUBO of 2052 variables needs about 0.1 GiB, over the limit"),
])
def test_8_build_refuses_before_writing_anything(tmp_path, extra, message):
    if "cuda:3" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    args = [a for a in FEATURES if a not in ("--device", "cpu")] if "--device" in extra else FEATURES
    res = invoke("build", *args, "--warmup-epochs", "0", *extra, "--out", tmp_path / "b", "--json")
    refused(res, message)
    assert not (tmp_path / "b").exists()


def test_8_build_overwrite_removes_temporaries_of_an_interrupted_build(sb, tmp_path):
    for name in (".block_00000.levels.npz.x1y2.tmp", ".head.pt.abc.tmp", ".manifest.json.q.tmp"):
        (sb / name).write_bytes(b"partial")
    (sb / "notes.txt").write_text("mine")
    res = invoke("build", *FEATURES, "--warmup-epochs", "0", "--blocks", "topk", "--block-size", "4",
                 "--num-blocks", "3", "--bits", "2", "--out", sb, "--overwrite", "--no-progress")
    assert res.exit_code == 0, res.output
    assert not list(sb.glob(".*.tmp")) and (sb / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- 9: signals

def test_9_sigterm_during_solve_exits_143_with_one_json_object_and_resumes(build, tmp_path):
    out = tmp_path / "sol"
    cmd = [sys.executable, "-c", "import sys; from qubo_nn.cli.main import main; sys.argv[0] = 'qubo-nn'; main()",
           "solve", str(build), "--out", str(out), "--json", "--no-progress", "--num-reads", "100",
           "--num-sweeps", "20000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not list(out.glob("*.samples.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the solve finished before the signal came")
    assert proc.returncode == 143, stderr
    obj = json.loads(stdout)
    assert obj == {"ok": False, "kind": "interrupted", "exit_code": 143,
                   "error": "terminated (SIGTERM); rerun the same command to resume"}
    assert "Traceback" not in stderr and not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()
    done = len(list(out.glob("*.samples.json")))
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["totals"]["resumed"] == done >= 1


def test_9_ctrl_c_under_json_prints_one_json_object(build, tmp_path, monkeypatch):
    from qubo_nn.workflows import solve as solve_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(solve_mod, "_solve_locked", interrupted)
    res = invoke("solve", build, "--out", tmp_path / "sol", "--json", "--no-progress")
    assert res.exit_code == 130
    assert json.loads(res.stdout) == {"ok": False, "kind": "interrupted", "exit_code": 130,
                                      "error": "interrupted (Ctrl-C); rerun the same command to resume"}
    assert not (tmp_path / "sol").exists()


# --------------------------------------------------------------------------- 11, 12: plain files

def test_11_an_unrelated_json_beside_a_qubo_file_is_no_sidecar(tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    write_bqm(dimod.BinaryQuadraticModel({0: 1.0, 1: -2.0}, {(0, 1): 1.5}, 0.0, "BINARY"), side / "problem.bqm")
    (side / "problem.json").write_text('{"who": "someone else"}')
    res = invoke("solve", side / "problem.bqm", "--out", tmp_path / "sol", "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["blocks"][0]["best_energy"] == -2.0   # x = (0, 1), by brute force


def test_12_inconsistent_headers_are_refused(tmp_path):
    (tmp_path / "hdr.coo").write_text("# num_variables=2\n0 0 1\n5 5 1\n")
    (tmp_path / "one.coo").write_text("1 1 1\n1 2 1\n2 2 1\n")
    dqm = dimod.DiscreteQuadraticModel()
    dqm.add_variable(2)
    with dqm.to_file() as src:
        (tmp_path / "dqm.bqm").write_bytes(src.read())
    good = dimod.BinaryQuadraticModel({0: 1.0, 1: 2.0}, {(0, 1): 1.0}, 0.0, "BINARY")
    with good.to_file() as src:
        raw = bytearray(src.read())
    at = raw.find(b"BinaryQuadraticModel")
    raw[at:at + 20] = b"DiscreteQuadraticMod"
    (tmp_path / "typed.bqm").write_bytes(bytes(raw))
    for name, message in (("hdr.coo", "label 5 does not fit the header's num_variables=2: expected labels 0..1"),
                          ("one.coo", "labels start at 1, expected 0-based labels"),
                          ("dqm.bqm", "holds a dimod DQM model (magic b'DIMODDQM'), expected a BQM"),
                          ("typed.bqm", "its header says 'DiscreteQuadraticMod', expected a BinaryQuadraticModel")):
        with pytest.raises(QuboNNError, match=re.escape(message)):
            read_bqm(tmp_path / name)
        refused(invoke("solve", tmp_path / name, "--out", tmp_path / "sol", "--json", "--no-progress"), message)
    assert not (tmp_path / "sol").exists()


# --------------------------------------------------------------------------- 13: options that do nothing

@pytest.mark.parametrize("extra, message", [
    (["--step", "0.1"], "step (--step) is used only by step_rule 'fixed' (--step-rule fixed)"),
    (["--num-blocks", "3"], "num_blocks (--num-blocks) applies only to block kind 'topk'"),
])
def test_13_build_options_that_would_do_nothing_exit_2(tmp_path, extra, message):
    refused(invoke("build", *FEATURES, "--warmup-epochs", "0", *extra, "--out", tmp_path / "b", "--json"), message)
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- 14: honest output

def test_14_build_reports_the_bytes_it_wrote_beside_the_estimate(build):
    man = json.loads((build / "manifest.json").read_text())
    t = man["totals"]
    on_disk = sum(p.stat().st_size for p in build.iterdir() if p.name != "manifest.json")
    assert t["bytes_on_disk"] == on_disk
    assert t["bytes"] == sum((build / b["file"]).stat().st_size for b in man["blocks"])
    assert 0.5 < t["estimated_bytes"] / on_disk < 2.0     # tiny blocks: the fixed overheads dominate


def test_14_solve_text_separates_sampling_from_reading_and_samplers_lists_usable_options(build, tmp_path):
    res = invoke("solve", build, "--out", tmp_path / "sol", "--no-progress")
    assert res.exit_code == 0 and "  with reading and writing: " in res.stdout
    assert "cross terms between blocks ignored; `decode` injects only the blocks" in res.stdout
    rows = json.loads(invoke("samplers", "--json").stdout)["samplers"]
    assert all("integer_form" not in r["parameters"] for r in rows)
    assert all("``" not in r["summary"] and ":class:" not in r["summary"] for r in rows)


# --------------------------------------------------------------------------- 15: messages that name the problem

class NotWeights:   # pickled by reference: torch's weights-only loader refuses it
    pass


def test_15_head_files_refused_for_what_they_are(tmp_path):
    torch.save({"weight": NotWeights(), "bias": torch.zeros(10)}, tmp_path / "evil.pt")
    torch.save({"weight": torch.full((10, 512), 1e38), "bias": torch.zeros(10)}, tmp_path / "huge.pt")
    for name, message in (("evil.pt", "is not a weights file: it holds pickled Python objects beyond tensors"),
                          ("huge.pt", "the largest |weight| is 1e+38, expected finite weights of at most 1e+12")):
        res = invoke("build", *FEATURES, "--head", tmp_path / name, "--out", tmp_path / "b", "--json")
        refused(res, message)
        assert "\x1b[" not in res.output and "weights_only" not in res.output
    assert not (tmp_path / "b").exists()


def test_15_initial_states_for_a_sampler_without_them_names_the_choice():
    bqm = dimod.BinaryQuadraticModel({0: 1.0, 1: -1.0}, {(0, 1): 0.5}, 0.0, "BINARY")
    with pytest.raises(QuboNNError, match=r"sampler 'exact' does not take initial states .* use a sampler that "
                                          r"takes them \(neal, tabu, steepest\) or give none"):
        sample(bqm, "exact", initial_states=np.zeros((1, 2), dtype=np.int8))

