"""One suite instance: its BQM, the integer problem behind it (when there is one), its metadata."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import dimod
import numpy as np

from qubo_nn.core.grid import digit_weights, levels_of
from qubo_nn.core.problem import IntegerForm, IntegerProblem, window_qubo


@dataclass
class SuiteInstance:
    """A named BQM (variables 0..n-1, BINARY) with its metadata.

    ``problem`` (optional): the integer problem E(k) = const + ½(s∘k − t)ᵀH(s∘k − t), k ∈ [0, levels−1],
    that the BQM encodes with ``kind`` digits (``levels`` per weight): bqm.energy(x) = E(k(x)) (+ the
    domain-wall penalty, zero on thermometer codes).
    """

    name: str
    family: str
    bqm: dimod.BinaryQuadraticModel
    meta: dict[str, Any] = field(default_factory=dict)
    problem: IntegerProblem | None = None
    kind: str | None = None
    levels: int | None = None

    @property
    def num_variables(self) -> int:
        return self.bqm.num_variables

    def to_levels(self, x: np.ndarray) -> np.ndarray:
        return levels_of(np.asarray(x), np.zeros(self.problem.m, dtype=np.int64), self.kind, self.levels)

    def to_bits(self, k: np.ndarray) -> np.ndarray:
        from qubo_nn.core.grid import bits_of
        return bits_of(np.asarray(k), np.zeros(self.problem.m, dtype=np.int64), self.kind, self.levels)

    def integer_form(self) -> IntegerForm | None:
        """The :class:`IntegerForm` the level samplers (gptq, cd, pipeline) take; None when the
        instance has no integer problem or its level count is not a power of two (ternary)."""
        if self.problem is None or self.levels & (self.levels - 1):
            return None
        return IntegerForm(self.problem, self.kind, int(self.levels).bit_length() - 1)


def problem_bqm(p: IntegerProblem, kind: str, levels: int) -> dimod.BinaryQuadraticModel:
    """The whole box [0, levels−1] of ``p`` as a BQM over variables 0..m·width−1 (dense, one call)."""
    if (p.kmin != 0).any() or (p.kmax != levels - 1).any():
        raise ValueError("problem_bqm expects kmin = 0 and kmax = levels - 1")
    Q, lin, offset, _ = window_qubo(p, np.zeros(p.m, dtype=np.int64), kind, levels)
    bqm = dimod.BinaryQuadraticModel("BINARY")
    bqm.add_linear_from_array(lin)
    bqm.add_quadratic_from_dense(Q)
    bqm.offset = float(offset)
    return bqm


def width_of(kind: str, levels: int) -> int:
    return int(digit_weights(kind, levels).size)


def bqm_digest(bqm: dimod.BinaryQuadraticModel) -> str:
    """sha256 of the BQM's content (labels 0..n−1, float64 linear, sorted (i<j) quadratic, offset):
    independent of the file format and of dimod's file version."""
    n = bqm.num_variables
    lin, (r, c, q), off = bqm.to_numpy_vectors(variable_order=range(n))
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    order = np.lexsort((hi, lo))
    h = hashlib.sha256()
    for a in (np.asarray([n], np.int64), lin.astype(np.float64), lo[order].astype(np.int64),
              hi[order].astype(np.int64), q[order].astype(np.float64), np.asarray([off], np.float64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: random 0/1 samples whose energies fingerprint a BQM (seed 0)
FINGERPRINT_SAMPLES = 4
#: two regenerations agree when every fingerprint energy agrees to this share of the largest one
FINGERPRINT_RTOL = 1e-4


def bqm_fingerprint(bqm: dimod.BinaryQuadraticModel) -> dict[str, Any]:
    """What survives floating-point round-off of a regeneration (the digest does not: BLAS results
    depend on the CPU's instruction set and the thread count): n, the number of couplers and the
    energies of :data:`FINGERPRINT_SAMPLES` seeded random 0/1 samples; with the digest of the content
    they were computed on (a regeneration bit-identical to that one is identical, not just close)."""
    n = bqm.num_variables
    X = np.random.default_rng(0).integers(0, 2, size=(FINGERPRINT_SAMPLES, n), dtype=np.int8)
    return {"num_variables": n, "num_interactions": bqm.num_interactions,
            "energies": [float(e) for e in bqm.energies((X, range(n)))], "content_digest": bqm_digest(bqm)}


def fingerprint_distance(a: dict, b: dict) -> float:
    """max |ΔE| over the fingerprint samples / the largest |E| (∞ when n or the coupler count differ)."""
    if (a["num_variables"], a["num_interactions"]) != (b["num_variables"], b["num_interactions"]):
        return float("inf")
    ea, eb = np.asarray(a["energies"]), np.asarray(b["energies"])
    scale = max(float(np.abs(ea).max(initial=0.0)), 1e-300)
    return float(np.abs(ea - eb).max(initial=0.0) / scale)


def pack_bits(x: np.ndarray) -> str:
    """A 0/1 sample as a hex string (np.packbits, big-endian bit order); inverse :func:`unpack_bits`."""
    return np.packbits(np.asarray(x, dtype=np.uint8)).tobytes().hex()


def unpack_bits(s: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(s), dtype=np.uint8))[:n].astype(np.int8)
