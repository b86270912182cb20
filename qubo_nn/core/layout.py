"""Row views of weight tensors, column-group plans, and the one ``apply`` that writes levels.

Layout. Any weight tensor of shape (R, …) is viewed as an R × D matrix, D = numel / R, by
``tensor.reshape(R, -1)`` (row r = output channel r; for a conv the column index is
(c_in, i, j) row-major). Entry (r, d) of the view is the flat index r·D + d of the tensor.

Levels. A quantized entry is ``scale[r] · k`` with an integer level k; :func:`apply_levels`
writes levels of any set of (row, column) entries back into a copy of the tensor.

Plan. A row too long for one integer problem is cut into column groups: ``order`` is a
permutation of the D columns (identity, or GPTQ's act-order: descending diag H), and groups are
consecutive runs of ``group_size`` positions in that order. All rows of a layer share the plan
(they share the Gram H).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qubo_nn.core.head import Head
from qubo_nn.errors import QuboNNError


def row_view(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (R, …) as an R × D matrix (a view when contiguous)."""
    if tensor.ndim < 1 or tensor.shape[0] == 0:
        raise QuboNNError(f"expected a tensor with at least one row, got shape {tuple(tensor.shape)}")
    return tensor.reshape(tensor.shape[0], -1)


def apply_levels(tensor: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor,
                 rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``tensor`` whose entries (rows[i], cols[j]) of the row view are scale[rows[i]]·levels[i, j].

    ``rows`` (n,) and ``cols`` (m,) default to all rows / all columns; ``levels`` is n × m
    (integers, any dtype), ``scale`` (R,) per row of the whole tensor.
    """
    view = row_view(tensor).clone()
    R, D = view.shape
    rows = torch.arange(R) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    cols = torch.arange(D) if cols is None else torch.as_tensor(cols, dtype=torch.long)
    levels = torch.as_tensor(levels)
    if tuple(levels.shape) != (len(rows), len(cols)):
        raise QuboNNError(f"expected levels of shape {(len(rows), len(cols))}, got {tuple(levels.shape)}")
    if tuple(scale.shape) != (R,):
        raise QuboNNError(f"expected one scale per row ({R},), got {tuple(scale.shape)}")
    if torch.is_floating_point(levels) and not torch.equal(levels, torch.round(levels)):
        raise QuboNNError("expected integer levels, got non-integer values")
    values = scale.to(view.dtype)[rows, None] * levels.to(view.dtype)
    view[rows[:, None], cols[None, :]] = values
    return view.reshape(tensor.shape)


@dataclass(frozen=True)
class BlockPlan:
    """Column order and groups of a layer: group g = columns ``order[starts[g]:starts[g+1]]``."""

    order: np.ndarray          # (D,) permutation of the columns
    starts: tuple[int, ...]    # group boundaries in ``order``, 0 = starts[0] < … < starts[-1] = D

    @property
    def num_groups(self) -> int:
        return len(self.starts) - 1

    def group(self, g: int) -> np.ndarray:
        """Column indices (in the row view) of group ``g``, in solve order."""
        return self.order[self.starts[g]:self.starts[g + 1]]


def column_plan(dim: int, group_size: int, diag: np.ndarray | torch.Tensor | None = None) -> BlockPlan:
    """Groups of at most ``group_size`` consecutive columns (in descending ``diag`` order when given:
    act-order; stable, so ties keep the natural order). Groups are balanced: ⌈D/group_size⌉ groups
    whose sizes differ by at most one."""
    if not isinstance(group_size, int) or group_size < 1:
        raise QuboNNError(f"group_size must be a positive integer, got {group_size!r}")
    if diag is None:
        order = np.arange(dim)
    else:
        d = np.asarray(diag.cpu() if isinstance(diag, torch.Tensor) else diag, dtype=np.float64)
        if d.shape != (dim,):
            raise QuboNNError(f"expected diag of shape ({dim},), got {d.shape}")
        order = np.argsort(-d, kind="stable")
    n = -(-dim // group_size)
    starts = tuple(int(round(i * dim / n)) for i in range(n + 1))
    return BlockPlan(order=order, starts=starts)


def flat_params(head: Head) -> torch.Tensor:
    """θ = [W | b] flattened row-major, shape (C·(D+1),)."""
    return torch.cat([head.W, head.b[:, None]], dim=1).reshape(-1)


def unflatten(theta: torch.Tensor, num_classes: int, dim: int) -> Head:
    """Inverse of :func:`flat_params`."""
    if theta.numel() != num_classes * (dim + 1):
        raise QuboNNError(f"θ must have C·(D+1) = {num_classes * (dim + 1)} entries, got {theta.numel()}")
    M = theta.reshape(num_classes, dim + 1)
    return Head(M[:, :dim].clone(), M[:, dim].clone())
