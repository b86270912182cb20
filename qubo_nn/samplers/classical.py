"""``gptq`` and ``cd``: the strongest classical roundings, as dimod samplers over a block's levels.

Both work on the block's integer form (:class:`qubo_nn.core.problem.IntegerForm`, from
``qubo_nn.core.bqm.integer_form(model, enc, damping)``), passed as the ``integer_form`` parameter: a
bare BQM does not say which integer problem its bits encode, so without it they refuse with a
:class:`QuboNNError` naming what is missing. The answer is returned as the BQM's bits (in the
encoding the form names), one sample, scored by the BQM like every other sampler.

- ``gptq``: GPTQ's sequential rounding with error feedback (:func:`qubo_nn.core.kernels.gptq`, the one GPTQ kernel), in act-order
  (decreasing diag H, the default in GPTQ's own code; ``act_order=False``: index order).
- ``cd``: greedy coordinate descent over integer levels with single and pair moves
  (:func:`qubo_nn.core.kernels.coordinate_descent`, the CDQuant idea), from GPTQ act-order (``start``) .
"""
from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.core.kernels import coordinate_descent, gptq, rtn
from qubo_nn.core.problem import IntegerForm

__all__ = ["GPTQSampler", "CDSampler", "require_form", "levels_sampleset"]


def require_form(name: str, bqm: dimod.BinaryQuadraticModel, form: Any) -> IntegerForm:
    """The ``integer_form`` a level-space sampler was given, checked against ``bqm``."""
    if form is None:
        raise QuboNNError(f"sampler {name!r} needs the block's integer form: expected "
                          "integer_form=qubo_nn.core.bqm.integer_form(model, enc, damping), got a bare BQM without it "
                          "(a .bqm file alone does not carry it; solve a build folder with its sidecars)")
    if not isinstance(form, IntegerForm):
        raise QuboNNError(f"sampler {name!r}: expected integer_form to be a levels.IntegerForm, "
                          f"got {type(form).__name__}")
    if form.num_variables != bqm.num_variables or set(bqm.variables) != set(range(bqm.num_variables)):
        raise QuboNNError(f"sampler {name!r}: the integer form encodes {form.num_variables} variables 0..n-1, "
                          f"got a BQM with {bqm.num_variables} variables")
    return form


def levels_sampleset(bqm: dimod.BinaryQuadraticModel, form: IntegerForm, K: np.ndarray,
                     info: dict) -> dimod.SampleSet:
    """A SampleSet of the bits of level vectors K ((S, m) or (m,)) scored by ``bqm``."""
    X = form.to_bits(np.atleast_2d(K))
    return dimod.SampleSet.from_samples_bqm((X, list(range(bqm.num_variables))), bqm, info=info)


class _LevelSampler(dimod.Sampler):
    NAME = ""
    PARAMETER_NAMES: tuple[str, ...] = ("integer_form",)

    @property
    def parameters(self) -> dict[str, list]:
        return {p: [] for p in self.PARAMETER_NAMES}

    @property
    def properties(self) -> dict[str, Any]:
        return {"needs": "integer_form"}


class GPTQSampler(_LevelSampler):
    """GPTQ sequential rounding (act-order by default) of the block's integer form."""

    NAME = "gptq"
    PARAMETER_NAMES = ("integer_form", "act_order")

    def sample(self, bqm, integer_form=None, act_order: bool = True, **_: Any) -> dimod.SampleSet:
        form = require_form(self.NAME, bqm, integer_form)
        t0 = time.perf_counter()
        k = gptq(form.problem, act_order=bool(act_order))
        return levels_sampleset(bqm, form, k, {"act_order": bool(act_order), "energy": form.problem.energy(k),
                                               "solver_wall_time_s": time.perf_counter() - t0})


class CDSampler(_LevelSampler):
    """Coordinate descent with single and pair moves over the levels, from GPTQ act-order."""

    NAME = "cd"
    PARAMETER_NAMES = ("integer_form", "start", "pairs")
    STARTS = ("gptq", "gptq-natural", "rtn")

    def sample(self, bqm, integer_form=None, start: str = "gptq", pairs: bool = True, **_: Any) -> dimod.SampleSet:
        form = require_form(self.NAME, bqm, integer_form)
        if start not in self.STARTS:
            raise QuboNNError(f"sampler 'cd': start must be one of {self.STARTS}, got {start!r}")
        t0 = time.perf_counter()
        p = form.problem
        k0 = rtn(p) if start == "rtn" else gptq(p, act_order=start == "gptq")
        k, info = coordinate_descent(p, k0, pairs=bool(pairs))
        info.update({"start": start, "energy": p.energy(k), "solver_wall_time_s": time.perf_counter() - t0})
        return levels_sampleset(bqm, form, k, info)
