"""The local quadratic model of a loss around a point, L0 + gᵀΔ + ½Δᵀ(H + μI)Δ, and its damping rule."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LocalModel:
    """L(θ0 + Δ) ≈ L0 + gᵀΔ + ½ ΔᵀHΔ on the block ``idx`` (m weights).

    ``g`` (m,) and ``H`` (m × m, PSD) include the L2 term; no damping (that belongs to the QUBO).
    ``theta0`` (m,) are the block's current values. Units: loss (nats per sample).
    """

    idx: torch.Tensor
    g: torch.Tensor
    H: torch.Tensor
    L0: float
    theta0: torch.Tensor
    l2: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def m(self) -> int:
        return int(self.idx.numel())

    def predict(self, delta: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """Predicted loss for steps ``delta`` ((m,) or (S, m)), with damping μ: +μ/2‖Δ‖²."""
        d = delta.to(self.H.dtype)
        quad = (d @ self.H * d).sum(-1) + damping * (d * d).sum(-1)
        return self.L0 + d @ self.g + 0.5 * quad


def damping_mu(hdiag, rel: float, absolute: float = 0.0) -> float:
    """The damping rule μ = ``absolute`` + ``rel`` · mean(diag H) (GPTQ's "percdamp": a fraction of the
    mean curvature), from ``hdiag`` (NumPy array or torch tensor, its own dtype for the mean).

    Every damped Hessian of the project uses it: builds (``damping_rel``, ``damping_abs``), the head's
    row problems (``damping_rel``), the layer path's sequential factor (``damping``, relative too).
    """
    return float(absolute + rel * float(hdiag.mean()))
