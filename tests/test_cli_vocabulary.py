"""One option vocabulary: the CLI's literal choices and defaults (cli/common.py) against the
library's tuples and config dataclasses, the same names and meanings in every command, an example
in every --help, shell completion."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from qubo_nn.cli import common
from qubo_nn.cli.main import main
from qubo_nn.workflows.build import BuildConfig

COMMANDS = ["features", "train", "build", "solve", "decode", "samplers", "experiment", "quantize", "quantize head",
            "quantize network", "pretrain", "prune"]


def command(name):
    """The command at ``name`` ("quantize head": a subcommand of a group)."""
    cmd = main
    for part in name.split():
        cmd = cmd.get_command(None, part)
    return cmd


def option(cmd_name: str, opt: str):
    cmd = command(cmd_name)
    hits = [p for p in cmd.params if opt in getattr(p, "opts", ()) + getattr(p, "secondary_opts", ())]
    assert hits, f"{cmd_name} has no {opt}"
    return hits[0]


def test_literal_choices_are_the_library_tuples():
    from qubo_nn.nets.backbones import ARCHS
    from qubo_nn.core.encoding import ENCODINGS
    from qubo_nn.execution.executors import EXECUTORS
    from qubo_nn.data.features import FEATURE_DATASETS
    from qubo_nn.io.bqm_files import FORMATS
    from qubo_nn.curvature.head_stats import BLOCK_KINDS, SALIENCIES
    from qubo_nn.workflows.head_quantize import SCALE_RULES
    from qubo_nn.samplers import DEFAULT_SAMPLER, SAMPLERS
    from qubo_nn.workflows.solve import INITS
    from qubo_nn.train.sgd import SCHEDULES
    from qubo_nn.cli import network_quantize
    from qubo_nn.core.grid import GRIDS
    from qubo_nn.data.datasets import DATASETS
    from qubo_nn.workflows.head_quantize import METHODS
    from qubo_nn.workflows.network_quantize import NETWORK_METHODS
    from qubo_nn.workflows.train_discrete import DISCRETE_GRIDS, DISCRETE_METHODS, STEP_SOLVERS

    assert common.DATASETS == FEATURE_DATASETS and common.ARCHS == ARCHS and common.ENCODINGS == ENCODINGS
    assert common.FORMATS == FORMATS and common.BLOCK_KINDS == BLOCK_KINDS and common.SALIENCIES == SALIENCIES
    assert common.SCALE_RULES == SCALE_RULES and common.INITS == INITS and common.SCHEDULES == SCHEDULES
    assert common.EXECUTORS == EXECUTORS and common.GRIDS == GRIDS
    assert common.TRAIN_GRIDS == ("fp32", *DISCRETE_GRIDS) and common.DISCRETE_METHODS == DISCRETE_METHODS
    assert common.STEP_SOLVERS == STEP_SOLVERS
    assert network_quantize.NETWORK_METHODS == NETWORK_METHODS and network_quantize.PRETRAIN_DATASETS == DATASETS
    assert option("quantize head", "--method").type.choices == tuple(dict.fromkeys(METHODS + ("gptq", "cd")))
    assert common.DEFAULT_SAMPLER == DEFAULT_SAMPLER and common.SAMPLER_CHOICE.choices == tuple(SAMPLERS)


def test_defaults_are_the_config_dataclasses_defaults():
    from qubo_nn.cli.experiment_cmd import _HYBRID_SAMPLER_PARAMS
    from qubo_nn.cli.quantize_cmd import QUANTIZE_DAMPING, QUANTIZE_NUM_READS
    from qubo_nn.study.experiment import ExperimentConfig
    from qubo_nn.data.features import FeatureConfig
    from qubo_nn.workflows.head_optimize import HybridConfig, default_build
    from qubo_nn.workflows.head_quantize import QuantizeConfig
    from qubo_nn.workflows.network_quantize import NetworkQuantizeConfig
    from qubo_nn.cli.network_quantize import NETWORK_DEFAULTS
    from qubo_nn.core.bqm import DEFAULT_MAX_QUBO_BYTES
    from qubo_nn.workflows.build import BuildConfig
    from qubo_nn.train.sgd import SGDConfig

    b, s, f, q, e, h = BuildConfig(), SGDConfig(), FeatureConfig(), QuantizeConfig(), ExperimentConfig(), HybridConfig()
    nq = NetworkQuantizeConfig()
    assert NETWORK_DEFAULTS == {k: getattr(nq, k) for k in NETWORK_DEFAULTS}
    assert common.WINDOW == default_build().window == h.build.window
    assert common.DAMPING == b.damping_rel == h.build.damping_rel
    assert common.LR == s.lr == e.lr and common.SGD_BATCH == s.batch_size == e.batch_size
    assert common.BACKBONE_BATCH == f.batch_size
    assert QUANTIZE_DAMPING == q.damping_rel and QUANTIZE_NUM_READS == q.num_reads
    assert _HYBRID_SAMPLER_PARAMS == h.sampler_params
    assert option("build", "--max-qubo-gib").default * 2**30 == DEFAULT_MAX_QUBO_BYTES
    for cmd, opt, want in [
        ("build", "--bits", b.bits), ("build", "--per-block", b.per_block), ("build", "--l2", b.l2),
        ("build", "--damping-abs", b.damping_abs), ("build", "--chunk", b.chunk), ("build", "--dtype", b.dtype),
        ("build", "--bqm-dtype", b.bqm_dtype), ("build", "--encoding", b.encoding),
        ("train", "--epochs", s.epochs), ("train", "--momentum", s.momentum), ("train", "--schedule", s.schedule),
        ("train", "--weight-decay", s.weight_decay),
        ("experiment", "--epochs", e.epochs), ("experiment", "--warmup-epochs", e.warmup_epochs),
        ("experiment", "--schedule", e.schedule), ("experiment", "--seeds", str(len(e.seeds))),
        ("experiment", "--momentum", e.momentum), ("experiment", "--bits", h.build.bits),
        ("experiment", "--sweeps", h.sweeps), ("experiment", "--tol", h.tol),
        ("experiment", "--max-retries", h.max_retries), ("experiment", "--damping-growth", h.damping_growth),
        ("experiment", "--workers", h.workers), ("experiment", "--warm-start", h.warm_start),
        ("experiment", "--polish", h.polish), ("experiment", "--sampler", h.sampler),
        ("experiment", "--matched-max-factor", e.matched_max_factor), ("experiment", "--threads", e.threads),
        ("experiment", "--lbfgs-max-iter", e.lbfgs_max_iter), ("experiment", "--num-classes", e.num_classes),
        ("experiment", "--n-train", e.n_train), ("experiment", "--n-test", e.n_test),
        ("experiment", "--time-matched", e.time_matched),
        ("quantize head", "--bits", q.bits), ("quantize head", "--method", q.method),
        ("quantize head", "--scale", q.scale), ("quantize head", "--window-bits", q.window_bits),
        ("quantize head", "--refine-span", q.refine_span), ("quantize head", "--sampler", q.sampler),
        ("quantize head", "--encoding", q.encoding), ("quantize head", "--grid", q.grid),
        ("quantize network", "--bits", nq.bits), ("quantize network", "--scale", nq.scale),
        ("quantize network", "--damping", nq.damping), ("quantize network", "--sampler", nq.sampler),
        ("quantize network", "--grid", nq.grid), ("quantize network", "--first-last-bits", nq.first_last_bits),
        ("quantize network", "--calib", nq.calib), ("quantize network", "--group-size", nq.group_size),
        ("quantize network", "--solve-budget", nq.solve_budget_s), ("quantize network", "--bn-correct", nq.bn_correct),
        ("features", "--image-size", f.image_size), ("features", "--arch", f.arch),
        ("features", "--weights", f.weights), ("features", "--n-train", f.n_train),
    ]:
        assert option(cmd, opt).default == want, (cmd, opt)


@pytest.mark.parametrize("opt, commands", [
    ("--sampler-params", ["solve", "experiment", "quantize head", "quantize network", "prune"]),
    ("--sampler", ["solve", "experiment", "quantize head", "quantize network", "prune"]),
    ("--damping", ["build", "experiment", "quantize head", "quantize network"]),
    ("--batch-size", ["features", "train", "build", "quantize head"]),
    ("--sgd-batch-size", ["train", "experiment", "quantize head"]),
    ("--block-size", ["build", "experiment"]),
    ("--window", ["build", "experiment"]),
    ("--encoding", ["build", "experiment", "quantize head"]),
    ("--lr", ["train", "experiment", "quantize head"]),
    ("--grid", ["quantize head", "quantize network"]),
    ("--num-reads", ["quantize head", "quantize network"]),
    ("--progress", ["features", "train", "build", "solve", "decode", "experiment", "quantize head",
                    "quantize network", "prune"]),
])
def test_one_name_one_meaning_one_default_across_commands(opt, commands):
    params = [option(c, opt) for c in commands]
    if opt not in ("--sampler", "--sampler-params"):   # defaults differ by task (prune: tabu), not the meaning
        assert len({repr(p.default) for p in params if opt != "--damping"}) <= 1, opt
    assert len({p.help.split("[")[0] for p in params}) == 1, opt     # the same meaning, word for word
    if opt == "--sampler-params":
        assert all("-m" in p.opts for p in params)
    if opt == "--sampler":
        assert all(p.type.choices == common.SAMPLER_CHOICE.choices for p in params)


def test_no_command_keeps_the_old_names():
    for name in COMMANDS:
        opts = {o for p in command(name).params if not getattr(p, "hidden", False) for o in getattr(p, "opts", ())}
        assert not opts & {"--size", "--damping-rel", "--train-batch-size"}, name
        if name != "pretrain":          # pretrain's --batch-size is images per step of the whole network
            assert "--batch-size" not in opts or "backbone" in option(name, "--batch-size").help


@pytest.mark.parametrize("name", ["quantize head", "quantize network", "prune", "pretrain"])
def test_long_work_shows_progress_by_default(name):
    assert option(name, "--progress").default is True


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_has_an_example_of_its_own_command(name):
    res = CliRunner().invoke(main, [*name.split(), "--help"])
    assert res.exit_code == 0
    assert "Example:" in res.output and f"qubo-nn {name}" in res.output.split("Example:")[1]


def test_samplers_lists_only_what_m_accepts():
    import json

    rows = json.loads(CliRunner().invoke(main, ["samplers", "--json"]).stdout)["samplers"]
    neal = next(r for r in rows if r["name"] == "neal")
    assert "num_sweeps" in neal["parameters"]
    assert all("seed" not in r["parameters"] and "initial_states" not in r["parameters"] for r in rows)


def test_encoding_reaches_the_configs(monkeypatch, tmp_path):
    """The library may refuse non-binary kinds (issue 10): what is tested is that the option
    lands in BuildConfig/QuantizeConfig.encoding."""
    seen = {}

    class Stop(Exception):
        pass

    def capture(key):
        def validate(self):
            seen[key] = self.encoding if hasattr(self, "encoding") else self.hybrid.build.encoding
            raise Stop
        return validate

    import qubo_nn.study.experiment as exp
    import qubo_nn.workflows.head_quantize as qz

    monkeypatch.setattr(BuildConfig, "validate", capture("build"))
    monkeypatch.setattr(qz.QuantizeConfig, "validate", capture("quantize"))
    monkeypatch.setattr(exp.ExperimentConfig, "validate", capture("experiment"))
    for cmd in ("build", "quantize head", "experiment"):
        res = CliRunner().invoke(main, [*cmd.split(), "--encoding", "unary", "--out", str(tmp_path / cmd)])
        assert isinstance(res.exception, Stop), (cmd, res.output)
    assert seen == {"build": "unary", "quantize": "unary", "experiment": "unary"}


@pytest.mark.parametrize("argv", [["quantize", "head"], ["quantize", "network"], ["quantize"],
                                  ["quantize", "--scope", "network"]])
def test_grid_reaches_the_configs(monkeypatch, tmp_path, argv):
    """--grid lands in QuantizeConfig/NetworkQuantizeConfig.grid, in the new and the old spelling
    (the library refuses binary and ternary until issue 24; that is not what is tested)."""
    import qubo_nn.workflows.head_quantize as qz
    import qubo_nn.workflows.network_quantize as nq

    class Stop(Exception):
        pass

    seen = []

    def validate(self):
        seen.append((type(self).__name__, self.grid))
        raise Stop

    monkeypatch.setattr(qz.QuantizeConfig, "validate", validate)
    monkeypatch.setattr(nq.NetworkQuantizeConfig, "validate", validate)
    res = CliRunner().invoke(main, [*argv, "--grid", "ternary", "--out", str(tmp_path / "q.pt")])
    assert isinstance(res.exception, Stop), res.output
    want = "NetworkQuantizeConfig" if "network" in argv else "QuantizeConfig"
    assert seen == [(want, "ternary")]


def test_shell_completion_is_wired():
    runner = CliRunner()
    script = runner.invoke(main, [], prog_name="qubo-nn", env={"_QUBO_NN_COMPLETE": "bash_source"})
    assert script.exit_code == 0 and "_QUBO_NN_COMPLETE=bash_complete" in script.output
    done = runner.invoke(main, [], prog_name="qubo-nn",
                         env={"_QUBO_NN_COMPLETE": "bash_complete", "COMP_WORDS": "qubo-nn so", "COMP_CWORD": "1"})
    assert "plain,solve" in done.output
    done = runner.invoke(main, [], prog_name="qubo-nn", env={"_QUBO_NN_COMPLETE": "bash_complete",
                                                             "COMP_WORDS": "qubo-nn solve x --sampler t",
                                                             "COMP_CWORD": "4"})
    assert "plain,tabu" in done.output
