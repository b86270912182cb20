"""``tabu``: dwave-tabu's multistart tabu search (MST2), with time_limit in seconds."""
from __future__ import annotations

import time
from typing import Any

import dimod
from dwave.samplers import TabuSampler as _DWaveTabuSampler


class TabuSampler(_DWaveTabuSampler):
    """dwave-tabu's :class:`TabuSampler`; ``time_limit`` (seconds, all reads together) maps to
    its per-read ``timeout`` (ms) = 1000 · time_limit / num_reads.

    Tabu search stops on its clock (``timeout``, 20 ms per read by default) unless
    ``timeout=None``: then only ``num_restarts`` and ``energy_threshold`` stop it, and the same
    seed gives the same samples. With a clock, the same seed can give different samples when a
    search is cut at a different point (finite clock resolution, a busy CPU).
    """

    def __init__(self) -> None:
        super().__init__()
        self.parameters = {**self.parameters, "time_limit": []}

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, time_limit: float | None = None,
               **kwargs: Any) -> dimod.SampleSet:
        from qubo_nn.io.bqm_files import check_energy_range

        check_energy_range(bqm, "the tabu sampler's input")   # overflowing biases crash or mislead the C kernel
        if time_limit is not None:
            if "timeout" in kwargs:
                raise ValueError("give either time_limit (seconds, all reads) or timeout (ms per read), not both")
            if not time_limit > 0:
                raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
            reads = kwargs.get("num_reads")
            if reads is None:
                init = kwargs.get("initial_states")
                reads = len(dimod.as_samples(init)[0]) if init is not None else 1
            kwargs["timeout"] = max(1, int(1000.0 * float(time_limit) / max(1, int(reads))))
        t0 = time.perf_counter()
        sampleset = super().sample(bqm, **kwargs)
        sampleset.info["timing"] = {"sampling_s": time.perf_counter() - t0}
        if "timeout" in kwargs:
            sampleset.info["timeout_ms"] = kwargs["timeout"]
        return sampleset
