"""Curvature sources: where the local quadratic of a block comes from.

- ``layer_gram``: a conv/linear layer's reconstruction Gram H = 2 X Xᵀ from its inputs.
- ``head_ce``: the FC head's exact cross-entropy Hessian of one class row (per-row H), as
  ``levels.IntegerProblem`` row problems (on ``quadratic.HeadStats``).
- ``gauss_newton``: Gauss–Newton curvature of parameters inside the network (BatchNorm γ/β).
"""
