"""The head's curvature source: the exact cross-entropy Hessian of one class row of W.

Beside :mod:`layer_gram` (a layer's reconstruction Gram, the same H for every row of the layer),
this is the second curvature source of the core: for the FC head, row c of W (the D weights of
class c, bias excluded) has its own exact task-loss Hessian block
H_c = (1/N) Σ_n p_nc (1 − p_nc) f_n f_nᵀ (+ l2·I), computed by :class:`qubo_nn.curvature.head_stats.HeadStats`
at the fp32 head. :meth:`HeadCE.row_problem` turns it into the core's integer problem
(:class:`qubo_nn.core.problem.IntegerProblem`) on a per-row grid w = s·k, damped as GPTQ
(μ = ``damping_rel`` · mean diag H_c, :func:`qubo_nn.core.model.damping_mu`):

    E(k) = const + ½ (s·k − t)ᵀ (H_c + μI) (s·k − t),

t = w (``use_grad=False``: the quadratic of the weight change, GPTQ's objective; const = L0) or the
damped Newton target t = w − H̃⁻¹g (:func:`qubo_nn.core.problem.newton_target`) (``use_grad=True``: E is the row's whole predicted loss,
const = L0 − ½ gᵀH̃⁻¹g). The solvers (:mod:`qubo_nn.core.grid`, :mod:`qubo_nn.execution.row_tasks`) and the
write-back (:func:`qubo_nn.core.layout.apply_levels` on the head's C × D weight view) are the ones
the network path uses; only this source is head-specific.

Layout: the head's parameters are θ = [W | b] row by row (C × (D + 1), :func:`qubo_nn.core.layout.flat_params`),
so row c of W is the flat indices c·(D + 1) … c·(D + 1) + D − 1.
"""
from __future__ import annotations

import numpy as np
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.core.model import damping_mu
from qubo_nn.core.problem import IntegerProblem, newton_target
from qubo_nn.curvature.head_stats import HeadStats


class HeadCE:
    """Row problems of a head's weights under its training cross-entropy (see the module docstring).

    Arguments as :class:`~qubo_nn.curvature.head_stats.HeadStats` (``subsample``: the Hessian blocks from a
    seeded subset of the training samples); ``loss`` is the fp32 head's training loss L0.
    """

    def __init__(self, head, feats, l2: float = 0.0, device="auto", dtype="float32", chunk: int = 4096,
                 subsample: int | None = None, seed: int = 0) -> None:
        self.stats = HeadStats(head, feats, l2, device, dtype, chunk, subsample, seed)
        self.rows, self.dim = head.num_classes, head.dim

    @property
    def loss(self) -> float:
        return self.stats.loss

    def row_indices(self, c: int) -> torch.Tensor:
        """Flat indices in θ = [W | b] of row c of W."""
        if not 0 <= c < self.rows:
            raise QuboNNError(f"row must be in [0, {self.rows}), got {c}")
        D = self.dim
        return torch.arange(c * (D + 1), c * (D + 1) + D)

    def row_problem(self, c: int, scale: float, kmin: int, kmax: int, damping_rel: float,
                    use_grad: bool = False) -> IntegerProblem:
        """Row c's integer problem on the grid s·k, k ∈ [kmin, kmax] (float64)."""
        model = self.stats.block(self.row_indices(c))
        H = model.H.to(torch.float64).cpu().numpy()
        Ht = H + damping_mu(np.diag(H), damping_rel) * np.eye(self.dim)
        target = model.theta0.to(torch.float64).cpu().numpy()
        const = float(model.L0)
        if use_grad:
            g = model.g.to(torch.float64).cpu().numpy()
            target, drop = newton_target(Ht, g, target, f"the damped Hessian block of row {c}")
            const = const - drop
        return IntegerProblem(Ht, target, np.full(self.dim, float(scale)), kmin, kmax, const)
