"""A composite that polishes any sampler's samples with steepest descent (greedy single flips)."""
from __future__ import annotations

import time
from typing import Any

import dimod
from dwave.samplers import SteepestDescentSolver


class PolishComposite(dimod.ComposedSampler):
    """Runs the child sampler, then steepest descent from each of its samples.

    Every returned sample is a local minimum under single flips and no worse than the child's.
    ``info`` is the child's, plus ``info["polish_stats"]``: best energy before and after, how many
    samples improved, and the polish time (s).
    """

    children = None
    parameters = None
    properties = None

    def __init__(self, child: dimod.Sampler) -> None:
        self.children = [child]
        self.parameters = dict(child.parameters)
        self.properties = {"child_properties": dict(child.properties)}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **parameters: Any) -> dimod.SampleSet:
        raw = self.child.sample(bqm, **parameters)
        if len(raw) == 0 or bqm.num_variables == 0:
            return raw
        t0 = time.perf_counter()
        polished = SteepestDescentSolver().sample(bqm, initial_states=raw)
        before = raw.record.energy
        order = [raw.variables.index(v) for v in polished.variables]
        after = polished.record.energy
        polished.info.update({k: v for k, v in raw.info.items() if k != "timing"})
        polished.info["child_timing"] = raw.info.get("timing")
        polished.info["polish_stats"] = {
            "energy_before": float(before.min()),
            "energy_after": float(after.min()),
            "improved": int(sum((raw.record.sample[:, order] != polished.record.sample).any(axis=1))),
            "wall_time_s": time.perf_counter() - t0,
        }
        return polished
