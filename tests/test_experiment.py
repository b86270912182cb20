"""The comparison end to end on a tiny synthetic feature set: results, plots, resume, CLI."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.experiment_cmd import parse_seeds
from qubo_nn.cli.main import main
from qubo_nn.errors import QuboNNError
from qubo_nn.study.experiment import ExperimentConfig, run_experiment
from qubo_nn.workflows.head_optimize import HybridConfig
from qubo_nn.study.plots import PLOTS
from qubo_nn.workflows.build import BuildConfig

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


def tiny_config(out: Path, **kw) -> ExperimentConfig:
    hybrid = HybridConfig(build=BuildConfig(bits=3), sampler_params={"num_reads": 1, "num_sweeps": 50})
    base = dict(dataset="synthetic-features", n_train=300, n_test=100, feature_dim=8, num_classes=3,
                epochs=3, warmup_epochs=1, lr=0.01, seeds=(0, 1), hybrid=hybrid, lbfgs_max_iter=100, out=str(out))
    base.update(kw)
    return ExperimentConfig(**base)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    return out, run_experiment(tiny_config(out))


def test_pipeline_writes_results_and_hybrid_steps_lower_the_loss(first_run):
    out, summary = first_run
    methods = ("sgd", "hybrid", "sgd_matched", "lbfgs")
    assert sorted(summary["computed"]) == sorted(f"{m}-seed{s}" for m in methods for s in (0, 1))
    assert summary["loaded"] == [] and summary["warnings"] == []
    for name in ("config.json", "versions.json", "summary.json", "summary.txt"):
        assert (out / name).is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["experiment"]["seeds"] == [0, 1] and cfg["features"]["shape_train"] == [300, 8]
    for seed in (0, 1):
        sgd = json.loads((out / "per-seed" / f"sgd-seed{seed}.json").read_text())
        hyb = json.loads((out / "per-seed" / f"hybrid-seed{seed}.json").read_text())
        # same init, same first (warm-up) epoch: same shuffles and learning rate
        assert hyb["history"][0] == sgd["history"][0] | {"wall_time_s": 0.0}
        assert hyb["history"][1]["train_loss"] == pytest.approx(sgd["history"][1]["train_loss"], abs=1e-6)
        assert [p["epoch"] for p in sgd["history"]] == [0, 1, 2, 3]
        assert [p["phase"] for p in hyb["history"]] == ["init", "warmup", "qubo", "finetune", "finetune"]
        before, after = hyb["history"][1], hyb["history"][2]
        q = hyb["qubo"]
        assert after["train_loss"] == pytest.approx(q["loss_end"], abs=1e-6)   # head.evaluate after the phase
        assert after["train_loss"] <= before["train_loss"] + 1e-6
        for blk in q["blocks"]:
            if blk["accepted"]:
                assert blk["true_change"] < 0
            else:
                assert blk["true_change"] == 0.0 or blk["attempts"][-1]["loss_after"] == blk["attempts"][-1]["loss_before"]
        phase = hyb["qubo_phase"]
        assert phase["after_epoch"] == 1
        assert phase["end_s"] - phase["start_s"] == pytest.approx(q["total_wall_s"])
        assert after["wall_time_s"] == pytest.approx(phase["end_s"])
        lb = json.loads((out / "per-seed" / f"lbfgs-seed{seed}.json").read_text())
        assert lb["final"]["train_loss"] <= sgd["final"]["train_loss"] + 1e-6
        # time-matched SGD: E × t_hybrid / t_sgd epochs (clamped to [E, 100 E])
        mt = json.loads((out / "per-seed" / f"sgd_matched-seed{seed}.json").read_text())
        ratio = hyb["final"]["wall_time_s"] / sgd["final"]["wall_time_s"]
        assert mt["matched"]["epochs"] == min(max(round(3 * ratio), 3), 300)
        assert len(mt["history"]) == mt["matched"]["epochs"] + 1 and mt["sgd"]["epochs"] == mt["matched"]["epochs"]
    methods = summary["methods"]
    assert set(methods) == {"sgd", "hybrid", "sgd_matched", "lbfgs"}
    assert methods["hybrid"]["test_acc"]["n"] == 2
    assert "hybrid" in summary["table"] and "overlap" in summary["table"]


def test_plots_are_pngs(first_run):
    out, summary = first_run
    assert [Path(p).name for p in summary["plots"]] == list(PLOTS)
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000


def test_resume_recomputes_only_missing_and_corrupt_results(first_run):
    out, _ = first_run
    runs = out / "per-seed"
    before = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    again = run_experiment(tiny_config(out))
    assert again["computed"] == [] and len(again["loaded"]) == 8
    (runs / "sgd-seed1.json").unlink()
    again = run_experiment(tiny_config(out))
    assert again["computed"] == ["sgd-seed1"] and again["warnings"] == []
    # the recomputed run trained the same head on this machine: same head digest (and every result has one)
    digest = json.loads((runs / "sgd-seed1.json").read_text())["head_digest"]
    assert digest == json.loads(before["sgd-seed1.json"])["head_digest"]
    digests = {name: json.loads(data)["head_digest"] for name, data in before.items()}
    assert all(len(d) == 16 for d in digests.values()) and digests["sgd-seed0.json"] != digests["sgd-seed1.json"]
    # untouched results were loaded, not rewritten
    for name, data in before.items():
        if name != "sgd-seed1.json":
            assert (runs / name).read_bytes() == data
    # a recomputed hybrid run (new timing) also recomputes the SGD run matched to its time
    (runs / "hybrid-seed0.json").unlink()
    again = run_experiment(tiny_config(out))
    assert again["computed"] == ["hybrid-seed0", "sgd_matched-seed0"]
    assert again["warnings"] == ["sgd_matched-seed0.json: matched to another hybrid run (its hybrid result "
                                 "was recomputed); recomputed"]
    # a truncated file and an edited one are both detected and recomputed
    (runs / "sgd-seed0.json").write_bytes(before["sgd-seed0.json"][:200])
    edited = json.loads(before["lbfgs-seed1.json"])
    edited["final"]["test_acc"] = 1.0
    (runs / "lbfgs-seed1.json").write_text(json.dumps(edited))
    again = run_experiment(tiny_config(out))
    assert sorted(again["computed"]) == ["lbfgs-seed1", "sgd-seed0"]
    assert len(again["warnings"]) == 2 and all("corrupt result file" in w for w in again["warnings"])
    new, old = (json.loads(t)["final"] for t in ((runs / "sgd-seed0.json").read_text(), before["sgd-seed0.json"]))
    assert new.pop("wall_time_s") > 0 and old.pop("wall_time_s") > 0
    assert new == old   # same seed, same result


def test_config_mismatch_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    run_experiment(tiny_config(out, seeds=(0,)))
    with pytest.raises(QuboNNError, match=r"holds a run with other settings \(epochs: 3 -> 4\)"):
        run_experiment(tiny_config(out, seeds=(0,), epochs=4))
    s = run_experiment(tiny_config(out, seeds=(0,), epochs=4, overwrite=True))
    assert len(s["computed"]) == 4
    # other seeds resume the same directory (seeds are not a result setting)
    s = run_experiment(tiny_config(out, seeds=(0, 1), epochs=4))
    assert len(s["loaded"]) == 4 and len(s["computed"]) == 4


@pytest.mark.parametrize("kw, match", [
    ({"warmup_epochs": 5}, r"warmup epochs must be an integer in \[0, epochs=3\], got 5"),
    ({"seeds": ()}, "seeds must be a non-empty list"),
    ({"seeds": (1, 1)}, "seeds must be distinct"),
    ({"seeds": (2**31,)}, r"seeds must be a non-empty list of integers in \[0, 2147483647\], got \(2147483648,\)"),
    ({"lr": -1.0}, "lr must be > 0"),
])
def test_config_validation(tmp_path, kw, match):
    with pytest.raises(QuboNNError, match=match):
        run_experiment(tiny_config(tmp_path / "x", **kw))


def test_parse_seeds():
    assert parse_seeds("3") == (0, 1, 2)
    assert parse_seeds("4,7") == (4, 7)
    assert parse_seeds("7,") == (7,)
    assert parse_seeds("2147483647,") == (2**31 - 1,)
    assert len(parse_seeds("1000")) == 1000
    for bad in ("a", "0", "1001", "99999999999", "4294967296", "4294967296,", "2147483648,1", "-1,2", ","):
        with pytest.raises(QuboNNError, match=r"--seeds expects a count N in \[1, 1000\] \(seeds 0..N-1\) or a "
                                              r"comma list of seeds in \[0, 2147483647\]"):
            parse_seeds(bad)


@pytest.mark.parametrize("seeds", ["99999999999", "4294967296", "5,4294967296"])
def test_cli_refuses_out_of_range_seeds_before_writing(tmp_path, seeds):
    """Issue 23 (7): a huge count was a MemoryError, a seed ≥ 2³¹ was accepted; now exit 2, nothing written."""
    res = CliRunner().invoke(main, ["experiment", "--dataset", "synthetic-features", "--seeds", seeds,
                                    "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert "--seeds expects a count N in [1, 1000]" in res.output
    assert not (tmp_path / "x").exists()


def test_table_says_when_lbfgs_did_not_converge():
    """Issue 23 (14): "convex optimum" only when every seed's L-BFGS converged."""
    from qubo_nn.study.experiment import format_table, summarize
    from qubo_nn.study.plots import lbfgs_name

    final = {"train_loss": 0.5, "train_acc": 0.9, "test_loss": 0.6, "test_acc": 0.8, "wall_time_s": 1.0}
    runs = [{"seed": s, "final": final, "lbfgs": {"iterations": 10, "converged": c}}
            for s, c in ((0, True), (1, False))]
    table = format_table(summarize({"lbfgs": runs}))
    assert "L-BFGS (not converged in 1 of 2 seeds), 10 iterations" in table and "convex optimum" not in table
    assert lbfgs_name({"lbfgs": runs}) == "L-BFGS (not converged)"
    runs[1]["lbfgs"]["converged"] = True
    assert "convex optimum, 10 iterations" in format_table(summarize({"lbfgs": runs}))
    assert lbfgs_name({"lbfgs": runs}) == "L-BFGS optimum"


def test_library_leaves_torch_threads_alone(tmp_path):
    """run_experiment (with the hybrid inside) sets no thread count; the scopes it is given are entered."""
    before = torch.get_num_threads()
    entered = []

    @contextlib.contextmanager
    def scope(name):
        entered.append(name)
        assert torch.get_num_threads() == before
        yield

    run_experiment(tiny_config(tmp_path / "t", seeds=(0,), threads=before + 1, time_matched=False),
                   thread_scope=lambda: scope("run"), qubo_thread_scope=lambda: scope("qubo"))
    assert torch.get_num_threads() == before and entered == ["run", "qubo"]


def test_cli_json_and_bad_input(tmp_path):
    out = tmp_path / "cli"
    args = ["experiment", "--dataset", "synthetic-features", "--n-train", "200", "--n-test", "50",
            "--feature-dim", "6", "--num-classes", "3", "--epochs", "2", "--warmup-epochs", "1", "--seeds", "1",
            "--bits", "2", "--num-sweeps", "20", "--lbfgs-max-iter", "50", "--out", str(out), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output.strip().splitlines()[-1])
    assert obj["ok"] and obj["out"] == str(out) and len(obj["computed"]) == 4
    assert json.loads((out / "config.json").read_text())["experiment"]["hybrid"]["sampler_params"]["num_sweeps"] == 20
    res = CliRunner().invoke(main, args[:-1] + ["--sampler-params", "[1]"])
    assert res.exit_code == 2 and "--sampler-params must be a JSON object" in res.output
