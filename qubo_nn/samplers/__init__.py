"""Samplers by name, and :func:`sample`: one call that validates, seeds, times and re-scores.

Every entry of :data:`SAMPLERS` is a :class:`dimod.Sampler` returning a :class:`dimod.SampleSet`:

=========  ===============================================================================
neal       simulated annealing (dwave-neal), vectorized β range, ``time_limit`` (default)
tabu       multistart tabu search (dwave-tabu), ``time_limit`` → per-read ``timeout``
steepest   greedy single-flip descent (dwave-samplers' SteepestDescentSolver)
exact      brute force (dimod.ExactSolver), at most 24 variables
sb         simulated bifurcation (PyTorch, GPU when present), polished by steepest descent
random     uniformly random states (dwave-samplers' RandomSampler), a baseline
dwave      D-Wave Leap hybrid/QPU solvers (optional dwave-system and a Leap token)
gptq       GPTQ sequential rounding of the block's levels (act-order default); needs integer_form
cd         coordinate descent with pair moves over the levels (CDQuant); needs integer_form
pipeline   best classical start → annealed unary windows → level-space polish; needs integer_form
decompose  dwave-hybrid: EnergyImpactDecomposer | neal/tabu sub-problems | SplatComposer, looped
batch-anneal batched Metropolis over levels/bits in torch (any BQM, dense); the level pipeline's default stage
=========  ===============================================================================

``integer_form`` (a :class:`qubo_nn.core.problem.IntegerForm`, from ``qubo_nn.core.problem.integer_form(model,
enc, damping)``) tells the level-space samplers which integer problem the BQM's bits encode; a bare
BQM without it is refused with a QuboNNError saying so. Parameter values are type-checked
(:data:`PARAM_TYPES`) before any sampler runs.
"""
from __future__ import annotations

import importlib

from qubo_nn.runtime import child_seed
from qubo_nn.samplers.base import draw_seed
from qubo_nn.samplers.registry import (
    DEFAULT_SAMPLER,
    PARAM_TYPES,
    SAMPLERS,
    check_param_types,
    describe,
    get_sampler,
    sample,
    sampler_class,
)

__all__ = ["SAMPLERS", "DEFAULT_SAMPLER", "get_sampler", "sampler_class", "sample", "describe",
           "check_param_types", "PARAM_TYPES", "child_seed", "draw_seed", *sorted(
               ["PolishComposite", "NealSampler", "TabuSampler", "SteepestDescentSolver", "ExactSampler", "SBSampler",
                "RandomSampler", "DWaveLeapSampler", "GPTQSampler", "CDSampler", "PipelineSampler",
                "DecomposeSampler", "BatchAnnealSampler", "vectorized_beta_range", "MAX_EXACT_VARIABLES"])]

#: names this package gives on first use (PEP 562), so that importing it loads no sampler module
_LAZY = {"NealSampler": "anneal", "vectorized_beta_range": "anneal", "TabuSampler": "tabu_search",
         "SteepestDescentSolver": "steepest", "ExactSampler": "exact", "MAX_EXACT_VARIABLES": "exact",
         "SBSampler": "bifurcation", "RandomSampler": "random_baseline", "DWaveLeapSampler": "dwave_leap",
         "GPTQSampler": "classical", "CDSampler": "classical", "PipelineSampler": "pipeline",
         "DecomposeSampler": "decompose", "PolishComposite": "polish",
         "BatchAnnealSampler": "batch_anneal"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"qubo_nn.samplers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'qubo_nn.samplers' has no attribute {name!r}")
