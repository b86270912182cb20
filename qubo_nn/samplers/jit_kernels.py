"""Compiled (numba) CPU kernels of the batched annealer and of batched coordinate descent.

Measured on the 2-core CPU (``benchmarks/bench_annealer.py``): the torch kernel of
:func:`qubo_nn.samplers.batch_anneal.anneal_batch` pays ~10 small tensor operations per variable
visit, so on the CPU its cost is interpreter overhead, not arithmetic. These kernels run the same
algorithm chain by chain in compiled loops:

- :func:`anneal_levels` is :func:`~qubo_nn.samplers.batch_anneal.anneal_batch` move for move: the
  same counter-based random numbers (splitmix64 of the chain key and the (sweep, variable)
  counter), the same Metropolis test ``ΔE < −ln(u)/β`` and the same forced moves at the box's
  edges. Where every number is exact (integer A and g) its levels equal the torch kernel's; in
  general they agree to the last ulp of a field update.
- :func:`coordinate_descent_batch` is :func:`qubo_nn.core.kernels.coordinate_descent` (steepest single
  move, then the best pair move (±1, ±1), until neither lowers E) on many states at once, in the
  general form E(k) = c + gᵀk + ½kᵀAk.

Both release the GIL (``nogil``), so executor threads run them in parallel. numba is optional:
:data:`AVAILABLE` is False without it and callers fall back to torch / NumPy.
"""
from __future__ import annotations

import numpy as np

try:  # numba is an optional accelerator: without it the torch / NumPy kernels run
    import numba
    from numba import njit
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "anneal_levels", "temper_levels", "coordinate_descent_batch"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)
_TWO53 = 2.0 ** -53

if AVAILABLE:
    @njit(cache=True, nogil=True, inline="always")
    def _uniform(key, counter):
        z = key + (counter + _ONE) * _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        z = z ^ (z >> _S31)
        return (float(z >> _S11) + 0.5) * _TWO53

    @njit(cache=True, nogil=True)
    def _sweep(Ab, gb, lo_b, hi_b, k, f, beta, key, t):
        """One Metropolis sweep of one chain (levels k, fields f = g + Ak, both updated); accepted moves."""
        m = k.shape[0]
        base = np.uint64(t) << np.uint64(21)
        acc = 0
        for i in range(m):
            lo = lo_b[i]
            hi = hi_b[i]
            if hi <= lo:
                continue
            if k[i] >= hi:
                d = -1.0
            elif k[i] <= lo:
                d = 1.0
            elif _uniform(key, base + np.uint64(m + i)) < 0.5:
                d = 1.0
            else:
                d = -1.0
            dE = d * f[i] + 0.5 * Ab[i, i]
            thr = -np.log(_uniform(key, base + np.uint64(i))) / beta
            if dE < thr:
                k[i] += d
                for j in range(m):
                    f[j] += d * Ab[i, j]
                acc += 1
        return acc

    @njit(cache=True, nogil=True)
    def _start(Ab, gb, k0, k, f):
        """k ← k0, f ← g + Ak; returns E(k) − c = ½kᵀ(f + g)."""
        m = k.shape[0]
        for i in range(m):
            k[i] = k0[i]
        e = 0.0
        for i in range(m):
            s = gb[i]
            for j in range(m):
                s += Ab[i, j] * k[j]
            f[i] = s
        for i in range(m):
            e += k[i] * (f[i] + gb[i])
        return 0.5 * e

    @njit(cache=True, nogil=True)
    def _level(k, f, gb):
        e = 0.0
        for i in range(k.shape[0]):
            e += k[i] * (f[i] + gb[i])
        return 0.5 * e

    @njit(cache=True, nogil=True)
    def _anneal(A, g, kmin, kmax, k0, betas, keys, k_out, kbest_out, ebest_out, acc_out):
        B, R, m = k0.shape
        T = betas.shape[1]
        k = np.empty(m)
        f = np.empty(m)
        for b in range(B):
            for r in range(R):
                e0 = _start(A[b], g[b], k0[b, r], k, f)
                e_best = 0.0
                for i in range(m):
                    kbest_out[b, r, i] = np.int64(k[i])
                key = np.uint64(keys[b, r])
                acc = 0
                for t in range(T):
                    acc += _sweep(A[b], g[b], kmin[b], kmax[b], k, f, betas[b, t], key, t)
                    e = _level(k, f, g[b]) - e0
                    if e < e_best:
                        e_best = e
                        for i in range(m):
                            kbest_out[b, r, i] = np.int64(k[i])
                for i in range(m):
                    k_out[b, r, i] = np.int64(k[i])
                ebest_out[b, r] = e_best
                acc_out[b, r] = acc

    @njit(cache=True, nogil=True)
    def _temper(A, g, kmin, kmax, k0, ladder, T, keys, k_out, kbest_out, ebest_out, acc_out):
        """Parallel tempering: slot r of problem b sweeps at β = ladder[b, r] with key keys[b, r]; after
        sweep t the pairs (r, r+1) with r ≡ t (mod 2) swap states with probability
        min(1, exp((β_r − β_{r+1})(E_r − E_{r+1}))) (uniform: key of slot r, counter (t << 21) + 2m).
        k_out/kbest_out: the final and best states of each slot (the best over the states it held)."""
        B, R, m = k0.shape
        K = np.empty((R, m))
        F = np.empty((R, m))
        E = np.empty(R)
        for b in range(B):
            e0 = np.empty(R)
            for r in range(R):
                E[r] = _start(A[b], g[b], k0[b, r], K[r], F[r])
                e0[r] = E[r]
                ebest_out[b, r] = 0.0
                for i in range(m):
                    kbest_out[b, r, i] = k0[b, r, i]
                acc_out[b, r] = 0
            for t in range(T):
                for r in range(R):
                    acc_out[b, r] += _sweep(A[b], g[b], kmin[b], kmax[b], K[r], F[r], ladder[b, r],
                                            np.uint64(keys[b, r]), t)
                    E[r] = _level(K[r], F[r], g[b])
                    if E[r] - e0[r] < ebest_out[b, r]:
                        ebest_out[b, r] = E[r] - e0[r]
                        for i in range(m):
                            kbest_out[b, r, i] = np.int64(K[r, i])
                base = (np.uint64(t) << np.uint64(21)) + np.uint64(2 * m)
                for r in range(t % 2, R - 1, 2):
                    x = (ladder[b, r] - ladder[b, r + 1]) * (E[r] - E[r + 1])
                    if x >= 0.0 or _uniform(np.uint64(keys[b, r]), base) < np.exp(x):
                        for i in range(m):
                            tmp = K[r, i]
                            K[r, i] = K[r + 1, i]
                            K[r + 1, i] = tmp
                            tmp = F[r, i]
                            F[r, i] = F[r + 1, i]
                            F[r + 1, i] = tmp
                        tmp = E[r]
                        E[r] = E[r + 1]
                        E[r + 1] = tmp
            for r in range(R):
                for i in range(m):
                    k_out[b, r, i] = np.int64(K[r, i])

    @njit(cache=True, nogil=True)
    def _cd(A, g, kmin, kmax, K, owner, pairs, max_steps, moves):
        N, m = K.shape
        gk = np.empty(m)
        hk = np.empty(m)
        hs = np.empty(m)
        for n in range(N):
            b = owner[n]
            hmax = 0.0
            for i in range(m):
                s = g[b, i]
                for j in range(m):
                    s += A[b, i, j] * K[n, j]
                gk[i] = s
                hk[i] = A[b, i, i]
                hs[i] = hk[i] if hk[i] > 0 else 1.0
                if hk[i] > hmax:
                    hmax = hk[i]
            eps = 1e-13 * max(hmax, 1e-300)
            singles = 0
            pmoves = 0
            for _ in range(max_steps):
                best = np.inf
                bi = -1
                bd = 0.0
                for i in range(m):
                    delta = np.rint(-gk[i] / hs[i])
                    dlo = kmin[b, i] - K[n, i]
                    dhi = kmax[b, i] - K[n, i]
                    if delta < dlo:
                        delta = float(dlo)
                    if delta > dhi:
                        delta = float(dhi)
                    gain = gk[i] * delta + 0.5 * hk[i] * delta * delta
                    if gain < best:
                        best = gain
                        bi = i
                        bd = delta
                if best < -eps:
                    K[n, bi] += np.int64(bd)
                    for j in range(m):
                        gk[j] += A[b, j, bi] * bd
                    singles += 1
                    continue
                if not pairs or m < 2:
                    break
                pbest = -eps
                pi = -1
                pj = -1
                pdi = 0
                pdj = 0
                for di in (-1, 1):
                    for dj in (-1, 1):
                        for i in range(m):
                            if K[n, i] + di < kmin[b, i] or K[n, i] + di > kmax[b, i]:
                                continue
                            ai = di * gk[i] + 0.5 * hk[i]
                            for j in range(m):
                                if j == i or K[n, j] + dj < kmin[b, j] or K[n, j] + dj > kmax[b, j]:
                                    continue
                                G = ai + (dj * gk[j] + 0.5 * hk[j]) + di * dj * A[b, i, j]
                                if G < pbest:
                                    pbest = G
                                    pi = i
                                    pj = j
                                    pdi = di
                                    pdj = dj
                if pi < 0:
                    break
                K[n, pi] += pdi
                K[n, pj] += pdj
                for j in range(m):
                    gk[j] += A[b, j, pi] * pdi + A[b, j, pj] * pdj
                pmoves += 1
            moves[n, 0] = singles
            moves[n, 1] = pmoves


def _f64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


def _i64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


def anneal_levels(A, g, kmin, kmax, k0, betas, keys) -> dict[str, np.ndarray]:
    """:func:`~qubo_nn.samplers.batch_anneal.anneal_batch` compiled, on NumPy arrays of the same shapes
    (A B×m×m, g B×m, kmin/kmax B×m, k0 B×R×m, betas B×T, keys B×R int64). Returns {"k", "k_best",
    "e_best", "accepted"} as that function (no "field")."""
    k0, out = _chain_outputs(k0)
    _anneal(_f64(A), _f64(g), _i64(kmin), _i64(kmax), k0, _f64(betas), _i64(keys), *out.values())
    return out


def _chain_outputs(k0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """k0 as int64 and the kernels' output arrays {"k", "k_best", "e_best", "accepted"} (B × R [× m])."""
    if not AVAILABLE:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    k0 = _i64(k0)
    B, R, m = k0.shape
    return k0, {"k": np.empty((B, R, m), dtype=np.int64), "k_best": np.empty((B, R, m), dtype=np.int64),
                "e_best": np.empty((B, R)), "accepted": np.empty((B, R), dtype=np.int64)}


def temper_levels(A, g, kmin, kmax, k0, ladder, num_sweeps: int, keys) -> dict[str, np.ndarray]:
    """Parallel tempering on NumPy arrays: slot r of problem b at the fixed β ``ladder[b, r]`` (B × R),
    ``num_sweeps`` sweeps, swaps of neighbouring slots between sweeps (see ``_temper``); the moves within
    a sweep are :func:`anneal_levels`'s. Returns {"k", "k_best", "e_best" (relative to the slot's start),
    "accepted"} per slot."""
    k0, out = _chain_outputs(k0)
    _temper(_f64(A), _f64(g), _i64(kmin), _i64(kmax), k0, _f64(ladder), int(num_sweeps), _i64(keys), *out.values())
    return out


def coordinate_descent_batch(A, g, kmin, kmax, K, owner=None, pairs: bool = True, max_steps: int | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate descent (single moves, then pair moves) from each row of ``K`` (N × m) on problem
    ``owner[n]`` (default n) of the stacked general forms A (B × m × m), g, kmin, kmax (B × m).
    Returns (levels N × m int64, moves N × 2: single and pair moves made). ``max_steps`` defaults to
    :func:`~qubo_nn.core.kernels.coordinate_descent`'s 50·m + 1000."""
    if not AVAILABLE:  # pragma: no cover
        raise RuntimeError("numba is not installed")
    K = np.array(K, dtype=np.int64, order="C")     # a copy: updated in place
    N, m = K.shape
    owner = np.arange(N, dtype=np.int64) if owner is None else _i64(owner)
    steps = 50 * m + 1000 if max_steps is None else int(max_steps)
    moves = np.zeros((N, 2), dtype=np.int64)
    if N:
        _cd(_f64(A), _f64(g), _i64(kmin), _i64(kmax), K, owner, bool(pairs), steps, moves)
    return K, moves
