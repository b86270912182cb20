"""Channel pruning of a layer's inputs: the exact quadratic objective, its QUBO, and the selectors.

``objective``: per-layer statistics (im2col Gram), E(s) = sᵀGs − 2bᵀs + ‖Y‖², the BQM, the refit.
``select``: L1, greedy (ThiNet), LASSO (He et al.), QUBO, brute force — all on the same E(s).
``network``: which layers of a ResNet can lose input channels, capture, masks, BN re-estimation.
"""
from qubo_nn.workflows.prune.objective import (PENALTY_MODES, ChannelStats, PruneProblem, channel_stats,
    prune_bqm, pruning_problem, refit_error, refit_weights, safe_penalty)
from qubo_nn.workflows.prune.select import (METHODS, brute_force, keep_count, repair, select_greedy,
    select_l1, select_lasso, select_qubo)

__all__ = ["PENALTY_MODES", "ChannelStats", "PruneProblem", "channel_stats", "prune_bqm",
           "pruning_problem", "refit_error", "refit_weights", "safe_penalty", "METHODS", "brute_force",
           "keep_count", "repair", "select_greedy", "select_l1", "select_lasso", "select_qubo"]
