"""Grids and encodings of integer levels: the one bits check, digit weights, level <-> bits."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from qubo_nn.errors import QuboNNError

ENCODINGS = ("binary", "unary", "domain-wall")
#: weight grids: ``signed`` w = s·k, k a b-bit signed integer (the default); ``binary`` w = α·s, s ∈ {−1, +1};
#: ``ternary`` w = α·t, t ∈ {−1, 0, +1} (per-row α)
GRIDS = ("signed", "binary", "ternary")


def check_grid(grid: Any) -> str:
    """``grid`` if it names a grid of :data:`GRIDS`, else QuboNNError."""
    if grid not in GRIDS:
        raise QuboNNError(f"grid must be one of {GRIDS}, got {grid!r}")
    return str(grid)


#: the two limits of ``bits``, one per meaning: a quantized grid's codes are stored as int8
#: (``bits`` of head/network quantization ≤ 8); an encoding window of 2^bits levels per weight
#: (``bits`` of a build, ``window_bits``) ≤ 16 (unary: 65,535 variables per weight already).
MAX_CODE_BITS = 8
MAX_WINDOW_BITS = 16
MAX_BITS = MAX_WINDOW_BITS


def check_bits(bits: Any, max_bits: int = MAX_WINDOW_BITS, what: str = "bits per weight") -> int:
    """``bits`` as an int in [1, max_bits], else QuboNNError: the one bits check of the project, made
    once at the configuration boundary (configs' ``validate``, files read back); kernels trust it."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= max_bits:
        raise QuboNNError(f"{what} must be an integer in [1, {max_bits}], got {bits!r}")
    return int(bits)


def check_encoding(kind: Any) -> str:
    if kind not in ENCODINGS:
        raise QuboNNError(f"encoding must be one of {ENCODINGS}, got {kind!r}")
    return str(kind)


def digit_weights(kind: str, levels: int) -> np.ndarray:
    """Digit weights d (width,) of one weight's window of ``levels`` levels (see module docstring)."""
    kind = check_encoding(kind)
    if levels < 2:
        raise QuboNNError(f"a window needs at least 2 levels, got {levels}")
    if kind == "binary":
        width = int(math.ceil(math.log2(levels)))
        if 2 ** width != levels:
            raise QuboNNError(f"a binary encoding needs a power-of-two number of levels, got {levels}")
        return 2.0 ** np.arange(width)
    return np.ones(levels - 1)


def variables_per_weight(kind: str, bits: int) -> int:
    """QUBO variables per weight of a window of 2^bits levels: ``bits`` (binary), 2^bits − 1 (unary,
    domain-wall: one per step); the one width rule (``Encoding.width``, ``IntegerForm.width``, builds)."""
    return int(bits) if kind == "binary" else 2 ** int(bits) - 1


class WindowShape:
    """The size of an encoding of ``m`` weights in windows of 2^``bits`` levels in ``kind``'s bits: shared by
    :class:`~qubo_nn.core.encoding.Encoding` and :class:`~qubo_nn.core.problem.IntegerForm` (which give
    ``m``, ``bits``, ``kind``)."""

    m: int
    bits: int
    kind: str

    @property
    def width(self) -> int:
        """QUBO variables per weight (:func:`variables_per_weight`)."""
        return variables_per_weight(self.kind, self.bits)

    @property
    def num_variables(self) -> int:
        return self.m * self.width


def nearest_level(x, scale, lo, hi):
    """Round to nearest on a grid: clamp(round(x/s), lo, hi) (half to even), for NumPy arrays and torch
    tensors alike (floats out, same type as ``x``): the one round-to-nearest of the project."""
    return (x / scale).round().clip(lo, hi)


def thermometer(k: np.ndarray, width: int) -> np.ndarray:
    """Unary bits (…, m·width) of levels k (…, m) in [0, width]: x_ij = [j < k_i]."""
    k = np.asarray(k)
    x = (np.arange(width) < k[..., None]).astype(np.int8)
    return x.reshape(*k.shape[:-1], -1)


def binary_digits(k: np.ndarray, width: int) -> np.ndarray:
    k = np.asarray(k).astype(np.int64)
    x = ((k[..., None] >> np.arange(width)) & 1).astype(np.int8)
    return x.reshape(*k.shape[:-1], -1)




def bits_of(k: np.ndarray, base: np.ndarray, kind: str, levels: int) -> np.ndarray:
    """Bits (…, m·width) of levels k inside the windows starting at ``base``."""
    rel = np.asarray(k) - base
    width = digit_weights(kind, levels).size
    return binary_digits(rel, width) if kind == "binary" else thermometer(rel, width)


def levels_of(x: np.ndarray, base: np.ndarray, kind: str, levels: int) -> np.ndarray:
    d = digit_weights(kind, levels)
    x = np.asarray(x)
    return base + (x.reshape(*x.shape[:-1], base.size, d.size) * d).sum(-1).astype(np.int64)
