"""``sb``: simulated bifurcation (the simulated-bifurcation PyTorch package), on the GPU when present.

The package minimizes xᵀQx + lᵀx + c summed over ALL i, j, so the BQM goes in as an
upper-triangular Q holding each interaction once (zero diagonal) and the linear biases as l:
nothing is counted twice. It draws its initial oscillators from torch's global generator;
this wrapper seeds that generator inside :func:`torch.random.fork_rng` (the caller's torch
random state is left as it was) under a lock, so concurrent threads cannot interleave draws.
Its samples are polished with steepest descent and re-scored by dimod.
"""
from __future__ import annotations

import threading
import time
import warnings

import dimod
import numpy as np
from dwave.samplers import SteepestDescentSolver

from qubo_nn.samplers.base import as_binary

_TORCH_RNG_LOCK = threading.Lock()
MODES = ("ballistic", "discrete")


class SBSampler(dimod.Sampler):
    """Simulated bifurcation (Goto et al.), ``num_reads`` agents run in parallel as one tensor.

    Parameters: ``num_reads`` (agents, default 128), ``mode`` ("discrete" by default: the
    ballistic variant can return all-zero states on PSD models), ``heated``, ``max_steps``,
    ``early_stopping``, ``sampling_period``, ``convergence_threshold`` (the package's),
    ``time_limit`` (seconds, the package's ``timeout``), ``device`` ("auto": CUDA when present),
    ``dtype`` ("float32"), ``seed``.

    Every agent's state is polished by steepest descent. ``info["sb"]`` records the best energy
    before polishing and how many agents ended in a trivial state (all 0 or all 1); when every
    agent did, a warning says so: the answer is then steepest descent from a trivial state, not SB.
    """

    parameters = None
    properties = None

    def __init__(self) -> None:
        self.parameters = {"num_reads": [], "mode": ["modes"], "heated": [], "max_steps": [],
                           "early_stopping": [], "sampling_period": [], "convergence_threshold": [],
                           "time_limit": [], "device": [], "dtype": [], "seed": []}
        self.properties = {"modes": MODES}

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, num_reads: int = 128, mode: str = "discrete",
               heated: bool = False, max_steps: int = 10_000, early_stopping: bool = True,
               sampling_period: int = 50, convergence_threshold: int = 50, time_limit: float | None = None,
               device: str = "auto", dtype: str = "float32", seed: int | None = None) -> dimod.SampleSet:
        import simulated_bifurcation as sb  # torch and the package load only when SB runs
        import torch

        from qubo_nn.runtime import resolve_device, resolve_dtype

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(num_reads, bool) or int(num_reads) != num_reads or num_reads < 1:
            raise ValueError(f"num_reads must be a positive integer, got {num_reads!r}")
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
        dev = resolve_device(device)
        tdtype = resolve_dtype(dtype)
        if bqm.num_variables == 0:
            return dimod.SampleSet.from_samples(([], []), vartype=bqm.vartype, energy=[])

        binary = as_binary(bqm)
        labels = list(binary.variables)
        n = len(labels)
        Q, ell, offset = _tensors(binary, dev, tdtype)

        t0 = time.perf_counter()
        # torch's thread count is the caller's (the CLI's) to set, never this sampler's: it is
        # process-wide and this runs on worker threads. On CPU, small models run far faster on
        # one torch thread (30x measured at n = 48 on 2 busy cores): run the CLI with --threads 1.
        with _TORCH_RNG_LOCK, torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(int(seed))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                X, _ = sb.minimize(Q, ell, float(offset), domain="binary", dtype=tdtype, device=dev,
                                   agents=int(num_reads), max_steps=int(max_steps), best_only=False,
                                   mode=mode, heated=bool(heated), verbose=False,
                                   early_stopping=bool(early_stopping), sampling_period=int(sampling_period),
                                   convergence_threshold=int(convergence_threshold), timeout=time_limit)
        converged = True
        for w in caught:  # "no agent converged" goes to info; anything else is re-raised as a warning
            if type(w.message).__name__ == "ConvergenceWarning":
                converged = False
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()

        raw = np.ascontiguousarray(X.detach().to("cpu").numpy().reshape(-1, n).round(), dtype=np.int8)
        out = _polished(binary, raw, labels, mode, {"agents": int(num_reads), "device": str(dev), "dtype": str(tdtype),
                                                    "converged": converged}, t1 - t0)
        if bqm.vartype is not dimod.BINARY:
            out = out.change_vartype(bqm.vartype, inplace=False)
        return out


def _tensors(binary: dimod.BinaryQuadraticModel, dev, tdtype):
    """(upper-triangular Q (n × n), linear l (n,), offset) of a BINARY model on ``dev``."""
    import torch

    n = binary.num_variables
    lin, (row, col, quad), offset = binary.to_numpy_vectors()
    Q = torch.zeros(n, n, dtype=tdtype, device=dev)
    if len(quad):
        Q[torch.as_tensor(row, device=dev), torch.as_tensor(col, device=dev)] = torch.as_tensor(
            quad, dtype=tdtype, device=dev)
    return Q, torch.as_tensor(lin, dtype=tdtype, device=dev), float(offset)


def _polished(binary: dimod.BinaryQuadraticModel, raw: np.ndarray, labels: list, mode: str, sb_info: dict,
              sampling_s: float) -> dimod.SampleSet:
    """The agents' states polished by steepest descent, with ``info["sb"]`` and the timings."""
    t1 = time.perf_counter()
    raw_energy = binary.energies((raw, labels))
    trivial = int(((raw == 0).all(axis=1) | (raw == 1).all(axis=1)).sum())
    polished = SteepestDescentSolver().sample(binary, initial_states=(raw, labels))
    t2 = time.perf_counter()
    if trivial == len(raw) and float(polished.first.energy) < float(raw_energy.min()):
        warnings.warn(f"simulated bifurcation ({mode}) ended every agent in an all-0/all-1 state; the result "
                      "is steepest descent from that state, not an SB solution (try mode='discrete', more "
                      "max_steps, or another sampler)", RuntimeWarning, stacklevel=3)
    info = {"sb": {"mode": mode, **sb_info, "energy_before_polish": float(raw_energy.min()),
                   "trivial_agents": trivial},
            "timing": {"sampling_s": sampling_s, "polish_s": t2 - t1}}
    return dimod.SampleSet.from_samples((polished.record.sample, list(polished.variables)), vartype=dimod.BINARY,
                                        energy=polished.record.energy, info=info)
