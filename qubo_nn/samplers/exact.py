"""``exact``: brute force over all states (dimod's ExactSolver), refused above 24 variables."""
from __future__ import annotations

import dimod

from qubo_nn.errors import QuboNNError

#: 2**24 states × 24 variables is already 400 MB of samples.
MAX_EXACT_VARIABLES = 24


class ExactSampler(dimod.Sampler):
    """Every state of the model by brute force (dimod's ExactSolver), lowest energy first.

    Refuses models with more than :data:`MAX_EXACT_VARIABLES` variables before allocating
    anything. ``num_reads`` keeps only that many lowest-energy states (default: all 2^n).
    """

    parameters = None
    properties = None

    def __init__(self) -> None:
        self.parameters = {"num_reads": []}
        self.properties = {"max_num_variables": MAX_EXACT_VARIABLES}

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, num_reads: int | None = None) -> dimod.SampleSet:
        n = bqm.num_variables
        if n > MAX_EXACT_VARIABLES:
            raise QuboNNError(f"sampler 'exact' enumerates all 2^n states: expected at most "
                              f"{MAX_EXACT_VARIABLES} variables, got {n}; use neal, tabu or sb")
        if num_reads is not None and (isinstance(num_reads, bool) or int(num_reads) != num_reads or num_reads < 1):
            raise ValueError(f"num_reads must be a positive integer, got {num_reads!r}")
        sampleset = dimod.ExactSolver().sample(bqm)
        if num_reads is not None and len(sampleset) > num_reads:
            sampleset = sampleset.truncate(int(num_reads))
        return sampleset
