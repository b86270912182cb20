"""``decompose``: a Kerberos-like dwave-hybrid workflow on the block's BQM itself.

Each iteration runs two branches (``hybrid.Parallel``) and keeps the lower energy (``hybrid.ArgMin``): the incumbent
unchanged, and ``EnergyImpactDecomposer`` (the ``size`` variables with the largest energy impact,
rolling over the problem) | a sub-problem sampler (neal: ``SimulatedAnnealingSubproblemSampler``,
or tabu: ``TabuSubproblemSampler``) | ``SplatComposer``. ``hybrid.Loop`` repeats it until
``convergence`` iterations bring no improvement or ``max_iter``/``max_time`` is reached. The D-Wave
QPU can replace the sub-sampler (``hybrid.QPUSubproblemAutoEmbeddingSampler``) where a token exists;
that is not wired here. The start is ``initial_states`` (its first row) or, given ``integer_form``,
the best classical answer (CD from GPTQ act-order), else hybrid's default (all zeros).
Sub-problem annealing is seeded from ``seed`` (one child seed per call).
"""
from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.samplers.classical import require_form
from qubo_nn.core.kernels import coordinate_descent, gptq

__all__ = ["DecomposeSampler", "SUBSAMPLERS"]

SUBSAMPLERS = ("neal", "tabu")


class _Seeded:
    """A dimod sampler that hands every call the next seed of a NumPy generator."""

    def __init__(self, inner: dimod.Sampler, seed: int) -> None:
        self.inner, self.rng = inner, np.random.default_rng(seed)

    def sample(self, bqm, **kw: Any) -> dimod.SampleSet:
        return self.inner.sample(bqm, seed=int(self.rng.integers(2**31)), **kw)


class DecomposeSampler(dimod.Sampler):
    """dwave-hybrid: EnergyImpactDecomposer | neal or tabu on the sub-problem | SplatComposer, looped."""

    PARAMETER_NAMES = ("seed", "size", "subsampler", "max_iter", "max_time", "convergence", "num_sweeps",
                       "initial_states", "integer_form")

    @property
    def parameters(self) -> dict[str, list]:
        return {p: [] for p in self.PARAMETER_NAMES}

    @property
    def properties(self) -> dict[str, Any]:
        return {"package": "dwave-hybrid"}

    def sample(self, bqm, seed: int = 0, size: int = 64, subsampler: str = "neal", max_iter: int = 200,
               max_time: float | None = None, convergence: int = 10, num_sweeps: int = 500,
               initial_states=None, integer_form=None, **_: Any) -> dimod.SampleSet:
        import hybrid

        if subsampler not in SUBSAMPLERS:
            raise QuboNNError(f"sampler 'decompose': subsampler must be one of {SUBSAMPLERS}, got {subsampler!r}")
        t0 = time.perf_counter()
        labels = list(bqm.variables)
        start = "zeros"
        if initial_states is not None:
            arr, lab = initial_states
            x0 = dict(zip(lab, np.asarray(arr)[0].tolist()))
            start = "initial_states"
        elif integer_form is not None:
            form = require_form("decompose", bqm, integer_form)
            k, _ = coordinate_descent(form.problem, gptq(form.problem, True))
            x0 = dict(zip(range(bqm.num_variables), form.to_bits(k).tolist()))
            start = "cd<-gptq"
        else:
            x0 = {v: 0 for v in labels}
        size = int(min(max(int(size), 1), bqm.num_variables))
        if subsampler == "neal":
            sub = hybrid.SimulatedAnnealingSubproblemSampler(num_sweeps=int(num_sweeps))
            sub.sampler = _Seeded(sub.sampler, seed)
        else:
            sub = hybrid.TabuSubproblemSampler()
            sub.sampler = _Seeded(sub.sampler, seed)
        # Const(subsamples=None): the sub-sampler starts fresh on each new sub-problem (the previous
        # sub-problem's samples name other variables)
        branch = (hybrid.EnergyImpactDecomposer(size=size, rolling=True, rolling_history=1.0, traversal="energy")
                  | hybrid.Const(subsamples=None) | sub | hybrid.SplatComposer())
        iteration = hybrid.Parallel(hybrid.Identity(), branch) | hybrid.ArgMin()
        workflow = hybrid.Loop(iteration, max_iter=int(max_iter), convergence=int(convergence),
                               max_time=max_time)
        state = hybrid.State.from_sample(x0, bqm)
        e0 = float(bqm.energy(x0))
        out = workflow.run(state).result()
        ss = out.samples
        info = {"start": start, "start_energy": e0, "subsampler": subsampler, "size": size,
                "iterations": None, "solver_wall_time_s": time.perf_counter() - t0}
        return dimod.SampleSet.from_samples_bqm((ss.record.sample[:1], list(ss.variables)), bqm, info=info)
