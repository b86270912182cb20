"""Encodings of weight blocks: w_i = ref_i + step_i · (k_i − offset_i), k_i = Σ_j d_j x_ij.

One :class:`Encoding` both encodes and decodes, and exposes the same map as Δ = A x + c
(Δ = w − θ0), with variable j of weight i at QUBO variable ``i*width + j``. A is block diagonal:
A[i, i*width + j] = step_i · d_j, so it is stored compactly as ``a`` (m × width).

``bits`` is the size of the window: 2^bits levels k ∈ [0, 2^bits − 1] per weight, whatever the
``kind`` (:data:`ENCODINGS`; the digit weights d come from :func:`qubo_nn.core.grid.digit_weights`, the one
place they are defined):

- ``binary`` (default): d_j = 2^j, width = bits;
- ``unary`` (thermometer): d_j = 1, width = 2^bits − 1 (every variable is worth one step);
- ``domain-wall``: unary digits; the BQM adds P·Σ_j x_{i,j+1}(1 − x_ij) (:func:`qubo_nn.core.problem.bit_qubo`),
  zero exactly on thermometer codes, so its minimum is unary's and every state decodes by count.

Modes:

- ``optimize``: ref = θ0 (window centred on the current weights). With b bits the integer
  k = Σ 2^j x ranges over [0, 2^b − 1]; offset_i = 2^(b−1) when g_i > 0 (the window reaches
  2^(b−1) steps down, 2^(b−1)−1 up) and 2^(b−1) − 1 otherwise, so the current point is always on
  the grid and the longer side points downhill (for b = 1: "stay or step against g").
  Step rule ``curvature``: step_i = window · |g_i| / (H_ii + μ) / 2^(b−1), i.e. the far end of
  the window on the downhill side lies at ``window`` × the diagonal Newton step.
- ``quantize``: fixed per-weight grid scale s (and zero point z): w = s·(q − z), q integer in
  [qmin, qmax]. The bits choose q in a window of 2^b levels around w/s: for b = 1 floor or
  ceil (AdaRound-style); in general q = base + k, base = floor(w/s + z) − (2^(b−1) − 1),
  shifted to lie inside [qmin, qmax].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.core.grid import (ENCODINGS, MAX_BITS, binary_digits, check_bits, check_encoding, digit_weights,
    thermometer, WindowShape)
from qubo_nn.core.model import LocalModel

MODES = ("optimize", "quantize")
__all__ = ["ENCODINGS", "MAX_BITS", "MODES", "Encoding", "optimize_encoding", "quantize_encoding"]


@dataclass
class Encoding(WindowShape):
    """Grid of a block: ``idx`` (m,) flat weight indices, ``theta0`` (m,) current values,
    ``ref``, ``step``, ``offset`` (m,), ``bits`` (a window of 2^bits levels per weight) and
    ``kind`` (:data:`ENCODINGS`; n = m·width QUBO variables)."""

    idx: torch.Tensor
    theta0: torch.Tensor
    ref: torch.Tensor
    step: torch.Tensor
    offset: torch.Tensor
    bits: int
    mode: str = "optimize"
    info: dict = field(default_factory=dict)
    kind: str = "binary"

    def __post_init__(self) -> None:
        self.bits = int(self.bits)   # checked at the boundary (configs, :meth:`from_arrays`)
        self.kind = check_encoding(self.kind)
        m = self.idx.numel()
        for name in ("theta0", "ref", "step", "offset"):
            t = getattr(self, name)
            if t.shape != (m,):
                raise QuboNNError(f"encoding {name} must have shape ({m},), got {tuple(t.shape)}")
        if self.mode not in MODES:
            raise QuboNNError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def m(self) -> int:
        return int(self.idx.numel())

    @property
    def levels_per_weight(self) -> int:
        return 2 ** self.bits

    @property
    def powers(self) -> torch.Tensor:
        """Digit weights d (width,) of one weight's variables (:func:`qubo_nn.core.grid.digit_weights`)."""
        d = digit_weights(self.kind, self.levels_per_weight)
        return torch.as_tensor(d, dtype=self.step.dtype, device=self.step.device)

    @property
    def a(self) -> torch.Tensor:
        """Nonzeros of A, (m × width): a[i, j] = step_i · d_j."""
        return self.step[:, None] * self.powers[None, :]

    @property
    def c(self) -> torch.Tensor:
        """Constant part of Δ = A x + c: ref − step·offset − θ0, (m,)."""
        return self.ref - self.step * self.offset - self.theta0

    def A(self) -> torch.Tensor:
        """Dense A (m × m·width); for tests and small blocks."""
        A = torch.zeros(self.m, self.num_variables, dtype=self.step.dtype, device=self.step.device)
        rows = torch.arange(self.m, device=self.step.device).repeat_interleave(self.width)
        A[rows, torch.arange(self.num_variables, device=self.step.device)] = self.a.reshape(-1)
        return A

    def _x(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x), dtype=self.step.dtype, device=self.step.device)
        if x.shape[-1] != self.num_variables:
            raise QuboNNError(f"sample must have {self.num_variables} bits, got {x.shape[-1]}")
        return x

    def levels(self, x) -> torch.Tensor:
        """Integer k = Σ_j d_j x_ij per weight, shape (..., m)."""
        x = self._x(x)
        return (x.reshape(*x.shape[:-1], self.m, self.width) * self.powers).sum(-1)

    def delta(self, x) -> torch.Tensor:
        """Δ = A x + c, shape (..., m), evaluated as step·(k − offset) + (ref − θ0) so that the
        current point gives Δ = 0 exactly in optimize mode."""
        return self.step * (self.levels(x) - self.offset) + (self.ref - self.theta0)

    def decode(self, x) -> torch.Tensor:
        """New weight values w = ref + step·(k − offset), shape (..., m)."""
        return self.ref + self.step * (self.levels(x) - self.offset)

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Bits (m·bits,) of the grid point nearest to ``w`` (m,), clipped to the window."""
        w = torch.as_tensor(w, dtype=self.step.dtype, device=self.step.device)
        safe = torch.where(self.step != 0, self.step, torch.ones_like(self.step))
        k = torch.where(self.step != 0, torch.round((w - self.ref) / safe + self.offset), self.offset)
        k = k.clamp(0, 2 ** self.bits - 1).long()
        return torch.from_numpy(self.bits_of_levels(k.cpu().numpy())).to(k.device)

    def bits_of_levels(self, k) -> np.ndarray:
        """Variables (…, m·width) int8 of integer levels k (…, m) in [0, 2^bits − 1] (the code of
        ``kind``: binary digits, or the thermometer code for unary and domain-wall)."""
        k = np.asarray(k, dtype=np.int64)
        if k.shape[-1] != self.m or (k < 0).any() or (k > 2 ** self.bits - 1).any():
            raise QuboNNError(f"levels must have shape (..., {self.m}) with values in [0, {2 ** self.bits - 1}]")
        if self.kind == "binary":
            return binary_digits(k, self.width)
        return thermometer(k, self.width)

    def current_bits(self) -> torch.Tensor:
        """Bits of the current weights θ0 (exact in optimize mode, nearest level in quantize mode)."""
        return self.encode(self.theta0)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything decoding needs, as NumPy arrays (for sidecars)."""
        return {"idx": self.idx.cpu().numpy(), "theta0": self.theta0.cpu().numpy(),
                "ref": self.ref.cpu().numpy(), "step": self.step.cpu().numpy(),
                "offset": self.offset.cpu().numpy(), "bits": np.asarray(self.bits),
                "kind": np.asarray(self.kind),
                "A_values": self.a.cpu().numpy(), "c": self.c.cpu().numpy()}

    @classmethod
    def from_arrays(cls, arrs: dict[str, np.ndarray], mode: str = "optimize") -> "Encoding":
        """Inverse of :meth:`arrays`; files written before encodings had kinds are ``binary``."""
        t = {k: torch.from_numpy(np.asarray(arrs[k])) for k in ("theta0", "ref", "step", "offset")}
        kind = str(np.asarray(arrs["kind"])) if "kind" in arrs else "binary"
        bits = check_bits(int(arrs["bits"]))   # a file is a boundary
        return cls(idx=torch.from_numpy(np.asarray(arrs["idx"])).long(), bits=bits, mode=mode,
                   kind=kind, **t)


def optimize_encoding(model: LocalModel, bits: int = 4, window: float = 2.0, damping: float = 0.0,
                      step_rule: str = "curvature", step: float | None = None, kind: str = "binary") -> Encoding:
    """Window centred on the current weights (see module docstring for the step rule).

    ``step_rule='curvature'`` uses the diagonal Newton step |g_i|/(H_ii + damping);
    ``step_rule='fixed'`` uses the same ``step`` for every weight. ``bits`` is trusted (checked by
    the caller's config, :func:`qubo_nn.core.grid.check_bits`).
    """
    if window <= 0:
        raise QuboNNError(f"window must be > 0, got {window}")
    half = 2.0 ** (bits - 1)
    g, theta0 = model.g, model.theta0
    if step_rule == "curvature":
        hdiag = model.H.diagonal() + damping
        newton = torch.where(hdiag > 0, g.abs() / hdiag.clamp_min(1e-30), torch.zeros_like(g))
        s = window * newton / half
    elif step_rule == "fixed":
        if step is None or step <= 0:
            raise QuboNNError(f"step_rule 'fixed' needs step > 0, got {step}")
        s = torch.full_like(theta0, float(step))
    else:
        raise QuboNNError(f"step_rule must be 'curvature' or 'fixed', got {step_rule!r}")
    offset = torch.where(g > 0, torch.full_like(g, half), torch.full_like(g, half - 1))
    nz = s[s > 0]
    info = {"step_rule": step_rule, "window": window, "bits": bits,
            "step_min": float(nz.min()) if nz.numel() else 0.0,
            "step_median": float(nz.median()) if nz.numel() else 0.0,
            "step_max": float(s.max()), "frozen_weights": int((s == 0).sum())}
    return Encoding(idx=model.idx, theta0=theta0.clone(), ref=theta0.clone(), step=s, offset=offset,
                    bits=bits, mode="optimize", info=info, kind=kind)


def quantize_encoding(model: LocalModel, scale: torch.Tensor, qmin: int, qmax: int, bits: int = 1,
                      zero: torch.Tensor | None = None, kind: str = "binary") -> Encoding:
    """Fixed grid w = scale·(q − zero), q ∈ [qmin, qmax]; the bits choose q near θ0/scale + zero.

    ``scale`` and ``zero`` are per weight (m,) (expand a per-row grid over the block's weights).
    """
    theta0 = model.theta0
    scale = torch.as_tensor(scale, dtype=theta0.dtype, device=theta0.device).reshape(-1)
    if scale.shape != theta0.shape or not torch.isfinite(scale).all() or (scale <= 0).any():
        raise QuboNNError(f"scale must be positive and finite with shape {tuple(theta0.shape)}")
    zero = torch.zeros_like(theta0) if zero is None else torch.as_tensor(zero, dtype=theta0.dtype,
                                                                           device=theta0.device)
    span = 2 ** bits - 1
    if qmax - qmin < span:
        raise QuboNNError(f"a {bits}-bit window needs {span + 1} levels but the grid has {qmax - qmin + 1}")
    u = theta0 / scale + zero
    base = torch.floor(u) - (2 ** (bits - 1) - 1)
    base = base.clamp(qmin, qmax - span)
    # w = scale·(base + k − zero) = ref + step·(k − offset) with ref = 0, step = scale, offset = zero − base
    info = {"qmin": qmin, "qmax": qmax, "window_bits": bits}
    return Encoding(idx=model.idx, theta0=theta0.clone(), ref=torch.zeros_like(theta0), step=scale,
                    offset=zero - base, bits=bits, mode="quantize", info=info, kind=kind)
