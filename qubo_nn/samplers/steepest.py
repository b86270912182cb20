"""``steepest``: greedy descent (dwave-samplers' SteepestDescentSolver), used as it is.

From each initial state (random by default; pass ``initial_states`` to start from the current
weights or a rounding) it flips the single variable that lowers the energy most until none
does: deterministic given its initial states, fast, and a strong baseline from a good start.
"""
from dwave.samplers import SteepestDescentSolver

__all__ = ["SteepestDescentSolver"]
