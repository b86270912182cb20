"""Issue 11: bad input exits 2 before any work, Ctrl-C exits 130, usage errors as JSON, builds and
solutions that move, decode's true-loss acceptance, and the torch-free start-up path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dimod
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from qubo_nn.workflows.decode import decode
from qubo_nn.data.featureset import FeatureSet, synthetic_features
from qubo_nn.workflows.build import build_to_dir
from qubo_nn.io.manifest import read_manifest
from qubo_nn.io.bqm_files import write_bqm
from qubo_nn.core.head import Head, evaluate
from qubo_nn.workflows.build import BuildConfig
from qubo_nn.workflows.solve import SolveConfig, solve

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY_FEATURES = ["--dataset", "synthetic-features", "--n-train", "120", "--n-test", "20", "--device", "cpu",
                 "--no-progress"]


def invoke(*args: str, **kw):
    return CliRunner().invoke(main, list(args), **kw)


def small_bqm(tmp_path: Path) -> Path:
    path = tmp_path / "m.bqm"
    write_bqm(dimod.BinaryQuadraticModel({0: 1.0, 1: -2.0, 2: 0.5}, {(0, 1): 1.5, (1, 2): -1.0}, 0.25, "BINARY"),
              path)
    return path


# --------------------------------------------------------------------------- bad files and options → exit 2

@pytest.mark.parametrize("name, text", [("empty.coo", ""), ("end.coo", "# end\n")])
def test_solve_of_an_empty_coo_exits_2(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    res = invoke("solve", str(tmp_path / name), "--out", str(tmp_path / "sol"), "--no-progress")
    assert res.exit_code == 2 and "holds no QUBO: expected lines 'i j bias'" in res.output
    assert not (tmp_path / "sol").exists()


@pytest.mark.parametrize("linear, offset, message", [
    ({0: float("nan"), 1: 1.0}, 0.0, "1 biases are NaN/Inf"),
    ({0: 1.0, 1: 1.0}, float("inf"), "the offset is inf"),
])
def test_solve_of_a_native_bqm_with_nan_or_inf_exits_2(tmp_path, linear, offset, message):
    write_bqm(dimod.BinaryQuadraticModel(linear, {(0, 1): 1.0}, offset, "BINARY"), tmp_path / "bad.bqm")
    res = invoke("solve", str(tmp_path / "bad.bqm"), "--out", str(tmp_path / "sol"), "--no-progress")
    assert res.exit_code == 2 and message in res.output and "nan" not in res.output.split(message)[0].lower()


@pytest.mark.parametrize("extra", [["--beta-range", "5", "1"], ["-m", '{"beta_range": [5, 1]}']])
def test_reversed_beta_range_exits_2_naming_the_order(tmp_path, extra):
    res = invoke("solve", str(small_bqm(tmp_path)), "--out", str(tmp_path / "sol"), "--no-progress", *extra)
    assert res.exit_code == 2
    assert "--beta-range expects HOT COLD with 0 < hot < cold" in res.output and "got 5 1" in res.output
    assert not (tmp_path / "sol").exists()
    ok = invoke("solve", str(small_bqm(tmp_path)), "--out", str(tmp_path / "sol"), "--no-progress",
                "--beta-range", "1", "5")
    assert ok.exit_code == 0, ok.output


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot write to: chmod 555 (non-root) or a read-only file system."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    candidates = [d, Path("/sys"), Path("/proc")]
    try:
        for c in candidates:
            try:
                fd, probe = tempfile.mkstemp(dir=c)
            except OSError:
                yield c
                break
            os.close(fd)
            os.unlink(probe)
        else:
            pytest.skip("no read-only folder available to this user")
    finally:
        d.chmod(0o755)


def test_read_only_outputs_exit_2_before_any_work(tmp_path, readonly_dir, cache_dir):
    ro = readonly_dir / "out"
    bqm = small_bqm(tmp_path)
    (tmp_path / "sol").mkdir()
    (tmp_path / "sol" / "solution.json").write_text("{}")
    cases = [
        ["solve", str(bqm), "--out", str(ro)],
        ["build", *TINY_FEATURES, "--out", str(ro)],
        ["train", *TINY_FEATURES, "--out", str(ro / "head.pt")],
        ["decode", str(tmp_path / "sol"), "--out", str(ro / "head.pt")],
        ["quantize", *TINY_FEATURES, "--out", str(ro / "q.pt")],
        ["experiment", *TINY_FEATURES, "--out", str(ro)],
        ["features", *TINY_FEATURES, "--cache-dir", str(ro)],
    ]
    for args in cases:
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert str(ro) in res.output and "is not writable" in res.output, (args, res.output)
    assert not cache_dir.exists()   # no features were made: refused before any work


def test_ctrl_c_during_start_up_prints_one_line_and_exits_130(tmp_path):
    """A KeyboardInterrupt raised while the command imports dimod (what Ctrl-C does during the
    slow imports of start-up), in a fresh interpreter."""
    code = (
        "import sys, importlib.abc\n"
        "class Boom(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'dimod': raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Boom())\n"
        "from qubo_nn.cli.main import main\n"
        f"sys.argv = ['qubo-nn', 'solve', {str(small_bqm(tmp_path))!r}, '--out', {str(tmp_path / 's')!r}]\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "Interrupted." and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_keyboard_interrupt_inside_a_command_exits_130(tmp_path, monkeypatch):
    import qubo_nn.workflows.solve as solve_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(solve_mod, "solve", interrupted)
    res = invoke("solve", str(small_bqm(tmp_path)), "--out", str(tmp_path / "s"), "--no-progress")
    assert res.exit_code == 130 and res.output.strip() == "Interrupted."


@pytest.mark.parametrize("args, message", [
    (["solve", "missing.bqm", "--json"], "Path 'missing.bqm' does not exist"),
    (["build", "--bits", "0", "--json"], "Invalid value for '--bits'"),
    (["solve", "--no-such-option", "--json"], "No such option"),
    (["experiment", "--sampler", "foo", "--json"], "Invalid value for '--sampler': 'foo' is not one of"),
])
def test_usage_errors_with_json_print_one_json_object(args, message):
    res = invoke(*args)
    assert res.exit_code == 2
    obj = json.loads(res.stdout)                    # exactly one JSON document on stdout
    assert obj["ok"] is False and message in obj["error"] and obj["exit_code"] == 2


def test_experiment_validates_sampler_params_before_writing(tmp_path):
    out = tmp_path / "run"
    res = invoke("experiment", *TINY_FEATURES, "--seeds", "1", "--epochs", "1", "--out", str(out),
                 "-m", '{"num_sweep": 10}')
    assert res.exit_code == 2 and "sampler 'neal' does not accept parameter(s) num_sweep" in res.output
    assert not out.exists()                         # no config.json: the corrected rerun is not refused
    res = invoke("experiment", *TINY_FEATURES, "--seeds", "1", "--epochs", "1", "--out", str(out),
                 "-m", '{"seed": 3}')
    assert res.exit_code == 2 and "give seed through its own option" in res.output and not out.exists()


def test_build_into_a_folder_holding_another_build(tmp_path):
    out = tmp_path / "q"
    args = ["build", *TINY_FEATURES, "--warmup-epochs", "0", "--blocks", "topk", "--block-size", "5", "--bits", "1",
            "--out", str(out)]
    assert invoke(*args, "--num-blocks", "3").exit_code == 0
    res = invoke(*args, "--num-blocks", "2")
    assert res.exit_code == 2 and "already holds a build" in res.output and "--overwrite" in res.output
    assert len(read_manifest(out)["blocks"]) == 3
    res = invoke(*args, "--num-blocks", "2", "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("block_*.bqm")) == ["block_00000.bqm", "block_00001.bqm"]


def test_build_prints_its_size_and_refuses_beyond_max_disk(tmp_path):
    args = ["build", *TINY_FEATURES, "--warmup-epochs", "0", "--bits", "1", "--out", str(tmp_path / "q")]
    res = invoke(*args, "--max-disk", "0.001")
    # 100 rows × 513² couplers × 12 bytes ≈ 301 MiB, + integer forms (H's triangle, 513·514/2 × 8 B each)
    # + head.pt (100 × 513 × 4 B)
    assert res.exit_code == 2 and "more than the limit of 1.0 MiB" in res.output
    assert "build: 100 blocks, 51,300 variables, about 406.8 MiB" in res.output
    assert not (tmp_path / "q").exists()


# --------------------------------------------------------------------------- decode

@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    train, test = synthetic_features(n=300, dim=6, num_classes=4, seed=1, n_test=50)
    return Head.init_like_linear(4, 6, seed=0), train, test


def test_decode_after_moving_build_and_solution_together(problem, tmp_path):
    head, train, _ = problem
    build_to_dir(head, train, BuildConfig(bits=2, device="cpu", dtype="float64"), tmp_path / "a" / "qubos")
    solve(tmp_path / "a" / "qubos", tmp_path / "a" / "sol", SolveConfig(params={"num_reads": 4}))
    want = decode(tmp_path / "a" / "sol", feats=train, device="cpu")
    shutil.move(tmp_path / "a", tmp_path / "b")      # both folders move together
    got = decode(tmp_path / "b" / "sol", feats=train, device="cpu")
    assert got["true_loss"] == want["true_loss"] and got["build"] == str((tmp_path / "b" / "qubos").resolve())
    shutil.move(tmp_path / "b" / "qubos", tmp_path / "elsewhere")   # the build alone moves
    res = invoke("decode", str(tmp_path / "b" / "sol"), "--device", "cpu", "--no-progress")
    assert res.exit_code == 2 and "(moved?)" in res.output and "--build DIR" in res.output
    again = decode(tmp_path / "b" / "sol", feats=train, device="cpu", build=tmp_path / "elsewhere")
    assert again["true_loss"] == want["true_loss"]


def test_decode_keeps_a_step_only_if_the_true_loss_falls(problem, tmp_path):
    """Decoded on features whose labels are shuffled, some steps (good for the build's features)
    raise the true loss. Reference: each decision replayed with Head/evaluate on full heads."""
    head0, train, _ = problem
    build_to_dir(head0, train, BuildConfig(bits=2, window=1.0, device="cpu", dtype="float64"), tmp_path / "q")
    solve(tmp_path / "q", tmp_path / "sol", SolveConfig(params={"num_reads": 8, "num_sweeps": 200}))
    g = torch.Generator().manual_seed(3)
    other = FeatureSet(train.X, train.y[torch.randperm(train.n, generator=g)], train.num_classes)
    r = decode(tmp_path / "sol", out=tmp_path / "h.pt", feats=other, device="cpu")
    forced = decode(tmp_path / "sol", out=tmp_path / "f.pt", feats=other, device="cpu", force=True)
    assert r["blocks_true_loss_rose"] >= 1 and forced["blocks_kept_current"] == 0
    # replay: forced per-block heads give each block's step; accept iff evaluate() falls
    from qubo_nn.io.solutions import best_bits, read_samples
    from qubo_nn.io.blocks import read_block
    from qubo_nn.core.bqm import apply

    head = head0.clone()
    for b in r["per_block"]:
        bqm, enc, _ = read_block(tmp_path / "q" / f"block_{b['block_id']:05d}.bqm")
        x = best_bits(read_samples(tmp_path / "sol" / f"block_{b['block_id']:05d}.samples.json"), bqm)
        trial = apply(head, enc, x)
        before, after = evaluate(head, other)[0], evaluate(trial, other)[0]
        assert b["true_loss_with_step"] == pytest.approx(after, rel=1e-6)   # float64 vs evaluate()'s float32
        # the one step policy: accept iff the loss falls by more than accept_tol (1e-6 nats)
        assert b["kept_current"] == (not (after < before - 1e-6 and b["energy_best"] < b["energy_current"]))
        if not b["kept_current"]:
            head = trial
    written = Head.from_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))
    assert torch.allclose(written.W, head.W) and torch.allclose(written.b, head.b)
    assert r["true_loss"] <= r["loss_before"] + 1e-12
    assert forced["true_loss"] > r["true_loss"]


def test_decode_reads_features_from_the_cache_the_build_used(tmp_path, monkeypatch):
    """The build ran with $QUBO_NN_CACHE; decode runs without it and finds the same cache entry
    (manifest records the directory); --cache-dir points elsewhere explicitly."""
    used = tmp_path / "cache-used"
    monkeypatch.setenv("QUBO_NN_CACHE", str(used))
    images = ["--dataset", "synthetic", "--image-size", "16", "--limit", "24", "--batch-size", "8", "--device", "cpu",
              "--no-progress"]
    res = invoke("build", *images, "--warmup-epochs", "0", "--blocks", "topk", "--block-size", "4", "--bits", "1",
                 "--out", str(tmp_path / "q"))
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "q")["features"]["cache_dir"] == str(used)
    assert invoke("solve", str(tmp_path / "q"), "--out", str(tmp_path / "sol"), "--no-progress").exit_code == 0
    monkeypatch.delenv("QUBO_NN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))          # the default cache would be here
    entries = sorted(p.name for p in used.rglob("*") if p.is_file())
    res = invoke("decode", str(tmp_path / "sol"), "--device", "cpu", "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["features_match"] and not (tmp_path / "home").exists()
    assert sorted(p.name for p in used.rglob("*") if p.is_file()) == entries     # a cache hit, nothing new
    res = invoke("decode", str(tmp_path / "sol"), "--device", "cpu", "--no-progress", "--cache-dir",
                 str(tmp_path / "other"), "--out", str(tmp_path / "h2.pt"))
    assert res.exit_code == 0 and any((tmp_path / "other").rglob("*"))


# --------------------------------------------------------------------------- start-up without torch

def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_importing_the_cli_does_not_load_torch():
    mods = _modules_after("import qubo_nn.cli.main")
    assert "torch" not in mods and "dimod" not in mods


def test_solving_a_bare_bqm_with_neal_does_not_load_torch(tmp_path):
    bqm = small_bqm(tmp_path)
    mods = _modules_after(
        "from qubo_nn.cli.main import main\n"
        f"rc = main(['solve', {str(bqm)!r}, '--out', {str(tmp_path / 'sol')!r}, '--no-progress', '-n', '2'], "
        "standalone_mode=False)\n")
    assert "dimod" in mods and "torch" not in mods
    assert json.loads((tmp_path / "sol" / "solution.json").read_text())["totals"]["blocks"] == 1
