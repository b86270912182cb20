"""QUBO of a block: the local quadratic model over the encoded bits, as a dimod BQM.

With Δ = A x + c and H̃ = H + μI (μ: damping, a trust region), the predicted loss is

    E(x) = L0 + gᵀ(Ax + c) + ½ (Ax + c)ᵀ H̃ (Ax + c)
         = ½ xᵀ M x + (Aᵀ(g + H̃c))ᵀ x + L0 + gᵀc + ½ cᵀH̃c,      M = AᵀH̃A,

and since x_i² = x_i the diagonal ½M_ii joins the linear term. The offset is stored in the
BQM, so the BQM energy of any sample IS the predicted loss (nats per sample).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import dimod
import numpy as np
import torch
from tqdm.auto import tqdm

from .encoding import Encoding, optimize_encoding
from .errors import QuboNNError
from .featureset import FeatureSet
from .head import Head
from .levels import (IntegerForm, IntegerProblem, add_domain_wall, check_bits, check_encoding, domain_wall_penalty,
                     solve_pd)
from .quadratic import HeadStats, LocalModel, select_blocks, unflatten

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
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Q (n × n) with the linear term on its diagonal, linear (n,), offset) such that
    E(x) = Σ_i Q_ii x_i + Σ_{i<j} (Q_ij + Q_ji) x_i x_j + offset, computed on the model's device
    in ``dtype`` (default: the model's)."""
    if not damping >= 0:
        raise QuboNNError(f"damping must be >= 0, got {damping}")
    if not torch.equal(model.idx.cpu(), enc.idx.cpu()):
        raise QuboNNError("encoding and local model describe different blocks")
    H = model.H.to(dtype or model.H.dtype, copy=True)
    H.diagonal().add_(damping)
    a = enc.a.to(H)  # (m, b)
    c = enc.c.to(H)
    m, b = a.shape
    n = m * b
    Hc = H @ c
    lin = (a * (model.g.to(H) + Hc)[:, None]).reshape(n)
    # ½ M with M[(i,j),(k,l)] = a_ij H_ik a_kl
    Q = ((0.5 * a)[:, :, None, None] * H[:, None, :, None] * a[None, None, :, :]).reshape(n, n)
    Q.diagonal().add_(lin)
    offset = model.L0 + float(model.g.to(H) @ c) + 0.5 * float(c @ Hc)
    return Q, lin, offset


def build_bqm(model: LocalModel, enc: Encoding, damping: float = 0.0, dtype: str = "float64",
              max_bytes: int = DEFAULT_MAX_QUBO_BYTES) -> dimod.BinaryQuadraticModel:
    """The block's QUBO as a BINARY BQM over variables 0..n−1 (bit j of weight i is i·bits + j).

    One dense NumPy array crosses into dimod in one call; energy(x) == predicted loss. The
    arithmetic runs in the BQM's dtype (a float32 model gives a float64 BQM without a second copy).
    """
    if dtype not in _NP_DTYPES:
        raise QuboNNError(f"BQM dtype must be one of {sorted(_NP_DTYPES)}, got {dtype!r}")
    np_dtype = _NP_DTYPES[dtype]
    check_fits(enc.num_variables, np.dtype(np_dtype).itemsize, max_bytes)
    Q, _, offset = qubo_arrays(model, enc, damping, torch.float64 if np_dtype is np.float64 else torch.float32)
    lin = Q.diagonal().detach().cpu().numpy().copy()
    Q.diagonal().zero_()   # dimod's constructor would copy the whole matrix to zero the diagonal
    Qn = Q.detach().cpu().numpy()
    if enc.kind == "domain-wall":
        hdiag = (model.H.diagonal().double() + damping).cpu().numpy()
        add_domain_wall(Qn, lin, enc.m, enc.width, domain_wall_penalty(enc.step.double().cpu().numpy(), hdiag))
    bqm = dimod.BinaryQuadraticModel("BINARY", dtype=np_dtype)
    bqm.add_linear_from_array(lin)
    bqm.add_quadratic_from_dense(Qn)
    bqm.offset = offset
    return bqm


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
    Hinv_g = solve_pd(H, g)
    step = enc.step.double().cpu().numpy()
    ref = enc.ref.double().cpu().numpy()
    off = enc.offset.double().cpu().numpy()
    frozen = step == 0
    scale = np.where(frozen, 1.0, step)
    top = 2 ** enc.bits - 1
    kmin = np.where(frozen, np.clip(np.round(off), 0, top), 0).astype(np.int64)
    kmax = np.where(frozen, kmin, top).astype(np.int64)
    target = theta0 - Hinv_g - (ref - scale * off)
    problem = IntegerProblem(H, target, scale, kmin, kmax, const=float(model.L0) - 0.5 * float(g @ Hinv_g))
    return IntegerForm(problem, enc.kind, enc.bits)


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


@dataclass
class BuildConfig:
    """How a head becomes QUBOs. ``damping`` μ = damping_abs + damping_rel · mean(diag H)."""

    blocks: str = "rows"
    per_block: int = 1
    size: int | None = None
    num_blocks: int | None = None
    saliency: str = "grad"
    bits: int = 4
    encoding: str = "binary"
    window: float = 2.0
    step_rule: str = "curvature"
    step: float | None = None
    damping_rel: float = 0.1
    damping_abs: float = 0.0
    l2: float = 0.0
    subsample: int | None = None
    dtype: str = "float32"
    bqm_dtype: str = "float64"
    device: str = "auto"
    chunk: int = 16384
    seed: int = 0
    max_qubo_bytes: int = DEFAULT_MAX_QUBO_BYTES

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Refuse bad settings up front (before any Hessian pass), saying what was expected."""
        from .quadratic import BLOCK_KINDS, SALIENCIES

        if self.blocks not in BLOCK_KINDS:
            raise QuboNNError(f"block kind must be one of {BLOCK_KINDS}, got {self.blocks!r}")
        if self.saliency not in SALIENCIES:
            raise QuboNNError(f"saliency must be one of {SALIENCIES}, got {self.saliency!r}")
        check_bits(self.bits)
        check_encoding(self.encoding)
        for name in ("per_block", "chunk"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise QuboNNError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("size", "num_blocks", "subsample"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise QuboNNError(f"{name} must be None or an integer >= 1, got {v!r}")
        if self.blocks in ("topk", "random") and self.size is None:
            raise QuboNNError(f"block kind {self.blocks!r} needs size >= 1 (weights per block), got None")
        if not np.isfinite(self.window) or self.window <= 0:
            raise QuboNNError(f"window must be > 0, got {self.window}")
        if self.step_rule not in ("curvature", "fixed"):
            raise QuboNNError(f"step_rule must be 'curvature' or 'fixed', got {self.step_rule!r}")
        if self.step_rule == "fixed" and (self.step is None or not self.step > 0):
            raise QuboNNError(f"step_rule 'fixed' needs step > 0, got {self.step}")
        for name in ("damping_rel", "damping_abs", "l2"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise QuboNNError(f"{name} must be finite and >= 0, got {v}")
        if self.dtype not in _NP_DTYPES:
            raise QuboNNError(f"dtype must be one of {sorted(_NP_DTYPES)}, got {self.dtype!r}")
        if self.bqm_dtype not in _NP_DTYPES:
            raise QuboNNError(f"BQM dtype must be one of {sorted(_NP_DTYPES)}, got {self.bqm_dtype!r}")
        if not self.max_qubo_bytes > 0:
            raise QuboNNError(f"max_qubo_bytes must be > 0, got {self.max_qubo_bytes}")


@dataclass
class BlockQUBO:
    """One block's local model, encoding and BQM, with the time each stage took (s)."""

    block_id: int
    model: LocalModel
    enc: Encoding
    bqm: dimod.BinaryQuadraticModel
    damping: float
    timings: dict = field(default_factory=dict)


def damping_for(model: LocalModel, cfg: BuildConfig) -> float:
    return float(cfg.damping_abs + cfg.damping_rel * float(model.H.diagonal().mean()))


def make_block_qubo(stats: HeadStats, idx: torch.Tensor, cfg: BuildConfig, block_id: int = 0) -> BlockQUBO:
    """Local model → encoding (optimize mode) → BQM for one block at the head in ``stats``."""
    t0 = time.perf_counter()
    model = stats.block(idx)
    if stats.device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    mu = damping_for(model, cfg)
    enc = optimize_encoding(model, cfg.bits, cfg.window, mu, cfg.step_rule, cfg.step, kind=cfg.encoding)
    bqm = build_bqm(model, enc, mu, cfg.bqm_dtype, cfg.max_qubo_bytes)
    t2 = time.perf_counter()
    return BlockQUBO(block_id, model, enc, bqm, mu, {"hessian_s": t1 - t0, "qubo_s": t2 - t1})


def plan_blocks(stats: HeadStats, cfg: BuildConfig) -> list[torch.Tensor]:
    """The block index sets for ``cfg`` at the head in ``stats``, checked against the memory limit."""
    need_diag = cfg.blocks == "topk" and cfg.saliency == "obd"
    blocks = select_blocks(cfg.blocks, stats.C, stats.D, per_block=cfg.per_block, size=cfg.size,
                           num_blocks=cfg.num_blocks, grad=stats.grad,
                           diag=stats.hessian_diag() if need_diag else None,
                           saliency=cfg.saliency, seed=cfg.seed)
    itemsize = np.dtype(_NP_DTYPES.get(cfg.bqm_dtype, np.float64)).itemsize
    per = cfg.bits if cfg.encoding == "binary" else 2 ** cfg.bits - 1
    check_fits(max(b.numel() for b in blocks) * per, itemsize, cfg.max_qubo_bytes)
    return blocks


def iter_block_qubos(head: Head, feats: FeatureSet, cfg: BuildConfig, progress: bool = False) -> Iterator[BlockQUBO]:
    """Stream the QUBOs of every block of ``head`` (all at the same head), one at a time.

    Settings are checked, and the largest block's QUBO is checked against ``cfg.max_qubo_bytes``,
    before the first Hessian pass.
    """
    cfg.validate()
    stats = HeadStats(head, feats, cfg.l2, cfg.device, cfg.dtype, cfg.chunk, cfg.subsample, cfg.seed)
    blocks = plan_blocks(stats, cfg)
    for k, idx in enumerate(tqdm(blocks, desc="build", unit="block", disable=not progress)):
        yield make_block_qubo(stats, idx, cfg, k)
