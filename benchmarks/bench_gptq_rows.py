"""The one GPTQ kernel (``qubo_nn.core.kernels.gptq_rows``, NumPy, row-batched) against the network
path's torch loop it replaced (issue 18; copied below as the peer), on ResNet-18 group shapes.

Each case: R rows (output channels) sharing one damped Hessian of a group of m columns (the
network path's ``group_size`` 64), U the upper Cholesky factor of H̃⁻¹, per-row scales, 4-bit
codes. Both run single-threaded (``torch.set_num_threads(1)``) in the same process; the time is
the median of ``--repeats`` calls. The levels of the two must be identical (checked, recorded).

Usage: python benchmarks/bench_gptq_rows.py [--repeats 15] [--out results]
Writes results/bench_gptq_rows.json and .txt (atomically); records os.getloadavg().
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from qubo_nn.core.kernels import gptq_rows
from qubo_nn.runtime import atomic_write_json, atomic_write_text, machine_info, versions

CASES = ((64, 64), (128, 64), (256, 64), (512, 64), (512, 16))   # (rows R, group columns m)


def torch_loop_before_issue_18(w: torch.Tensor, U: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int
                               ) -> torch.Tensor:
    """``workflows/network_quantize.gptq_rows`` as it was (the peer)."""
    x = w.clone()
    k = torch.empty_like(x, dtype=torch.long)
    for i in range(x.shape[1]):
        q = torch.clamp(torch.round(x[:, i] / scale), qmin, qmax)
        k[:, i] = q.long()
        err = (x[:, i] - scale * q) / U[i, i]
        x[:, i + 1:] -= err[:, None] * U[i, i + 1:][None, :]
    return k


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    torch.set_num_threads(1)   # a benchmark script, not the library: one thread for both sides
    rng = np.random.default_rng(args.seed)
    rec = {"config": vars(args), "machine": machine_info("cpu"), "versions": versions(),
           "loadavg_start": list(os.getloadavg()), "cases": []}
    lines = [f"GPTQ group rounding, 4-bit codes, median of {args.repeats} (ms per group); peer: the torch loop "
             "before issue 18", f"{'rows':>6} {'cols':>5} {'core numpy':>11} {'torch before':>13} {'ratio':>6} identical"]
    for R, m in CASES:
        A = rng.normal(size=(m, 4 * m))
        H = A @ A.T / (4 * m)
        H += 0.01 * np.diag(H).mean() * np.eye(m)
        U = np.linalg.cholesky(np.linalg.inv(H)).T
        W = rng.normal(size=(R, m))
        s = rng.uniform(0.1, 0.3, size=R)
        new = gptq_rows(W, U, s[:, None], -8, 7)
        old = torch_loop_before_issue_18(torch.tensor(W), torch.tensor(U), torch.tensor(s), -8, 7).numpy()
        t_new = median_ms(lambda: gptq_rows(W, U, s[:, None], -8, 7), args.repeats)
        Wt, Ut, st = torch.tensor(W), torch.tensor(U), torch.tensor(s)
        t_old = median_ms(lambda: torch_loop_before_issue_18(Wt, Ut, st, -8, 7), args.repeats)
        same = bool(np.array_equal(new, old))
        rec["cases"].append({"rows": R, "cols": m, "core_numpy_ms": t_new, "torch_before_ms": t_old,
                             "speedup": t_old / t_new, "identical_levels": same})
        lines.append(f"{R:>6} {m:>5} {t_new:>11.3f} {t_old:>13.3f} {t_old / t_new:>6.2f} {same}")
    rec["loadavg_end"] = list(os.getloadavg())
    lines.append(f"load average start {rec['loadavg_start'][0]:.2f}, end {rec['loadavg_end'][0]:.2f} "
                 "(a shared machine: compare the two columns, not the absolute times)")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench_gptq_rows.json", rec)
    atomic_write_text(out / "bench_gptq_rows.txt", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
