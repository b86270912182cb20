"""A head block's BQM from (LocalModel, Encoding), through the one QUBO builder (:func:`core.problem.bit_qubo`)."""
from __future__ import annotations

import dimod
import numpy as np
import torch

from qubo_nn.core.encoding import Encoding
from qubo_nn.core.head import Head
from qubo_nn.core.layout import unflatten
from qubo_nn.core.model import LocalModel
from qubo_nn.core.grid import digit_weights
from qubo_nn.core.problem import (
    IntegerForm,
    IntegerProblem,
    bit_qubo,
    domain_wall_penalty,
    newton_target,
)
from qubo_nn.errors import QuboNNError

DEFAULT_MAX_QUBO_BYTES = 4 * 2**30


_NP_DTYPES = {"float32": np.float32, "float64": np.float64}


def qubo_bytes(num_variables: int, itemsize: int = 8) -> int:
    """Predicted peak bytes of one dense block: the n×n array, plus dimod's adjacency, which
    stores every interaction twice (value + index ≈ 16 bytes per direction)."""
    n = int(num_variables)
    return n * n * (itemsize + 16)


def check_fits(num_variables: int, itemsize: int = 8, max_bytes: int = DEFAULT_MAX_QUBO_BYTES) -> None:
    """Refuse, before allocating, a dense QUBO whose predicted size exceeds ``max_bytes``."""
    need = qubo_bytes(num_variables, itemsize)
    if need > max_bytes:
        raise QuboNNError(
            f"a dense QUBO of {num_variables} variables needs about {need / 2**30:.1f} GiB, over the limit of "
            f"{max_bytes / 2**30:.1f} GiB: use smaller blocks (fewer classes/weights per block) or fewer bits")


def qubo_arrays(model: LocalModel, enc: Encoding, damping: float = 0.0,
                dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """The block's QUBO arrays (Q symmetric with zero diagonal (n × n), linear (n,), offset) from
    :func:`qubo_nn.core.problem.bit_qubo`, in ``dtype`` (default: the model's):
    E(x) = Σ_i lin_i x_i + Σ_{i<j} 2·Q_ij x_i x_j + offset = the predicted loss of Δ = A x + c.

    With H̃ = H + μI: the gradient at x = 0 is g + H̃c and the offset L0 + gᵀc + ½cᵀH̃c (computed on
    the model's device); the domain-wall penalty (if any) is the median s_i² H̃_ii in float64.
    """
    if not damping >= 0:
        raise QuboNNError(f"damping must be >= 0, got {damping}")
    if not torch.equal(model.idx.cpu(), enc.idx.cpu()):
        raise QuboNNError("encoding and local model describe different blocks")
    H = model.H.to(dtype or model.H.dtype, copy=True)
    H.diagonal().add_(damping)
    c = enc.c.to(H)
    Hc = H @ c
    grad = model.g.to(H) + Hc
    offset = model.L0 + float(model.g.to(H) @ c) + 0.5 * float(c @ Hc)
    penalty = None
    if enc.kind == "domain-wall":
        hdiag = (model.H.diagonal().double() + damping).cpu().numpy()
        penalty = domain_wall_penalty(enc.step.double().cpu().numpy(), hdiag)
    return bit_qubo(H.cpu().numpy(), grad.cpu().numpy(), offset, enc.step.to(H).cpu().numpy(),
                    digit_weights(enc.kind, enc.levels_per_weight), enc.kind, penalty)


def build_bqm(model: LocalModel, enc: Encoding, damping: float = 0.0, dtype: str = "float64",
              max_bytes: int = DEFAULT_MAX_QUBO_BYTES) -> dimod.BinaryQuadraticModel:
    """The block's QUBO as a BINARY BQM over variables 0..n−1 (variable j of weight i is i·width + j).

    One dense NumPy array (:func:`qubo_arrays`) crosses into dimod in one call; energy(x) == predicted
    loss. The arithmetic runs in the BQM's dtype (a float32 model gives a float64 BQM without a second copy).
    """
    if dtype not in _NP_DTYPES:
        raise QuboNNError(f"BQM dtype must be one of {sorted(_NP_DTYPES)}, got {dtype!r}")
    np_dtype = _NP_DTYPES[dtype]
    check_fits(enc.num_variables, np.dtype(np_dtype).itemsize, max_bytes)
    Q, lin, offset = qubo_arrays(model, enc, damping, torch.float64 if np_dtype is np.float64 else torch.float32)
    bqm = dimod.BinaryQuadraticModel("BINARY", dtype=np_dtype)
    bqm.add_linear_from_array(lin)
    bqm.add_quadratic_from_dense(Q)
    bqm.offset = offset
    return bqm


def predicted_loss(model: LocalModel, enc: Encoding, x, damping: float = 0.0) -> np.ndarray:
    """Predicted loss of samples x ((n,) or (S, n)) straight from the local model (no BQM)."""
    delta = enc.delta(x).to(model.H)
    return model.predict(delta, damping).detach().cpu().numpy()


def apply(head: Head, enc: Encoding, x) -> Head:
    """A new head whose block ``enc.idx`` holds the decoded weights of sample ``x`` (n,)."""
    C, D = head.num_classes, head.dim
    theta = torch.cat([head.W, head.b[:, None]], 1).reshape(-1).clone()
    theta[enc.idx.to(theta.device)] = enc.decode(x).to(theta)
    return unflatten(theta, C, D)


def integer_form(model: LocalModel, enc: Encoding, damping: float = 0.0) -> IntegerForm:
    """The block's energy as an :class:`IntegerProblem` over the levels its encoding chooses.

    With H̃ = H + μI (PD), t = θ0 − H̃⁻¹g and w = ref + step·(k − offset) = s·k + (ref − s·offset):
    E(k) = L0 − ½gᵀH̃⁻¹g + ½(w − t)ᵀH̃(w − t), k ∈ [0, 2^bits − 1]; equal to ``build_bqm``'s energy
    of the bits of k (to rounding). Frozen weights (step 0) get scale 1 and kmin = kmax = offset.
    """
    if not torch.equal(model.idx.cpu(), enc.idx.cpu()):
        raise QuboNNError("encoding and local model describe different blocks")
    H = model.H.double().cpu().numpy().copy()
    H[np.diag_indices_from(H)] += damping
    g = model.g.double().cpu().numpy()
    theta0 = model.theta0.double().cpu().numpy()
    newton, drop = newton_target(H, g, theta0)
    step = enc.step.double().cpu().numpy()
    ref = enc.ref.double().cpu().numpy()
    off = enc.offset.double().cpu().numpy()
    frozen = step == 0
    scale = np.where(frozen, 1.0, step)
    top = 2 ** enc.bits - 1
    kmin = np.where(frozen, np.clip(np.round(off), 0, top), 0).astype(np.int64)
    kmax = np.where(frozen, kmin, top).astype(np.int64)
    target = newton - (ref - scale * off)
    problem = IntegerProblem(H, target, scale, kmin, kmax, const=float(model.L0) - drop)
    return IntegerForm(problem, enc.kind, enc.bits)
