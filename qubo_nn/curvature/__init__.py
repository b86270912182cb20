"""Curvature sources: where the local quadratic of a block comes from.

- ``layer_gram``: a conv/linear layer's reconstruction Gram H = 2 X Xᵀ from its inputs.
  (The head's exact cross-entropy Hessian lives in ``qubo_nn.quadratic.HeadStats`` today.)
"""
