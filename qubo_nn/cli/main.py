"""Entry point of ``qubo-nn``: registers one click command per module."""
from __future__ import annotations

import importlib

import click

from .. import __version__

# module name -> attribute holding the click command (each module owns one or more commands)
_COMMANDS = {
    "features_cmd": ["features", "train"],
    "build_cmd": ["build"],
    "solve_cmd": ["solve", "decode", "samplers"],
    "experiment_cmd": ["experiment"],
    "quantize_cmd": ["quantize"],
    "pretrain_cmd": ["pretrain"],
    "prune_cmd": ["prune"],
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="qubo-nn")
def main() -> None:
    """qubo-nn: QUBO models of a vision network's FC head, solved with classical
    annealers (dwave-neal by default), compared honestly with plain SGD.

    \b
    Typical flow:
      qubo-nn features --dataset digits          # run the frozen backbone once, cache features
      qubo-nn train                              # SGD baseline of the FC head on cached features
      qubo-nn build --out qubos/                 # QUBO model of the head's loss, one file per block
      qubo-nn solve qubos/manifest.json --sampler neal --out sol/
      qubo-nn decode sol/ --out head.pt          # inject the solution, report true loss/accuracy
      qubo-nn experiment                         # the whole comparison (SGD vs hybrid vs optimum)
      qubo-nn quantize --bits 2 --method qubo    # low-bit heads
    """


for _module, _names in _COMMANDS.items():
    _mod = importlib.import_module(f"{__package__}.{_module}")
    for _name in _names:
        main.add_command(getattr(_mod, _name.replace("-", "_") + "_command"), name=_name)
