"""Entry point of ``qubo-nn``: one click group; each command is imported when it is used.

Register a command by adding ``name: "module:attribute"`` to ``_COMMANDS`` (modules under
``qubo_nn/cli/``; keep their module level free of torch/dimod/library imports).
"""
from __future__ import annotations

import click

from qubo_nn import __version__
from qubo_nn.cli.common import QuboGroup

_COMMANDS = {
    "features": ".features_cmd:features_command",
    "train": ".features_cmd:train_command",
    "build": ".build_cmd:build_command",
    "solve": ".solve_cmd:solve_command",
    "decode": ".solve_cmd:decode_command",
    "samplers": ".solve_cmd:samplers_command",
    "experiment": ".experiment_cmd:experiment_command",
    "quantize": ".quantize_cmd:quantize_command",
    "pretrain": ".pretrain_cmd:pretrain_command",
    "eval": ".eval_cmd:eval_command",
    "prune": ".prune_cmd:prune_command",
    "bench": ".bench_cmd:bench_command",
}


@click.group(cls=QuboGroup, lazy=_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="qubo-nn")
def main() -> None:
    """qubo-nn: QUBO models of a vision network's FC head, solved with classical
    annealers (dwave-neal by default), compared honestly with plain SGD.

    \b
    Typical flow:
      qubo-nn features --dataset digits          # run the frozen backbone once, cache features
      qubo-nn train                              # SGD baseline of the FC head on cached features
      qubo-nn build --head head.pt --out qubos/  # QUBO model of the head's loss, one file per block
      qubo-nn solve qubos/ --sampler neal --out sol/
      qubo-nn decode sol/ --out head-qubo.pt     # inject the solution, report true loss/accuracy
      qubo-nn experiment                         # the whole comparison (SGD vs hybrid vs optimum)
      qubo-nn quantize head --bits 2 --method qubo      # a low-bit head
      qubo-nn quantize network --bits 2 --method gptq   # every layer of the network

    \b
    Exit codes: 0 ok, 2 bad input (with --json: one {"ok": false, ...} object), 130 interrupted.
    Shell completion (bash; zsh and fish alike):
      eval "$(_QUBO_NN_COMPLETE=bash_source qubo-nn)"
    """


if __name__ == "__main__":
    main()
