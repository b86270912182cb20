"""``pipeline``: the default level-space pipeline (:func:`levels.solve_levels` method ``qubo``).

Warm start from the best classical answer (coordinate descent from GPTQ act-order, GPTQ natural
order and RTN), anneal around the incumbent — by default in level space with the batched annealer
(``subsampler="batch-anneal"``: ``num_reads`` chains × ``num_sweeps`` sweeps), or a unary window of
``levels`` levels as a BQM with any registered sampler (``subsampler="neal"``, started at the
incumbent) — polish by coordinate descent, repeat while it improves (at most ``rounds``). Needs the block's ``integer_form`` (see :mod:`.classical`). ``info`` says which stage
produced the answer (``stage``: classical / anneal / polish) and keeps the annealer's own best raw
energy (``energy_anneal_raw``) apart from the classical fallback (``energy_classical``).
"""
from __future__ import annotations

from typing import Any

import dimod

from qubo_nn.samplers.classical import _LevelSampler, levels_sampleset, require_form
from qubo_nn.samplers.level_solvers import solve_levels

__all__ = ["PipelineSampler"]


class PipelineSampler(_LevelSampler):
    """Best classical start, annealed unary windows around it, polished in level space."""

    NAME = "pipeline"
    PARAMETER_NAMES = ("integer_form", "seed", "encoding", "window_levels", "rounds", "num_reads",
                       "num_sweeps", "time_budget_s", "subsampler")

    def sample(self, bqm, integer_form=None, seed: int = 0, encoding: str = "unary", window_levels: int = 3,
               rounds: int = 4, num_reads: int = 4, num_sweeps: int = 1000, time_budget_s: float | None = None,
               subsampler: str = "batch-anneal", **_: Any) -> dimod.SampleSet:
        form = require_form(self.NAME, bqm, integer_form)
        params = {"num_reads": int(num_reads)}
        if subsampler in ("neal", "batch-anneal"):
            params["num_sweeps"] = int(num_sweeps)
        k, info = solve_levels(form.problem, "qubo", encoding=encoding, sampler=subsampler, seed=int(seed),
                                  params=params, time_budget_s=time_budget_s, levels=int(window_levels),
                                  rounds=int(rounds))
        return levels_sampleset(bqm, form, k, info)
