"""Shared CLI plumbing: the group, error handling, JSON output, and the one option vocabulary.

Every command fills a config dataclass from its options and makes one library call.
Exit codes: 0 ok, 2 bad input (a :class:`~qubo_nn.errors.QuboNNError` or a usage error),
130 interrupted (Ctrl-C), 1 unexpected error.

Start-up: this module and every ``cli/*_cmd.py`` import only click and the standard library at
module level; torch, dimod and the library modules are imported inside the command bodies, so
``qubo-nn --help`` and a solve of a plain file do not pay for torch. The choices and defaults
below are literal copies of the library's, declared ONCE here and checked against the library
(its tuples and its config dataclasses' defaults) by ``tests/test_cli_vocabulary.py``.
"""
from __future__ import annotations

import errno
import functools
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from qubo_nn.errors import QuboNNError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# --------------------------------------------------------------------------- vocabulary (checked by tests)

DATASETS = ("digits", "cifar100", "synthetic", "imagefolder", "synthetic-features", "synthetic-separable")  # features.FEATURE_DATASETS
ARCHS = ("resnet18", "resnet34", "resnet50")                     # backbones.ARCHS
BLOCK_KINDS = ("rows", "columns", "topk", "random")              # quadratic.BLOCK_KINDS
SALIENCIES = ("grad", "obd")                                     # quadratic.SALIENCIES
SCHEDULES = ("none", "cosine", "step")                           # train.SCHEDULES
#: train --grid (fp32 = the SGD baseline) and the discrete trainers (qubo_nn.workflows.train_discrete)
TRAIN_GRIDS = ("fp32", "binary", "ternary")
DISCRETE_METHODS = ("ptq", "ste", "qubo")
STEP_SOLVERS = ("qubo", "cd", "anneal")
FORMATS = ("dimod", "coo", "qubo")                               # formats.FORMATS
ENCODINGS = ("binary", "unary", "domain-wall")                   # encoding.ENCODINGS
EXECUTORS = ("threads", "ray")                                   # execution.EXECUTORS
SCALE_RULES = ("maxabs", "mse")                                  # quantize.SCALE_RULES
GRIDS = ("signed", "binary", "ternary")                          # core.grid.GRIDS
INITS = ("auto", "current", "random")                            # solve.INITS
DEFAULT_SAMPLER = "neal"                                         # samplers.DEFAULT_SAMPLER
SAMPLER_OWN_ARGS = ("seed", "initial_states")                    # given by qubo-nn itself, never through -m
WINDOW = 0.5             # hybrid.default_build().window: one window for build and experiment
DAMPING = 0.1            # BuildConfig.damping_rel
LR = 0.01                # SGDConfig.lr (train, experiment, quantize's baseline head)
SGD_BATCH = 64           # SGDConfig.batch_size
BACKBONE_BATCH = 128     # FeatureConfig.batch_size
MAX_DISK_GIB = 16.0      # build refuses to write more without --max-disk


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices come from a library registry, loaded on first use
    (so declaring the option imports nothing heavy)."""

    def __init__(self, loader: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._loader = loader
        self._loaded: tuple[str, ...] | None = None
        super().__init__((), case_sensitive=case_sensitive)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._loaded is None:
            self._loaded = tuple(self._loader())
        return self._loaded

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


def _sampler_names() -> tuple[str, ...]:
    from qubo_nn.samplers import SAMPLERS

    return tuple(SAMPLERS)


SAMPLER_CHOICE = LazyChoice(_sampler_names)

# --------------------------------------------------------------------------- the group


class QuboGroup(click.Group):
    """The ``qubo-nn`` group: commands imported when used (``module:attribute`` in ``lazy``),
    usage errors as one JSON object on stdout when ``--json`` is given, Ctrl-C → exit 130."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy) + [c for c in super().list_commands(ctx) if c not in self.lazy]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module, __package__), attr), name=name)
        return super().get_command(ctx, name)

    def main(self, args: list[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if "--json" in args:
                click.echo(json.dumps({"ok": False, "error": exc.format_message(), "kind": "usage",
                                       "exit_code": exc.exit_code}))
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:   # click turns KeyboardInterrupt (and EOF) into Abort
            interrupted()
        sys.exit(rv if isinstance(rv, int) else 0)


EXIT_TERMINATED = 143    # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that a run stops the same way (finished
    blocks kept, temporaries removed, resumable) and reports exit 143."""


def interrupted(code: int = EXIT_INTERRUPTED) -> None:
    """One line on stderr (one JSON object on stdout with ``--json``) and exit 130 (Ctrl-C) or 143
    (SIGTERM), what a shell reports for them."""
    ctx = click.get_current_context(silent=True)
    what = "terminated (SIGTERM)" if code == EXIT_TERMINATED else "interrupted (Ctrl-C)"
    if ctx is not None and ctx.params.get("as_json"):
        click.echo(json.dumps({"ok": False, "error": f"{what}; rerun the same command to resume",
                               "kind": "interrupted", "exit_code": code}))
    click.echo("\nInterrupted." if code == EXIT_INTERRUPTED else "\nTerminated.", err=True)
    sys.exit(code)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def handle_errors(fn: Callable) -> Callable:
    """QuboNNError → ``Error: ...`` on stderr and exit 2 (a JSON object too with ``--json``);
    Ctrl-C → one line and exit 130, SIGTERM alike with exit 143 (with ``--json`` one JSON object
    either way); an OSError writing a file → exit 2 naming the path."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except Terminated:
            interrupted(EXIT_TERMINATED)
        except KeyboardInterrupt:
            interrupted()
        except QuboNNError as exc:
            fail(str(exc))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
                             errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
                fail(f"cannot write {exc.filename!r}: {exc.strerror}")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def fail(message: str) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("as_json"):
        click.echo(json.dumps({"ok": False, "error": message}))
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def emit(obj: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print one JSON object (``--json``) or a human-readable text."""
    from qubo_nn.runtime import _json_default

    from qubo_nn.runtime import to_jsonable

    obj = to_jsonable(json.loads(json.dumps(obj, default=_json_default)))   # NaN/Inf → null: JSON has none
    if as_json:
        click.echo(json.dumps({"ok": True, **obj}, sort_keys=True, allow_nan=False))
    else:
        click.echo(text if text is not None else json.dumps(obj, indent=2, allow_nan=False))


# --------------------------------------------------------------------------- checks before any work

def check_writable(path: str | os.PathLike, option: str = "--out", kind: str = "dir") -> None:
    """Refuse, before any work, an output that cannot be written: ``kind`` "dir" (a folder to
    create or fill) or "file". Probes by creating a temporary file in the folder (or its nearest
    existing parent), which also catches read-only file systems and permissions that
    ``os.access`` misreports for root."""
    p = Path(path).expanduser()
    if kind == "dir" and p.exists() and not p.is_dir():
        raise QuboNNError(f"{option} {str(path)!r} exists and is not a directory")
    if kind == "file" and p.is_dir():
        raise QuboNNError(f"{option} {str(path)!r} is a directory, expected a file name")
    probe = p if kind == "dir" else p.parent
    probe = probe.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise QuboNNError(f"{option} {str(path)!r}: {str(probe)!r} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qubo-nn-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise QuboNNError(f"{option} {str(path)!r} is not writable ({str(probe)!r}: {exc.strerror}); "
                          f"expected a folder this user can write to") from None


def check_distinct_paths(outputs: dict[str, Any], inputs: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, two outputs that are the same file, or an output that is an
    input (``{option: path}``; None entries skipped): one would overwrite the other."""
    seen: dict[Path, str] = {}
    for option, path in (inputs or {}).items():
        if path is not None:
            seen.setdefault(Path(path).expanduser().resolve(), option)
    for option, path in outputs.items():
        if path is None:
            continue
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise QuboNNError(f"{option} {str(path)!r} is the same file as {seen[key]}; expected a path of its own "
                              f"(nothing was written)")
        seen[key] = option


def parse_json_object(text: str | None, option: str = "--sampler-params") -> dict[str, Any]:
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuboNNError(f"{option} must be a JSON object, e.g. '{{\"num_sweeps\": 2000}}', got {text!r} "
                          f"({exc})") from None
    if not isinstance(obj, dict):
        raise QuboNNError(f"{option} must be a JSON object, got {type(obj).__name__}")
    return obj


def sampler_params(o: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampler options of a command: ``base`` (the command's defaults), then ``-m`` JSON
    (replacing ``base`` when given), then the named shortcuts (--num-reads, --num-sweeps,
    --time-limit, --beta-range), which may not repeat a ``-m`` key. Checked against the
    sampler's parameters (names, and β order) before any work."""
    text, option = o.get("sampler_params"), "--sampler-params"
    if o.get("params_alias") is not None:
        if text is not None:
            raise QuboNNError("give sampler options once: --sampler-params (-m), not also its old name --params")
        text, option = o["params_alias"], "--params"
    given = parse_json_object(text, option)
    params = dict(given) if text else dict(base or {})
    named = {"num_reads": o.get("num_reads"), "num_sweeps": o.get("num_sweeps"), "time_limit": o.get("time_limit"),
             "beta_range": list(o["beta_range"]) if o.get("beta_range") else None}
    for key, value in named.items():
        if value is None:
            continue
        if key in given:
            raise QuboNNError(f"sampler option {key!r} given twice (--{key.replace('_', '-')} and {option})")
        params[key] = value
    check_sampler_params(o.get("sampler", DEFAULT_SAMPLER), params)
    return params


def check_sampler_params(sampler: str, params: dict[str, Any]) -> None:
    """Unknown names, options qubo-nn sets itself, and a reversed β range, refused by name."""
    from qubo_nn.samplers import get_sampler

    own = sorted(set(params) & set(SAMPLER_OWN_ARGS))
    if own:
        raise QuboNNError(f"give {', '.join(own)} through its own option (--seed, --init), not --sampler-params")
    accepted = set(get_sampler(sampler).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        options = ", ".join(sorted(accepted - set(SAMPLER_OWN_ARGS))) or "none"
        raise QuboNNError(f"sampler {sampler!r} does not accept parameter(s) {', '.join(unknown)}; "
                          f"accepted: {options}")
    br = params.get("beta_range")
    if br is not None:
        try:
            hot, cold = (float(v) for v in br)
        except (TypeError, ValueError):
            raise QuboNNError(f"beta_range expects two numbers HOT COLD, got {br!r}") from None
        if not 0 < hot < cold:
            raise QuboNNError(f"--beta-range expects HOT COLD with 0 < hot < cold (inverse temperatures: the anneal "
                              f"goes from the small β, hot, to the large β, cold), got {hot:g} {cold:g}")


# --------------------------------------------------------------------------- option groups (declared once)

def options(*decorators: Callable) -> Callable:
    """Apply option decorators in the order given (first = first in --help)."""
    def wrap(fn: Callable) -> Callable:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn
    return wrap


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end (for scripts).")
device_option = click.option("--device", default="auto", show_default=True,
                             help="Torch device: auto (CUDA when present), cpu, cuda, cuda:N.")
seed_option = click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
                           help="Random seed (recorded with the results).")
progress_option = click.option("--progress/--no-progress", default=True, show_default=True,
                               help="Progress bars on stderr.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace what --out holds from an earlier run with other settings.")
encoding_option = click.option("--encoding", type=click.Choice(ENCODINGS), default="binary", show_default=True,
                               help="How a weight's grid level becomes bits: binary (b bits, 2^b levels), unary "
                                    "(thermometer, 2^b − 1 bits), domain-wall (2^b − 1 bits with a penalty).")

grid_option = click.option("--grid", type=click.Choice(GRIDS), default="signed", show_default=True,
                           help="Weight grid: signed (w = s·k, k a --bits signed integer), binary (w = α·s, s ∈ {−1, +1}) or "
                                "ternary (w = α·t, t ∈ {−1, 0, +1}); per-row s or α.")


def note(message: str, quiet: bool = False) -> None:
    """One line on stderr saying what long work starts now (``quiet``: --no-progress or --json)."""
    if not quiet:
        click.echo(message, err=True)


def executor_options(work: str) -> Callable:
    """``--workers``, ``--executor``, ``--ray-address``: where ``work`` (e.g. "blocks are solved") happens."""
    return options(
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Parallel tasks: threads, or the CPUs of the local Ray instance (--executor ray)."),
        click.option("--executor", type=click.Choice(EXECUTORS), default="threads", show_default=True,
                     help=f"Where {work}: threads of this process, or Ray tasks (pip install 'qubo-nn[ray]')."),
        click.option("--ray-address", default=None, metavar="ADDR",
                     help="Join this Ray cluster ('auto' or HOST:PORT, from `ray start --head`) [default: start a "
                          "local instance]."),
    )

def damping_option(default: float = DAMPING) -> Callable:
    """``--damping``: always relative (the command's config field ``damping_rel``)."""
    return click.option("--damping", type=click.FloatRange(min=0), default=default, show_default=True,
                        help="Relative damping: μ = DAMPING × the block's mean Hessian diagonal, adding "
                             "(μ/2)‖Δ‖² (a trust region; GPTQ's percdamp).")


SAMPLER_HELP = "Sampler from the registry (`qubo-nn samplers` lists them and their options)."
SAMPLER_PARAMS_HELP = ('Sampler options as a JSON object, e.g. -m \'{"num_sweeps": 2000}\' (names checked against '
                       'the sampler\'s parameters).')
_SAMPLER_OPTIONS = dict(
    sampler=click.option("--sampler", type=SAMPLER_CHOICE, default=DEFAULT_SAMPLER, show_default=True, help=SAMPLER_HELP),
    sampler_params=click.option("-m", "--sampler-params", default=None, metavar="JSON", help=SAMPLER_PARAMS_HELP),
    params_alias=click.option("--params", "params_alias", default=None, hidden=True,
                 help="Old name of --sampler-params (kept for scripts)."),
    num_reads=click.option("--num-reads", "-n", type=click.IntRange(min=1), default=None,
                 help="Shortcut for -m num_reads: samples per block [default: the command's]."),
    num_sweeps=click.option("--num-sweeps", type=click.IntRange(min=1), default=None,
                 help="Shortcut for -m num_sweeps: sweeps per read (neal)."),
    time_limit=click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Shortcut for -m time_limit: seconds per block (neal: no new read after it; tabu, sb, random)."),
    beta_range=click.option("--beta-range", type=(float, float), default=None, metavar="HOT COLD",
                 help="Shortcut for -m beta_range: neal's inverse temperatures, hot < cold [default: from the "
                      "biases]."),
    polish=click.option("--polish/--no-polish", default=False, show_default=True,
                 help="Polish every sample with steepest descent."),
)
sampler_options = options(*_SAMPLER_OPTIONS.values())


#: the annealing stage of the level pipeline (quantize head/network): the batched level-space annealer
LEVEL_SAMPLER = "batch-anneal"


def sampler_options_except(*names: str, default: str | None = None) -> Callable:
    """:data:`sampler_options` without ``names`` (a command whose config has no such setting);
    ``default`` replaces the default sampler (the quantize commands anneal with :data:`LEVEL_SAMPLER`)."""
    opts = dict(_SAMPLER_OPTIONS)
    if default is not None:
        opts["sampler"] = click.option("--sampler", type=SAMPLER_CHOICE, default=default, show_default=True,
                                       help=SAMPLER_HELP)
    return options(*(d for k, d in opts.items() if k not in names))


def pretrain_note(dataset: str, arch: str, image_size: int, quiet: bool) -> None:
    """Say so when the default ``qubo-nn pretrain`` checkpoint is missing and is trained now."""
    from qubo_nn.train.pretrain import PretrainConfig, checkpoint_path

    if not checkpoint_path(PretrainConfig(dataset=dataset, arch=arch, image_size=image_size)).exists():
        note(f"no checkpoint given: training the {dataset} {arch} with `qubo-nn pretrain` defaults first (digits "
             f"ResNet-18: 526 s recorded in results/pretrain/); cached for later runs", quiet)


_FEATURE_OPTIONS = dict(
    dataset=click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
                 help="Images to run the backbone on (digits: bundled with scikit-learn, no download; "
                      "synthetic-features: CIFAR-100-shaped random features, no backbone)."),
    arch=click.option("--arch", default="resnet18", show_default=True, metavar="NAME",
                 help="Any torchvision classification model (resnet18, mobilenet_v2, efficientnet_b0, ...)."),
    weights=click.option("--weights", default="none", show_default=True,
                 help="Backbone weights: 'imagenet' (torchvision's, downloaded or from the torch cache), "
                      "'none' (seeded random init) or a checkpoint path."),
    image_size=click.option("--image-size", type=click.IntRange(8, 1024), default=64, show_default=True,
                 help="Images are resized to SIZE × SIZE pixels."),
    data_root=click.option("--data-root", type=click.Path(file_okay=False), default=None,
                 help="imagefolder: DIR with train/ and val/ (or test/) class folders; cifar100: folder "
                      "containing the extracted 'cifar-100-python' [default: $QUBO_NN_DATA or ~/.cache/qubo-nn/data]."),
    download=click.option("--download", is_flag=True, help="Download CIFAR-100 when it is not under --data-root."),
    cache_dir=click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Feature cache folder [default: $QUBO_NN_CACHE or ~/.cache/qubo-nn/features]."),
    batch_size=click.option("--batch-size", type=click.IntRange(min=1), default=BACKBONE_BATCH, show_default=True,
                 help="Images per backbone batch (feature extraction)."),
    feature_seed=click.option("--feature-seed", type=int, default=0, show_default=True,
                 help="Seed of the random backbone (--weights none) and of the synthetic datasets."),
    limit=click.option("--limit", type=click.IntRange(min=1), default=None,
                 help="Use only the first N images of each split (quick looks)."),
    n_train=click.option("--n-train", type=click.IntRange(min=1), default=50_000, show_default=True,
                 help="Training samples of the synthetic feature sets."),
    n_test=click.option("--n-test", type=click.IntRange(min=1), default=10_000, show_default=True,
                 help="Test samples of the synthetic feature sets."),
    device=device_option,
)
feature_options = options(*_FEATURE_OPTIONS.values())


def feature_options_except(*names: str) -> Callable:
    """:data:`feature_options` without ``names`` (a command whose config has no such field)."""
    return options(*(d for k, d in _FEATURE_OPTIONS.items() if k not in names))


def feature_config(o: dict[str, Any]):
    """The :class:`~qubo_nn.data.features.FeatureConfig` of :data:`feature_options`."""
    from qubo_nn.data.features import FeatureConfig

    return FeatureConfig(dataset=o["dataset"], arch=o["arch"], weights=o["weights"], image_size=o["image_size"],
                         data_root=o["data_root"], download=o["download"], device=o["device"],
                         batch_size=o["batch_size"], seed=o["feature_seed"], cache_dir=o["cache_dir"],
                         limit=o["limit"], n_train=o["n_train"], n_test=o["n_test"])


sgd_options = options(
    click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True, help="SGD epochs."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=LR, show_default=True,
                 help="SGD learning rate (peak of the schedule)."),
    click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True,
                 help="SGD momentum."),
    click.option("--sgd-batch-size", type=click.IntRange(min=1), default=SGD_BATCH, show_default=True,
                 help="SGD mini-batch size (samples of cached features per step)."),
    click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
                 help="L2 penalty (weight_decay/2)·‖W‖² on the weights (not the bias)."),
)

block_options = options(
    click.option("--bits", type=click.IntRange(1, 16), default=4, show_default=True, help="Bits per weight."),
    encoding_option,
    click.option("--blocks", type=click.Choice(BLOCK_KINDS), default="rows", show_default=True,
                 help="Block selection: class rows (with bias), feature columns, top-k salient weights, random."),
    click.option("--per-block", type=click.IntRange(min=1), default=1, show_default=True,
                 help="rows/columns: rows or columns per block (rows > 1 include the cross-class terms)."),
    click.option("--block-size", type=click.IntRange(min=1), default=None,
                 help="topk/random: weights per block."),
    click.option("--num-blocks", type=click.IntRange(min=1), default=None,
                 help="topk: number of blocks [default: 1]."),
    click.option("--window", type=click.FloatRange(min=0, min_open=True), default=WINDOW, show_default=True,
                 help="Downhill end of each weight's grid window, in diagonal Newton steps |g|/H_ii."),
    damping_option(),
    click.option("--subsample", type=click.IntRange(min=1), default=None,
                 help="Hessian on a seeded subset of this many training samples [default: all]."),
)
