"""Start-up time of the CLI against ``python -c "import torch"``, measured in one run.

Three commands, each in a fresh process, interleaved in every repetition so they share the
machine's load:

- ``python -c "import torch"``: the peer (what every command cost before issue 11);
- ``qubo-nn --help``;
- ``qubo-nn solve FILE.bqm --sampler neal``: a 3-variable .bqm, one read, so the wall time is
  the start-up (imports, file read, result written), not the anneal.

Ratios are of the medians over ``--repeats`` repetitions (minimums reported too). Targets
(issue 11): --help ≤ 0.3×, solve ≤ 0.5× the torch import. Also recorded: ``python -c "import
dimod"`` (the floor of any solve) and the load average before and after (the machine is shared).

Usage: python benchmarks/bench_startup.py [--repeats 9] [--out results]
Writes results/bench_startup.json and .txt (atomically).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"help": 0.3, "solve": 0.5}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    import dimod

    from qubo_nn.io.bqm_files import write_bqm
    from qubo_nn.runtime import atomic_write_json, atomic_write_text, machine_info, versions

    py = sys.executable
    cli = str(Path(py).parent / "qubo-nn")
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    bqm = tmp / "m.bqm"
    write_bqm(dimod.BinaryQuadraticModel({0: 1.0, 1: -2.0, 2: 0.5}, {(0, 1): 1.5, (1, 2): -1.0}, 0.25, "BINARY"), bqm)
    commands = {
        "import_torch": [py, "-c", "import torch"],
        "import_dimod": [py, "-c", "import dimod"],
        "help": [cli, "--help"],
        "solve": None,   # filled per repetition (a fresh --out)
    }
    load_before = os.getloadavg()
    for name, cmd in commands.items():   # warm the file cache once, not timed
        timed(cmd or [cli, "solve", str(bqm), "--sampler", "neal", "-n", "1", "--no-progress", "--out",
                      str(tmp / "warm")])
    times: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(args.repeats):
        for name, cmd in commands.items():
            cmd = cmd or [cli, "solve", str(bqm), "--sampler", "neal", "-n", "1", "--no-progress", "--out",
                          str(tmp / f"sol{r}")]
            times[name].append(timed(cmd))
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: med[k] / med["import_torch"] for k in ("help", "solve")}
    result = {
        "repeats": args.repeats,
        "seconds": times,
        "median_s": med,
        "min_s": {k: min(v) for k, v in times.items()},
        "ratio_to_import_torch": ratios,
        "targets": TARGETS,
        "met": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "machine": machine_info("cpu"),
        "versions": versions(),
    }
    lines = [f"start-up, median of {args.repeats} fresh processes each (interleaved), load average "
             f"{load_before[0]:.2f} -> {load_after[0]:.2f}",
             f"  python -c 'import torch'   {med['import_torch']:.3f} s  (min {min(times['import_torch']):.3f})",
             f"  python -c 'import dimod'   {med['import_dimod']:.3f} s  (min {min(times['import_dimod']):.3f})",
             f"  qubo-nn --help             {med['help']:.3f} s  = {ratios['help']:.2f} x import torch "
             f"(target <= {TARGETS['help']})  {'met' if result['met']['help'] else 'NOT met'}",
             f"  qubo-nn solve m.bqm (neal) {med['solve']:.3f} s  = {ratios['solve']:.2f} x import torch "
             f"(target <= {TARGETS['solve']})  {'met' if result['met']['solve'] else 'NOT met'}"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    atomic_write_json(out / "bench_startup.json", result)
    atomic_write_text(out / "bench_startup.txt", text + "\n")


if __name__ == "__main__":
    main()
