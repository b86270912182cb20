"""``qubo-nn quantize head|network``: a low-bit FC head, or every conv and linear layer of the
network, by RTN, GPTQ, CD or QUBO rounding.

``quantize`` is a command group. Each subcommand has only its own options; an option of the
other one is refused by name (exit 2), never ignored. The old spelling
``qubo-nn quantize [--scope head|network] ...`` still works for one release: it prints a
one-line notice and runs the subcommand ``--scope`` named (head when absent).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from qubo_nn.cli.common import (
    LEVEL_SAMPLER,
    SCALE_RULES,
    LazyChoice,
    QuboGroup,
    check_distinct_paths,
    check_writable,
    damping_option,
    emit,
    encoding_option,
    executor_options,
    feature_config,
    feature_options,
    grid_option,
    handle_errors,
    json_option,
    note,
    options,
    progress_option,
    sampler_options_except,
    sampler_params,
    seed_option,
    sgd_options,
)

QUANTIZE_DAMPING = 0.01   # QuantizeConfig.damping_rel (GPTQ's percdamp); checked by tests
QUANTIZE_NUM_READS = 4    # QuantizeConfig.num_reads
SCOPES = ("head", "network")
SAMPLER_KEYS = ("sampler_params", "params_alias", "num_reads", "num_sweeps", "time_limit", "beta_range")


def _methods() -> tuple[str, ...]:
    from qubo_nn.workflows.head_quantize import METHODS

    return tuple(dict.fromkeys(METHODS + ("gptq", "cd")))


def get_features(cfg, progress: bool = False):
    """:func:`qubo_nn.data.features.get_features`, imported when called (a seam tests patch)."""
    from qubo_nn.data.features import get_features as _get

    return _get(cfg, progress=progress)


def versions() -> dict:
    """:func:`qubo_nn.runtime.versions`, imported when called (a seam tests patch)."""
    from qubo_nn.runtime import versions as _versions

    return _versions()


def load_head(path: str | Path):
    """A head from a torch state dict file ``{"weight": C × D, "bias": C}``."""
    from qubo_nn.io.heads import load_head_file

    return load_head_file(path)


# --------------------------------------------------------------------------- the group


class QuantizeGroup(QuboGroup):
    """``quantize``: the subcommands ``head`` and ``network``; arguments that do not start with
    one of them are the old spelling (``--scope`` picks the subcommand), with a notice."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        completing = ctx.resilient_parsing and not args   # the shell completes the subcommand's name
        if not completing and (not args or (args[0] not in self.lazy and args[0] not in ctx.help_option_names)):
            args = old_spelling(args, ctx)
        return super().parse_args(ctx, args)


def old_spelling(args: list[str], ctx: click.Context) -> list[str]:
    """``[--scope S] ARGS`` → ``[S, ARGS...]`` (``--scope`` removed; S = head when absent), and
    a one-line notice on stderr."""
    scope, rest, i = "head", [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--scope" or a.startswith("--scope="):
            if a == "--scope" and i + 1 >= len(args):
                raise click.BadOptionUsage("--scope", "Option '--scope' requires an argument.", ctx)
            value = a.split("=", 1)[1] if "=" in a else args[i + 1]
            if value not in SCOPES:
                raise click.BadParameter(f"expected head or network, got {value!r}", ctx, param_hint="'--scope'")
            scope, i = value, i + (1 if "=" in a else 2)
            continue
        rest.append(a)
        i += 1
    old = " --scope network" if scope == "network" else ""
    if not ctx.resilient_parsing:   # not while the shell completes a word
        click.echo(f"Note: `qubo-nn quantize{old} ...` is now `qubo-nn quantize {scope} ...`; "
                   f"the old spelling works for one more release.", err=True)
    return [scope, *rest]


class QuantizeCommand(click.Command):
    """A ``quantize`` subcommand: an option of its sibling is refused by name (exit 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if exc.option_name == "--scope":
                raise click.UsageError(f"--scope is the old spelling; `qubo-nn quantize {ctx.info_name} ...` "
                                       f"already names the scope", ctx) from None
            group = ctx.parent.command if ctx.parent is not None else None
            for name in getattr(group, "lazy", {}):
                other = group.get_command(ctx.parent, name)
                if other is not self and exc.option_name in option_names(other):
                    raise click.UsageError(f"{exc.option_name} applies to `qubo-nn quantize {name}` only, "
                                           f"not to `quantize {ctx.info_name}`", ctx) from None
            raise


def option_names(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", ()) + getattr(p, "secondary_opts", ())}


@click.group(cls=QuantizeGroup, lazy={"head": ".quantize_cmd:head_command",
                                      "network": ".network_quantize:network_command"})
def quantize_command() -> None:
    """Low-bit weights by RTN, GPTQ, CD or QUBO rounding: `head` (the FC head on cached
    features) or `network` (every conv and linear layer of the ResNet, BN folded). Each
    subcommand has only its own options; `qubo-nn quantize SUBCOMMAND --help` lists them.
    The old spelling `qubo-nn quantize [--scope network] ...` works for one more release.

    \b
    Example:
      qubo-nn quantize head --bits 2 --method qubo --head head.pt
      qubo-nn quantize network --bits 2 --method gptq --calib 128
    """


# --------------------------------------------------------------------------- options both subcommands share

def shared_options(method_choice: click.ParamType, method_help: str, out_default: str, out_help: str):
    """The options of ``quantize head`` and ``quantize network`` alike (same names, same meaning)."""
    return options(
        click.option("--bits", type=int, default=4, show_default=True,
                     help="Bits per weight (1–8, checked by the library); codes q ∈ [−2^(b−1), 2^(b−1)−1], "
                          "w = s_row·q."),
        click.option("--method", type=method_choice, default="qubo", show_default=True, help=method_help),
        grid_option,
        click.option("--scale", "scale_rule", type=click.Choice(SCALE_RULES), default="mse", show_default=True,
                     help="Per-row scale: max-abs, or the MSE-optimal clipping ratio."),
        damping_option(QUANTIZE_DAMPING),
        seed_option,
        click.option("--out", type=click.Path(dir_okay=False), default=out_default, show_default=True,
                     help=out_help),
        click.option("--record", type=click.Path(dir_okay=False), default=None,
                     help="Where to write the JSON record [default: --out with suffix .json]."),
        progress_option,
        json_option,
    )


def split_sampler_options(opts: dict[str, Any], keep_num_reads: bool) -> tuple[str, dict, int | None]:
    """(sampler, its parameters, --num-reads) from the sampler options, removed from ``opts``.
    ``keep_num_reads`` False: --num-reads is the command's own setting, not a sampler parameter."""
    num_reads = opts["num_reads"]
    if not keep_num_reads:
        opts["num_reads"] = None
    params = sampler_params(opts)
    sampler = opts.pop("sampler")
    for key in SAMPLER_KEYS:
        opts.pop(key)
    return sampler, params, num_reads


def check_outputs(out: str, record: str | None, inputs: dict[str, Any]) -> Path:
    """Both outputs writable, distinct, and neither an input; the record's path."""
    check_writable(out, "--out", kind="file")
    record_path = Path(record) if record else Path(out).with_suffix(".json")
    check_writable(record_path, "--record", kind="file")
    label = "--record" if record else "the record (--out with suffix .json; give --record)"
    check_distinct_paths({"--out": out, label: record_path}, inputs)
    return record_path


def executor(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: opts.pop(k) for k in ("executor", "workers", "ray_address")}


# --------------------------------------------------------------------------- quantize head

def _table(rec: dict, method: str) -> str:
    ref = rec["reference"]
    lines = [f"{'method':<8} {'test acc %':>10} {'test loss':>10} {'train loss':>10} {'QUBO energy':>12}",
             f"{'fp32':<8} {ref['test_acc']:>10.2f} {ref['test_loss']:>10.4f} {ref['train_loss']:>10.4f} {'':>12}"]
    for name, m in rec["methods"].items():
        mark = " *" if name == method else ""
        lines.append(f"{name:<8} {m.get('test_acc', float('nan')):>10.2f} {m.get('test_loss', float('nan')):>10.4f} "
                     f"{m['train_loss']:>10.4f} {m['energy']:>12.6f}{mark}")
    return "\n".join(lines)


def fp32_head(head, kind: str, feats, sgd, seed: int, device: str, progress: bool) -> tuple[Any, dict]:
    """The head to quantize and how it came: ``head`` itself, else the reference or SGD fit."""
    from qubo_nn.core.head import Head
    from qubo_nn.train.sgd import reference_head, train_sgd

    if head is not None:
        return head, {}
    if kind == "reference":
        note("no --head: fitting the fp32 reference head (L-BFGS over an L2 grid; recorded 88 s on digits, "
             "176 s on synthetic-features, results/quantize/heads/); --head PATH skips it", not progress)
        head, hinfo = reference_head(feats.train, seed=seed, device=device)
        return head, {"reference": {k: v for k, v in hinfo.items() if k != "fit"}, "lbfgs": hinfo["fit"]}
    note(f"no --head: training the SGD baseline head ({sgd.epochs} epochs); --head PATH skips it", not progress)
    head0 = Head.init_like_linear(feats.train.num_classes, feats.train.dim, seed=seed)
    head, _ = train_sgd(head0, feats.train, feats.test, sgd, device=device)
    return head, {"sgd": vars(sgd)}


@click.command(cls=QuantizeCommand)
@shared_options(LazyChoice(_methods),
                "Rounding whose head is written: round-to-nearest, GPTQ in natural or act-order, coordinate "
                "descent from GPTQ (cd), or the QUBO pipeline (best classical start, annealed level windows, "
                "CD polish). Every method but qubo is always computed and recorded beside it.",
                "head-quantized.pt", "Where to write the quantized head (torch state dict: weight, bias, scale, codes).")
@sampler_options_except(default=LEVEL_SAMPLER)
@encoding_option
@click.option("--window-bits", type=click.IntRange(min=1), default=1, show_default=True,
              help="QUBO bits per weight: a window of 2^k grid levels (1 = round up or down, AdaRound).")
@click.option("--grad/--no-grad", "use_grad", default=False, show_default=True,
              help="Include the gradient term gᵀΔ in the rounding objective (greedy and QUBO).")
@click.option("--refine-span", type=click.FloatRange(min=0), default=100.0, show_default=True,
              help="Samplers with a beta_range (neal), started from the greedy/RTN incumbents, anneal from "
                   "β_cold/SPAN to β_cold (a low-temperature refinement); 0 = the sampler's own schedule.")
@click.option("--refit-bias", is_flag=True, help="Re-fit the (full-precision) bias with the weights frozen (L-BFGS).")
@click.option("--l2", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="L2 term (l2/2)·‖W‖² of the loss the Hessian blocks come from.")
@click.option("--subsample", type=click.IntRange(min=1), default=None,
              help="Hessian blocks from a seeded random subset of this many training samples.")
@click.option("--head", "head_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Head to quantize (torch state dict: weight, bias) [default: the --fp32-head fit].")
@click.option("--fp32-head", "fp32_kind", type=click.Choice(["reference", "sgd"]), default="reference",
              show_default=True,
              help="Without --head: reference = the L2-regularised convex optimum, L2 chosen on a held-out 20 % "
                   "of train (stable under feature jitter); sgd = the SGD baseline with the SGD options below.")
@sgd_options
@executor_options("the row problems are solved (the levels do not depend on it)")
@feature_options
@handle_errors
def head_command(bits: int, method: str, grid: str, scale_rule: str, damping: float, seed: int, out: str,
                 record: str | None, progress: bool, as_json: bool, encoding: str, window_bits: int,
                 use_grad: bool, refine_span: float, refit_bias: bool, l2: float, subsample: int | None,
                 head_path: str | None, fp32_kind: str, **opts: Any) -> None:
    """Quantize the FC head to --bits per weight (per-row grids, bias in full precision) and
    record accuracy, loss and every method's QUBO energy on the same per-row BQMs.

    \b
    Example:
      qubo-nn quantize head --bits 2 --method qubo --sampler neal --head head.pt
    """
    progress = progress and not as_json   # --json: stdout and stderr carry nothing but the result
    sampler, params, num_reads = split_sampler_options(opts, keep_num_reads=False)
    record_path = check_outputs(out, record, {"--head": head_path})
    from qubo_nn.execution.executors import check_available
    from qubo_nn.train.sgd import SGDConfig
    from qubo_nn.workflows.head_quantize import QuantizeConfig

    cfg = QuantizeConfig(bits=bits, method=method, scale=scale_rule, sampler=sampler, sampler_params=params,
                         encoding=encoding, num_reads=num_reads or QUANTIZE_NUM_READS, window_bits=window_bits,
                         damping_rel=damping, use_grad=use_grad, polish=opts.pop("polish"),
                         refine_span=refine_span or None, refit_bias=refit_bias, l2=l2, subsample=subsample,
                         device=opts["device"], seed=seed, grid=grid, **executor(opts))
    cfg.validate()
    check_available(cfg.executor_config())   # e.g. --executor ray without Ray: fail before the features
    sgd = SGDConfig(epochs=opts.pop("epochs"), lr=opts.pop("lr"), momentum=opts.pop("momentum"),
                    batch_size=opts.pop("sgd_batch_size"), weight_decay=opts.pop("weight_decay"), seed=seed)
    sgd.validate()
    head = load_head(head_path) if head_path else None  # before the features: fail fast on a bad file
    run_head(cfg, sgd, head, head_path, fp32_kind, opts, out, record_path, progress, as_json)


def run_head(cfg, sgd, head, head_path: str | None, fp32_kind: str, opts: dict[str, Any], out: str,
             record_path: Path, progress: bool, as_json: bool) -> None:
    """Features, the fp32 head, :func:`~qubo_nn.workflows.head_quantize.quantize_head`, then the
    quantized head (``out``) and its record, both written atomically."""
    import torch

    from qubo_nn.runtime import (
        atomic_path,
        atomic_write_json,
        machine_info,
        resolve_device,
        tensor_digest,
    )
    from qubo_nn.workflows.head_quantize import quantize_head

    t0 = time.perf_counter()
    fcfg = feature_config(opts)
    feats = get_features(fcfg, progress=progress)
    head, how = fp32_head(head, fp32_kind, feats, sgd, cfg.seed, opts["device"], progress)
    head = head.to("cpu")
    source: dict[str, Any] = {"features": fcfg.__dict__, "features_path": feats.path,
                              "head": how or {"path": str(head_path)},
                              "head_digest": tensor_digest(head.W, head.b),
                              "features_digest": tensor_digest(feats.train.X, feats.train.y, feats.test.X,
                                                               feats.test.y),
                              "machine": machine_info(resolve_device(opts["device"]))}
    res = quantize_head(head, feats.train, feats.test, cfg, progress=progress)
    chosen = res.methods[cfg.method]
    with atomic_path(out) as tmp:
        torch.save({**res.head.state_dict(), "scale": res.scale, "codes": chosen.codes, "bits": cfg.bits,
                    "method": cfg.method}, tmp)
    rec = {**res.record(), "source": source, "out": str(out), "versions": versions(),
           "seconds": time.perf_counter() - t0}
    atomic_write_json(record_path, rec)
    emit({**rec, "record": str(record_path)}, as_json,
         _table(rec, cfg.method) + f"\n{cfg.bits}-bit {cfg.method} head written to {out}; record {record_path}")
