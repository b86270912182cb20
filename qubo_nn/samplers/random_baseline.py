"""``random``: uniformly random states (dwave-samplers' RandomSampler), the floor any sampler must beat.

Parameters: ``num_reads``, ``time_limit`` (draw until then), ``max_num_samples`` (keep the
best ones), ``seed``.
"""
from dwave.samplers import RandomSampler

__all__ = ["RandomSampler"]
