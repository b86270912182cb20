"""Per-row b-bit grids of a weight matrix: integer codes, scale rules, round to nearest.

Every row r of a C × D weight view gets its own scale s_r; a quantized weight is s_r · q with an
integer q ∈ [qmin, qmax] = [−2^(b−1), 2^(b−1) − 1] (all 2^b codes of a signed b-bit integer, no
zero point: symmetric about 0 up to the one extra negative level). Scale rules (:data:`SCALE_RULES`):

- ``maxabs``: s_r = 2·max_d |W[r, d]| / (2^b − 1) (as torch's symmetric observers and GPTQ's
  ``sym`` quantizer): the clipping error at the positive end equals the worst rounding error.
- ``mse``: s_r = ρ·s_r^maxabs with the clipping ratio ρ ∈ [``mse_min_ratio``, 1] (``mse_grid``
  values) that minimises Σ_d (W[r, d] − s·clamp(round(W[r, d]/s)))², per row.

``bits`` is checked once by the caller's config (:func:`qubo_nn.core.grid.check_bits` with
:data:`~qubo_nn.core.grid.MAX_CODE_BITS`); these kernels trust it.
"""
from __future__ import annotations

import math

import torch

from qubo_nn.core.grid import MAX_CODE_BITS, check_bits, check_grid, nearest_level
from qubo_nn.errors import QuboNNError

SCALE_RULES = ("maxabs", "mse")


def check_grid_config(grid: str, bits: int, scale_rule: str) -> None:
    """The grid settings a quantize config shares (head and network): ``grid`` of
    :data:`~qubo_nn.core.grid.GRIDS` (binary/ternary: :mod:`qubo_nn.core.spins`, ``bits`` unused there),
    ``bits`` in [1, :data:`~qubo_nn.core.grid.MAX_CODE_BITS`] (int8 codes), ``scale_rule`` of
    :data:`SCALE_RULES`; QuboNNError otherwise."""
    check_grid(grid)
    check_bits(bits, MAX_CODE_BITS, "bits")
    if scale_rule not in SCALE_RULES:
        raise QuboNNError(f"scale rule must be one of {SCALE_RULES}, got {scale_rule!r}")


def qrange(bits: int) -> tuple[int, int]:
    """(qmin, qmax) = (−2^(b−1), 2^(b−1) − 1): the integer codes of a signed b-bit grid."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def round_to_grid(W: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes q = clamp(round(W/s), qmin, qmax) (floats, W's shape; ``scale`` (C,) per row)."""
    qmin, qmax = qrange(bits)
    return nearest_level(W, scale[:, None], qmin, qmax)


def grid_scale(W: torch.Tensor, bits: int, rule: str = "mse", mse_grid: int = 81,
               mse_min_ratio: float = 0.2) -> torch.Tensor:
    """Per-row scale s (C,) of W (C × D) for a b-bit grid by ``rule`` (see the module docstring).

    Rows that are all zero get s = 1 (every code 0 reproduces them exactly). One (C × D) pass per
    candidate ratio: memory stays O(C·D).
    """
    if rule not in SCALE_RULES:
        raise QuboNNError(f"scale rule must be one of {SCALE_RULES}, got {rule!r}")
    maxabs = W.abs().amax(1)
    base = torch.where(maxabs > 0, 2 * maxabs / (2 ** bits - 1), torch.ones_like(maxabs))
    if rule == "maxabs":
        return base
    if not 0 < mse_min_ratio <= 1 or mse_grid < 1:
        raise QuboNNError(f"mse search needs 0 < mse_min_ratio <= 1 and mse_grid >= 1, "
                          f"got {mse_min_ratio} and {mse_grid}")
    ratios = torch.linspace(1.0, mse_min_ratio, mse_grid, dtype=W.dtype, device=W.device)
    best_err = torch.full_like(maxabs, math.inf)
    best = base.clone()
    for r in ratios:
        s = r * base
        err = ((W - s[:, None] * round_to_grid(W, s, bits)) ** 2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best
