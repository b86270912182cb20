"""Helpers every sampler module shares: seeds, vartype views, energies, JSON-safe info.

Kept free of any particular algorithm so each sampler module stays a thin wrapper.
"""
from __future__ import annotations

from numbers import Integral
from typing import Any

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import SEED_BOUND, to_jsonable

#: Seeds are drawn from and checked against [0, 2**31): the narrowest range any wrapped
#: sampler accepts (dwave-neal refuses 2**31 and above).


def check_seed(seed: Any) -> int:
    """Return ``seed`` as an int in [0, 2**31), or raise :class:`QuboNNError`."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= int(seed) < SEED_BOUND:
        raise QuboNNError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    return int(seed)


def draw_seed() -> int:
    """A fresh seed from OS entropy, so that an unseeded run can still be repeated."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0] % SEED_BOUND)


def as_binary(bqm: dimod.BinaryQuadraticModel) -> dimod.BinaryQuadraticModel:
    """``bqm`` itself when BINARY, else a BINARY copy (same energies)."""
    if bqm.vartype is dimod.BINARY:
        return bqm
    return bqm.change_vartype(dimod.BINARY, inplace=False)


def ising_fields(bqm: dimod.BinaryQuadraticModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Ising biases of ``bqm`` and each spin's typical field, vectorized over the interactions.

    Returns ``(rms, h, row, col, J)``: rms_i = sqrt(h_i² + Σ_j J_ij²) (n,), the typical
    |local field| of spin i at a random state (a flip costs 2·|field|); h (n,) and the
    interactions (row, col, J) of the Ising form, in ``bqm.variables`` order. For a BINARY model
    h_i = a_i/2 + Σ_j b_ij/4 and J_ij = b_ij/4.
    """
    n = bqm.num_variables
    lin, (row, col, quad), _ = bqm.to_numpy_vectors()
    lin = np.asarray(lin, dtype=np.float64)
    quad = np.asarray(quad, dtype=np.float64)
    if bqm.vartype is dimod.BINARY:
        J = quad / 4.0
        h = lin / 2.0 + np.bincount(row, J, n) + np.bincount(col, J, n)
    else:
        J, h = quad, lin
    j2 = J * J
    rms = np.sqrt(h * h + np.bincount(row, j2, n) + np.bincount(col, j2, n))
    return rms, h, row, col, J


def samples_array(samples_like: Any, bqm: dimod.BinaryQuadraticModel, what: str = "initial_states"
                  ) -> tuple[np.ndarray, list]:
    """Validate samples given as a SampleSet, an (S × n) / (n,) array in ``bqm.variables`` order,
    or a dimod samples-like; return ``(int8 array S × n, labels)`` in ``bqm``'s vartype."""
    variables = list(bqm.variables)
    n = len(variables)
    if isinstance(samples_like, dimod.SampleSet):
        if set(samples_like.variables) != set(variables):
            raise QuboNNError(f"{what} must have the BQM's {n} variables, got a SampleSet over "
                              f"{len(samples_like.variables)} variables")
        arr = dimod.as_samples(samples_like)[0]
        order = [samples_like.variables.index(v) for v in variables]
        arr = np.asarray(arr)[:, order]
        if samples_like.vartype is not bqm.vartype:
            arr = (arr + 1) // 2 if bqm.vartype is dimod.BINARY else 2 * arr - 1
    elif isinstance(samples_like, tuple) and len(samples_like) == 2 and not np.isscalar(samples_like[1]):
        arr, labels = dimod.as_samples(samples_like)
        if set(labels) != set(variables) or len(labels) != n:
            raise QuboNNError(f"{what} must be labelled with the BQM's {n} variables, got {len(labels)} labels")
        order = [list(labels).index(v) for v in variables]
        arr = np.asarray(arr)[:, order]
    else:
        try:
            arr = np.asarray(samples_like)
        except Exception as exc:  # ragged lists
            raise QuboNNError(f"{what} must be an array of shape (S, {n}) or ({n},), got {type(samples_like).__name__}"
                              ) from exc
        shape = arr.shape
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != n:
            raise QuboNNError(f"{what} must be an array of shape (S, {n}) or ({n},), got shape {shape}")
    allowed = (0, 1) if bqm.vartype is dimod.BINARY else (-1, 1)
    if arr.size and not np.isin(arr, allowed).all():
        raise QuboNNError(f"{what} must hold only {allowed[0]}/{allowed[1]} values for a "
                          f"{bqm.vartype.name} model, got values {np.unique(arr)[:5].tolist()}")
    return np.ascontiguousarray(arr, dtype=np.int8), variables


def rescore(sampleset: dimod.SampleSet, bqm: dimod.BinaryQuadraticModel) -> tuple[dimod.SampleSet, float]:
    """The same samples with energies recomputed by ``bqm.energies``, lowest energy first, and
    the largest difference between the sampler's own energies and dimod's (per sample).

    Extra per-sample vectors (num_occurrences, num_steps, ...) follow their samples; the info
    is copied.
    """
    if sampleset.vartype is not bqm.vartype:
        sampleset = sampleset.change_vartype(bqm.vartype, inplace=False)
    variables = list(sampleset.variables)
    samples = sampleset.record.sample
    if len(variables):
        energies = np.asarray(bqm.energies((samples, variables)), dtype=np.float64)
    else:
        energies = np.full(len(sampleset), float(bqm.offset))
    error = float(np.max(np.abs(energies - sampleset.record.energy), initial=0.0))
    order = np.argsort(energies, kind="stable")
    vectors = {k: sampleset.record[k][order] for k in sampleset.record.dtype.names
               if k not in ("sample", "energy")}
    out = dimod.SampleSet.from_samples((samples[order], variables), vartype=bqm.vartype, energy=energies[order],
                                       info=dict(sampleset.info), **vectors)
    return out, error


#: sampler info and parameters as plain JSON types: the project's one sanitizer (NaN/±Inf -> None)
jsonable = to_jsonable
