"""batch-anneal: a batched simulated annealer over integer levels (and over spins of any BQM), in torch.

The kernel works on B problems of m variables at once, each in the general quadratic form

    E(k) = c + gᵀk + ½ kᵀAk,   k integer in [kmin, kmax] (A symmetric),

with R chains (reads) per problem. An :class:`~qubo_nn.core.problem.IntegerProblem`
½(s∘k − t)ᵀH(s∘k − t) is A = diag(s) H diag(s), g = −s∘(Ht); a BINARY BQM is A = the couplings
(both triangles, zero diagonal), g = the linear biases, k ∈ {0, 1}.

One sweep visits the variables in index order; a move on variable i is one level up or down (a
random direction, forced at the box's edges), its energy change is δ f_i + ½ A_ii δ² from the
local field f = g + Ak, and the Metropolis test is done for all B·R chains at once. An accepted
move updates f with one row of A (O(m) per chain). Each chain keeps its best state (checked at
the end of every sweep).

Random numbers are counter-based (splitmix64 of a per-chain key and the (sweep, variable)
counter), so a chain's stream depends only on its problem's seed and its read index: the same
seed gives the same levels whatever the batch size, order or grouping of the problems. On CUDA
the integer hashing is exact; only the float64 ``exp`` of the acceptance test may differ from
the CPU's by an ulp, so a move decision can differ where u lands within ~1e-16 of exp(−βΔE).

β schedules are geometric, one per problem, from the problem's own energy scale
(:func:`beta_range_excess` for a refinement around a good start: the start's excess over the
relaxed minimum; :func:`beta_range_levels` from the curvature, for starts far from the optimum;
:func:`beta_range_bqm` for random starts on bits, like neal's default).
"""
from __future__ import annotations

import math
import time
from typing import Any

import dimod
import numpy as np
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import resolve_device

__all__ = ["anneal_batch", "temper_batch", "uniforms", "chain_keys", "beta_range_levels", "beta_range_excess", "beta_range_bqm", "geometric_betas",
           "problem_arrays", "BatchAnnealSampler"]

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_M1 = 0xBF58476D1CE4E5B9 - 2**64
_M2 = 0x94D049BB133111EB - 2**64


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors (multiplication wraps modulo 2⁶⁴)."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def chain_keys(seeds: torch.Tensor, reads: int) -> torch.Tensor:
    """Keys (B × R) int64 of the chains of problems with ``seeds`` (B,), R = ``reads`` each."""
    r = torch.arange(reads, dtype=torch.int64, device=seeds.device)
    return _mix(_mix(seeds.to(torch.int64)[:, None] * 0x10001 + _GOLDEN) + r[None, :] * _GOLDEN)


def uniforms(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in (0, 1), one per (key, counter) pair (broadcast): splitmix64 of
    key + (counter + 1)·φ, top 53 bits. Pure integer arithmetic: identical on every device."""
    z = _mix(keys + (counters.to(torch.int64) + 1) * _GOLDEN)
    return (_srl(z, 11).to(torch.float64) + 0.5) * 2.0 ** -53


def problem_arrays(problems, device="cpu") -> dict[str, torch.Tensor]:
    """Stacked general-form tensors of IntegerProblems of one size m: A (B × m × m), g (B × m),
    kmin, kmax (B × m) int64, c (B,) with E(k) = c + gᵀk + ½kᵀAk = problem.energy(k)."""
    H = np.stack([p.H for p in problems])
    s = np.stack([p.scale for p in problems])
    t = np.stack([p.target for p in problems])
    A = s[:, :, None] * H * s[:, None, :]
    Ht = np.einsum("bij,bj->bi", H, t)
    g = -s * Ht
    c = np.array([p.const for p in problems]) + 0.5 * np.einsum("bi,bi->b", t, Ht)
    dev = torch.device(device)
    return {"A": torch.as_tensor(A, device=dev), "g": torch.as_tensor(g, device=dev),
            "kmin": torch.as_tensor(np.stack([p.kmin for p in problems]), device=dev),
            "kmax": torch.as_tensor(np.stack([p.kmax for p in problems]), device=dev),
            "c": torch.as_tensor(c, device=dev)}


def beta_range_levels(A: torch.Tensor, span: float = 30.0) -> torch.Tensor:
    """(B × 2) [β_hot, β_cold] for a refinement around a good start: β_cold = ln 100 / d with d the
    median unit-step curvature ½A_ii of the problem (an uphill step of that size is accepted 1 % of
    the time at the end), β_hot = β_cold / ``span``."""
    d = 0.5 * torch.diagonal(A, dim1=1, dim2=2).abs()
    d = torch.where(d > 0, d, torch.full_like(d, float("nan"))).nanmedian(dim=1).values
    d = torch.where(torch.isfinite(d) & (d > 0), d, torch.ones_like(d))
    cold = math.log(100.0) / d
    return torch.stack([cold / span, cold], dim=1)


def beta_range_excess(excess: torch.Tensor, hot: float = 0.3, span: float = 30.0) -> torch.Tensor:
    """(B × 2) [β_hot, β_cold] for a refinement around a start whose energy lies ``excess`` (B,) above the
    problem's relaxed minimum: at β_hot an uphill move of ``hot``·excess is accepted with probability ½,
    β_cold = ``span``·β_hot. Measured on W2 layer groups (bench_annealer): a curvature scale (½A_ii) or
    the start's cheapest move costs anneal far too hot (chains end 5–12× above the start); this scale
    keeps the chains near the start's basin (≈ 2× its excess) where polished states beat it."""
    x = torch.where(excess > 0, excess, torch.ones_like(excess))
    b = math.log(2.0) / (hot * x)
    return torch.stack([b, span * b], dim=1)


def beta_range_bqm(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B × 2) [β_hot, β_cold] for binary variables from random starts (neal's default rule, vectorized):
    the largest single-flip change max_i |g_i| + Σ_j|A_ij| is accepted with probability ½ at β_hot,
    the smallest nonzero bias with probability 1 % at β_cold."""
    big = (g.abs() + A.abs().sum(dim=2)).amax(dim=1)
    allb = torch.cat([g.abs(), A.abs().flatten(1)], dim=1)
    inf = torch.full_like(allb, math.inf)
    small = torch.where(allb > 0, allb, inf).amin(dim=1)
    big = torch.where(big > 0, big, torch.ones_like(big))
    small = torch.where(torch.isfinite(small), small, big)
    hot, cold = math.log(2.0) / big, math.log(100.0) / small
    return torch.stack([torch.minimum(hot, cold), cold], dim=1)


def geometric_betas(beta_range: torch.Tensor, num_sweeps: int) -> torch.Tensor:
    """(B × T) geometric schedules from each problem's [β_hot, β_cold]."""
    t = torch.linspace(0.0, 1.0, num_sweeps, dtype=torch.float64, device=beta_range.device)
    if num_sweeps == 1:
        t = torch.ones(1, dtype=torch.float64, device=beta_range.device)
    lo, hi = beta_range[:, :1].log(), beta_range[:, 1:].log()
    return (lo + (hi - lo) * t[None, :]).exp()


def anneal_batch(A: torch.Tensor, g: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, k0: torch.Tensor,
                 betas: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metropolis sweeps over integer levels for B problems × R chains (the kernel; trusts its input).

    Args:
        A (B × m × m) symmetric, g (B × m) float64: E(k) = c + gᵀk + ½kᵀAk.
        kmin, kmax (B × m) int64 box; k0 (B × R × m) int64 starting levels inside it.
        betas (B × T): one inverse temperature per problem and sweep.
        keys (B × R) int64: the chains' random keys (:func:`chain_keys`).
    Returns:
        {"k": final levels (B × R × m), "k_best": best levels seen at a sweep's end (B × R × m),
        "e_best": their energy minus E(k0) (B × R), "field": final f = g + Ak (B × R × m),
        "accepted": accepted moves per chain (B × R)}.
    """
    B, R, m = k0.shape
    T = betas.shape[1]
    dt = A.dtype
    k = k0.to(dt).clone()
    lo, hi = kmin.to(dt)[:, None, :], kmax.to(dt)[:, None, :]
    f = g[:, None, :] + torch.einsum("bij,brj->bri", A, k)
    half = 0.5 * torch.diagonal(A, dim1=1, dim2=2)[:, None, :]    # B × 1 × m
    free = (hi > lo).to(dt)                                       # fixed variables never move
    rows = A.unsqueeze(1)                                         # B × 1 × m × m: row i is A[:, None, i, :]
    e_best = torch.zeros(B, R, dtype=dt, device=A.device)
    e0 = 0.5 * (k * (f + g[:, None, :])).sum(-1)                  # E(k) − c = ½ kᵀ(f + g)
    k_best = k.clone()
    acc_n = torch.zeros(B, R, dtype=dt, device=A.device)
    cnt = torch.arange(2 * m, dtype=torch.int64, device=A.device)
    kk = keys[:, :, None]
    one = torch.ones((), dtype=dt, device=A.device)
    for t in range(T):
        acc_n += _torch_sweep(k, f, rows, half, lo, hi, free, kk, cnt, t, betas[:, t, None, None], one)
        e = 0.5 * (k * (f + g[:, None, :])).sum(-1) - e0
        better = e < e_best
        e_best = torch.where(better, e, e_best)
        k_best = torch.where(better[:, :, None], k, k_best)
    return {"k": k.to(torch.int64), "k_best": k_best.to(torch.int64), "e_best": e_best, "field": f,
            "accepted": acc_n.to(torch.int64)}


def _torch_sweep(k, f, rows, half, lo, hi, free, kk, cnt, t: int, beta, one) -> torch.Tensor:
    """One Metropolis sweep of all chains in place (k, f: B × R × m); ``beta`` broadcasts to B × R × 1.
    Returns the accepted moves per chain (B × R)."""
    m = k.shape[2]
    U = uniforms(kk, cnt + (t << 21))                  # B × R × 2m: [accept | direction]
    # accept iff β·ΔE < −ln u  ⇔  ΔE < thr (thr > 0, so every downhill move is taken)
    thr = -torch.log(U[:, :, :m]) / beta
    direction = torch.where(U[:, :, m:] < 0.5, one, -one) * free
    acc = torch.zeros(k.shape[:2], dtype=k.dtype, device=k.device)
    for i in range(m):
        ki = k[:, :, i]
        d = torch.where(ki >= hi[:, :, i], -free[:, :, i], torch.where(ki <= lo[:, :, i], free[:, :, i],
                                                                       direction[:, :, i]))
        dE = d * f[:, :, i] + half[:, :, i]
        d = d * (dE < thr[:, :, i])
        ki += d
        f.addcmul_(d[:, :, None], rows[:, :, i, :])
        acc += d.abs()
    return acc


def temper_batch(A: torch.Tensor, g: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, k0: torch.Tensor,
                 ladder: torch.Tensor, num_sweeps: int, keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parallel tempering (torch; the compiled twin is :func:`jit_kernels.temper_levels`, move for move):
    slot r of problem b sweeps at the fixed β ``ladder[b, r]`` (B × R, increasing in r) with the chain key
    ``keys[b, r]``; after sweep t, neighbouring slots (r, r+1) with r ≡ t (mod 2) swap their states with
    probability min(1, exp((β_r − β_{r+1})(E_r − E_{r+1}))) (uniform: slot r's key, counter (t << 21) + 2m).
    Returns {"k", "k_best", "e_best", "accepted"} per slot, as :func:`anneal_batch`."""
    B, R, m = k0.shape
    dt = A.dtype
    k = k0.to(dt).clone()
    lo, hi = kmin.to(dt)[:, None, :], kmax.to(dt)[:, None, :]
    f = g[:, None, :] + torch.einsum("bij,brj->bri", A, k)
    half = 0.5 * torch.diagonal(A, dim1=1, dim2=2)[:, None, :]
    free = (hi > lo).to(dt)
    rows = A.unsqueeze(1)
    E = 0.5 * (k * (f + g[:, None, :])).sum(-1)
    e0 = E.clone()
    e_best = torch.zeros(B, R, dtype=dt, device=A.device)
    k_best = k.clone()
    acc_n = torch.zeros(B, R, dtype=dt, device=A.device)
    cnt = torch.arange(2 * m, dtype=torch.int64, device=A.device)
    kk = keys[:, :, None]
    one = torch.ones((), dtype=dt, device=A.device)
    beta = ladder[:, :, None]
    for t in range(num_sweeps):
        acc_n += _torch_sweep(k, f, rows, half, lo, hi, free, kk, cnt, t, beta, one)
        E = 0.5 * (k * (f + g[:, None, :])).sum(-1)
        better = E - e0 < e_best
        e_best = torch.where(better, E - e0, e_best)
        k_best = torch.where(better[:, :, None], k, k_best)
        r = torch.arange(t % 2, R - 1, 2, device=A.device)
        if len(r):
            x = (ladder[:, r] - ladder[:, r + 1]) * (E[:, r] - E[:, r + 1])
            u = uniforms(keys[:, r], torch.full_like(r, (t << 21) + 2 * m))
            swap = (x >= 0) | (u < torch.exp(torch.clamp(x, max=0.0)))           # B × pairs
            perm = torch.arange(R, device=A.device).expand(B, R).clone()
            perm[:, r] = torch.where(swap, r + 1, r)
            perm[:, r + 1] = torch.where(swap, r, r + 1)
            k = torch.gather(k, 1, perm[:, :, None].expand(-1, -1, m))
            f = torch.gather(f, 1, perm[:, :, None].expand(-1, -1, m))
            E = torch.gather(E, 1, perm)
    return {"k": k.to(torch.int64), "k_best": k_best.to(torch.int64), "e_best": e_best, "accepted": acc_n.to(torch.int64)}


class BatchAnnealSampler(dimod.Sampler):
    """Batched simulated annealing over spins/bits of any BQM (the level kernel with levels {0, 1}).

    The BQM is made dense (A: n × n float64), so it suits problems up to a few thousand variables.
    ``num_reads`` chains run at once (vectorized); ``seed`` gives each chain its own counter-based
    random stream; ``beta_range`` [hot, cold] overrides the default (neal's rule, vectorized);
    ``initial_states`` (S × n) start the chains (cycled over the reads), else uniformly random
    starts; ``device`` "cpu", "cuda", "auto".
    """

    PARAMETER_NAMES = ("num_reads", "num_sweeps", "seed", "beta_range", "initial_states", "device")
    parameters = {name: [] for name in PARAMETER_NAMES}
    properties = {"description": "batched Metropolis sweeps over levels {0,1}, torch, counter-based RNG"}

    def sample(self, bqm: dimod.BinaryQuadraticModel, num_reads: int = 10, num_sweeps: int = 1000,
               seed: int | None = None, beta_range=None, initial_states=None, device: str = "cpu",
               **_: Any) -> dimod.SampleSet:
        t0 = time.perf_counter()
        num_reads, num_sweeps = int(num_reads), int(num_sweeps)
        if num_reads < 1 or num_sweeps < 1:
            raise QuboNNError(f"num_reads and num_sweeps must be >= 1, got {num_reads} and {num_sweeps}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] % 2**31)
        labels = list(bqm.variables)
        n = len(labels)
        if n == 0:
            return dimod.SampleSet.from_samples_bqm((np.empty((num_reads, 0), dtype=np.int8), []), bqm,
                                                    info={"seed": seed})
        b = bqm.change_vartype("BINARY", inplace=False) if bqm.vartype is dimod.SPIN else bqm
        lin, (row, col, q), _off = b.to_numpy_vectors(variable_order=labels)
        A = np.zeros((n, n))
        np.add.at(A, (row, col), q)
        np.add.at(A, (col, row), q)
        dev = resolve_device(device)
        At = torch.as_tensor(A, device=dev)[None]
        gt = torch.as_tensor(np.asarray(lin, dtype=np.float64), device=dev)[None]
        if beta_range is None:
            br = beta_range_bqm(At, gt)
        else:
            br = torch.as_tensor(np.asarray(beta_range, dtype=np.float64).reshape(1, 2), device=dev)
            if not (br > 0).all():
                raise QuboNNError(f"beta_range must be two positive numbers [hot, cold], got {beta_range!r}")
        keys = chain_keys(torch.tensor([int(seed)], device=dev), num_reads)
        if initial_states is not None:
            arr, init_labels = initial_states if isinstance(initial_states, tuple) else (initial_states, labels)
            arr = np.atleast_2d(np.asarray(arr))
            arr = arr[:, [list(init_labels).index(v) for v in labels]]
            if bqm.vartype is dimod.SPIN:
                arr = (arr > 0).astype(np.int64)
            x0 = np.resize(arr, (num_reads, n)).astype(np.int64)
        else:
            x0 = (uniforms(keys[0][:, None], torch.arange(n, device=dev) + (1 << 60)) < 0.5).cpu().numpy()
        zeros = torch.zeros(1, n, dtype=torch.int64, device=dev)
        k0 = torch.as_tensor(x0, dtype=torch.int64, device=dev)[None]
        betas = geometric_betas(br, num_sweeps)
        from qubo_nn.samplers import jit_kernels

        if jit_kernels.AVAILABLE and dev.type == "cpu":   # the compiled kernel: the same moves, ~10-50x faster
            out = jit_kernels.anneal_levels(A[None], np.asarray(lin, dtype=np.float64)[None], zeros.numpy(),
                                            zeros.numpy() + 1, k0.numpy(), betas.numpy(), keys.numpy())
            X = out["k_best"][0]
        else:
            out = anneal_batch(At, gt, zeros, zeros + 1, k0, betas, keys)
            X = out["k_best"][0].cpu().numpy()
        if bqm.vartype is dimod.SPIN:
            X = 2 * X - 1
        info = {"seed": int(seed), "beta_range": br[0].tolist(), "num_sweeps": num_sweeps,
                "wall_time_s": time.perf_counter() - t0}
        return dimod.SampleSet.from_samples_bqm((X.astype(np.int8), labels), bqm, info=info)
