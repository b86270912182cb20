"""``qubo-nn quantize head|network`` (issue 18): each subcommand has only its own options, an
option of the other one is refused by name (exit 2), the old ``--scope`` spelling prints one
notice and gives the same result, colliding outputs are refused before anything is written
(issue 23), no help shows a doubled ``%%``."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from test_quantize import _tiny_problem

# written out here (not read from the commands): what issue 18/23 name as one side's options
HEAD_ONLY = {"--head": "h.pt", "--encoding": "unary", "--window-bits": "2", "--fp32-head": "sgd", "--epochs": "1",
             "--refit-bias": None, "--l2": "0.1", "--subsample": "5", "--grad": None, "--refine-span": "10",
             "--weights": "/nonexistent.pt", "--limit": "3", "--polish": None, "--lr": "0.1",
             "--cache-dir": "c", "--n-train": "5"}
NETWORK_ONLY = {"--first-last-bits": "4", "--calib": "8", "--checkpoint": "ck.pt", "--group-size": "8",
                "--solve-budget": "1", "--bn-correct": None}
SHARED = {"--bits", "--method", "--grid", "--scale", "--damping", "--seed", "--out", "--record", "--progress",
          "--json", "--sampler", "--sampler-params", "--num-reads", "--num-sweeps", "--time-limit", "--beta-range",
          "--workers", "--executor", "--ray-address", "--dataset", "--arch", "--image-size", "--data-root",
          "--download", "--device"}
NEW = {"head": ["quantize", "head"], "network": ["quantize", "network"]}
OLD = {"head": ["quantize"], "network": ["quantize", "--scope", "network"]}


def names(sub: str) -> set[str]:
    cmd = main.get_command(None, "quantize").get_command(None, sub)
    return {o for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts if o.startswith("--")}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_each_subcommand_lists_only_its_own_options():
    head, net = names("head"), names("network")
    assert head & net == SHARED
    assert set(HEAD_ONLY) <= head and not set(HEAD_ONLY) & net
    assert set(NETWORK_ONLY) <= net and not set(NETWORK_ONLY) & head
    assert "--scope" not in head | net
    head_help, net_help = invoke("quantize", "head", "--help").output, invoke("quantize", "network", "--help").output
    assert "[network]" not in head_help and "--calib" not in head_help
    assert "--head " not in net_help and "--encoding" not in net_help and "--window-bits" not in net_help


@pytest.mark.parametrize("spelling", ["new", "old"])
@pytest.mark.parametrize("opt", sorted(HEAD_ONLY))
def test_head_only_options_are_refused_by_network(tmp_path, spelling, opt):
    argv = (NEW if spelling == "new" else OLD)["network"]
    value = [] if HEAD_ONLY[opt] is None else [HEAD_ONLY[opt]]
    res = invoke(*argv, opt, *value, "--out", str(tmp_path / "n.pt"))
    assert res.exit_code == 2
    assert f"Error: {opt} applies to `qubo-nn quantize head` only, not to `quantize network`" in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["new", "old"])
@pytest.mark.parametrize("opt", sorted(NETWORK_ONLY))
def test_network_only_options_are_refused_by_head(tmp_path, spelling, opt):
    argv = (NEW if spelling == "new" else OLD)["head"]
    value = [] if NETWORK_ONLY[opt] is None else [NETWORK_ONLY[opt]]
    res = invoke(*argv, opt, *value, "--out", str(tmp_path / "h.pt"))
    assert res.exit_code == 2
    assert f"Error: {opt} applies to `qubo-nn quantize network` only, not to `quantize head`" in res.output
    assert list(tmp_path.iterdir()) == []


def test_a_bad_scope_is_refused():
    res = invoke("quantize", "--scope", "layers")
    assert res.exit_code == 2 and "Invalid value for '--scope': expected head or network, got 'layers'" in res.output
    res = invoke("quantize", "network", "--scope", "network")
    assert res.exit_code == 2 and "--scope is the old spelling; `qubo-nn quantize network ...` already" in res.output


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A head file and (patched) tiny features: a whole `quantize head` run in well under a second."""
    import qubo_nn.cli.quantize_cmd as qc
    from qubo_nn.data.features import FeatureResult

    head, train, test = _tiny_problem()
    monkeypatch.setattr(qc, "get_features", lambda cfg, progress=False: FeatureResult(train, test, None, False, 0.0))
    monkeypatch.setattr(qc, "versions", lambda: {"test": "stub"})
    path = tmp_path / "head.pt"
    torch.save(head.state_dict(), path)
    return path


def test_old_spelling_prints_one_notice_and_gives_the_same_result(tiny, tmp_path):
    common = ["--head", str(tiny), "--bits", "2", "--method", "gptq", "--device", "cpu", "--json"]
    new = invoke("quantize", "head", *common, "--out", str(tmp_path / "new.pt"))
    old = invoke("quantize", *common, "--out", str(tmp_path / "old.pt"))
    assert new.exit_code == 0 and old.exit_code == 0, (new.output, old.output)
    assert new.stderr == ""
    assert old.stderr.splitlines() == ["Note: `qubo-nn quantize ...` is now `qubo-nn quantize head ...`; the old "
                                       "spelling works for one more release."]
    a, b = torch.load(tmp_path / "new.pt", weights_only=True), torch.load(tmp_path / "old.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    ra, rb = json.loads(new.stdout), json.loads(old.stdout)
    untimed = lambda rec: {m: {k: v for k, v in r.items() if k != "wall_time_s"} for m, r in rec["methods"].items()}
    assert untimed(ra) == untimed(rb) and ra["config"] == rb["config"]
    res = invoke("quantize", "--scope", "network", "--help")
    assert res.exit_code == 0 and "Usage: main quantize network" in res.output
    assert "Note: `qubo-nn quantize --scope network ...` is now `qubo-nn quantize network ...`" in res.stderr


@pytest.mark.parametrize("case", ["record=out", "default record=out", "out=head", "record=head"])
def test_colliding_outputs_are_refused_and_nothing_is_written(tiny, tmp_path, case):
    q = tmp_path / "q.pt"
    q.write_bytes(b"earlier")
    args = {"record=out": ["--out", str(q), "--record", str(q)],
            "default record=out": ["--out", str(tmp_path / "h.json")],
            "out=head": ["--out", str(tiny)],
            "record=head": ["--out", str(tmp_path / "x.pt"), "--record", str(tiny)]}[case]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for argv in (NEW["head"], OLD["head"]):
        res = invoke(*argv, "--head", str(tiny), "--bits", "2", "--method", "rtn", "--device", "cpu", *args)
        assert res.exit_code == 2, res.output
        assert "is the same file as" in res.output and "expected a path of its own" in res.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_network_output_that_is_the_checkpoint_is_refused(tmp_path):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"weights")
    res = invoke("quantize", "network", "--checkpoint", str(ck), "--out", str(ck), "--method", "rtn")
    assert res.exit_code == 2 and f"--out {str(ck)!r} is the same file as --checkpoint" in res.output
    assert ck.read_bytes() == b"weights" and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_a_long_fit_is_announced_unless_quiet(tiny, tmp_path, monkeypatch):
    import qubo_nn.train.sgd as sgd

    fitted = torch.load(tiny, weights_only=True)
    monkeypatch.setattr(sgd, "reference_head", lambda train, **kw: (sgd.Head(fitted["weight"], fitted["bias"]),
                                                                    {"fit": {}}))   # the fit itself: minutes
    argv = ["quantize", "head", "--bits", "2", "--method", "rtn", "--device", "cpu", "--out", str(tmp_path / "q.pt")]
    res = invoke(*argv)
    assert res.exit_code == 0, res.output
    assert "no --head: fitting the fp32 reference head" in res.stderr
    res = invoke(*argv, "--no-progress")
    assert res.exit_code == 0 and "no --head" not in res.stderr


def test_a_missing_pretrain_checkpoint_is_announced(tmp_path, monkeypatch):
    import qubo_nn.train.pretrain as pt

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setenv("QUBO_NN_CHECKPOINTS", str(tmp_path / "empty"))
    monkeypatch.setattr(pt, "pretrain", stop)
    res = invoke("quantize", "network", "--method", "rtn", "--dataset", "synthetic", "--out", str(tmp_path / "n.pt"))
    assert isinstance(res.exception, Stop)
    assert "no checkpoint given: training the synthetic resnet18 with `qubo-nn pretrain` defaults" in res.stderr


def _all_commands():
    group = main.get_command(None, "quantize")
    return [[]] + [[n] for n in main.list_commands(None)] + [["quantize", n] for n in group.list_commands(None)]


@pytest.mark.parametrize("argv", _all_commands(), ids=lambda a: " ".join(a) or "qubo-nn")
def test_no_help_shows_a_doubled_percent(argv):
    res = invoke(*argv, "--help")
    assert res.exit_code == 0 and "%%" not in res.output
    if argv == ["quantize", "head"]:
        assert "held-out 20 % of" in " ".join(res.output.split())


@pytest.mark.parametrize("words, want", [("qubo-nn quantize ne", "plain,network"),
                                         ("qubo-nn quantize network --first", "plain,--first-last-bits"),
                                         ("qubo-nn quantize --scope network --first", "plain,--first-last-bits")])
def test_shell_completion_knows_the_subcommands(words, want):
    res = CliRunner().invoke(main, [], prog_name="qubo-nn", env={
        "_QUBO_NN_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)})
    assert res.stdout.split() == [want] and res.stderr == ""
