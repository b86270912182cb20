"""nnqubo: a versioned benchmark suite of neural-network QUBOs and a harness for any dimod sampler.

- :mod:`qubo_nn.suite.recipes`: the seeded instance recipes (head rows, binary/ternary rows, network
  group rows, pruning masks, multi-row blocks) -> :class:`~qubo_nn.suite.instance.SuiteInstance`;
- :mod:`qubo_nn.suite.reference`: baselines, best-known values and certified lower bounds;
- :mod:`qubo_nn.suite.formats`: the instance files (dimod, qbsolv, COO, OMMX) and the manifest;
- :mod:`qubo_nn.suite.generate`: write / verify a suite directory;
- :mod:`qubo_nn.suite.harness`: run a sampler over a suite: excess, success probability, TTS99,
  CSV/JSON, Dolan-Moré profiles; :mod:`qubo_nn.suite.bqp`: OR-Library ``bqp`` files as a control.
"""
SUITE_NAME = "nnqubo-v1"
