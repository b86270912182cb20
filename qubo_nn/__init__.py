"""qubo-nn: QUBO models of a network's FC head, solved with classical annealers.

The library never imports ``experiments/`` or ``benchmarks/``; the CLI (``qubo_nn.cli``)
sits on top of it and stays thin.
"""

__version__ = "0.1.0"
