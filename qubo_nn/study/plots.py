"""PNG plots of an experiment's results (matplotlib, Agg canvas; no global backend switch).

Every plot shows the mean over seeds (line) ± one sample standard deviation (band or error
bar), titled axes with units, a legend, and the L-BFGS optimum of the same objective as a
dashed reference where it applies. Inputs are the per-(method, seed) result dicts of
:mod:`qubo_nn.study.experiment` (``history`` points; ``final``).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from qubo_nn.runtime import atomic_path

COLORS = {"sgd": "tab:blue", "hybrid": "tab:orange", "sgd_matched": "tab:purple", "lbfgs": "tab:green"}
LABELS = {"sgd": "SGD baseline", "hybrid": "hybrid (SGD + QUBO + SGD)",
          "sgd_matched": "SGD, time-matched", "lbfgs": "L-BFGS optimum"}
PLOTS = ("train_loss_vs_epoch.png", "train_loss_vs_time.png", "test_acc_vs_epoch.png", "final_test_acc.png")


def _curve(runs: list[dict], key: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean x, mean y and std y per history point (all seeds share the point structure)."""
    n = min(len(r["history"]) for r in runs)
    xs = np.array([[r["history"][i][x] for i in range(n)] for r in runs], dtype=float)
    ys = np.array([[np.nan if r["history"][i][key] is None else r["history"][i][key] for i in range(n)]
                   for r in runs], dtype=float)
    std = ys.std(0, ddof=1) if len(runs) > 1 else np.zeros(n)
    return xs.mean(0), ys.mean(0), std


def _ref(results: dict, key: str) -> float | None:
    runs = results.get("lbfgs") or []
    vals = [r["final"][key] for r in runs if r["final"].get(key) is not None]
    return statistics.fmean(vals) if vals else None


def lbfgs_name(results: dict) -> str:
    """The L-BFGS reference's name: 'L-BFGS optimum' when every seed converged, else 'L-BFGS (not converged)'."""
    runs = results.get("lbfgs") or []
    return "L-BFGS optimum" if all(r.get("lbfgs", {}).get("converged", True) for r in runs) else \
        "L-BFGS (not converged)"


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _qubo_marks(ax, runs: list[dict], x: str) -> None:
    if not runs or "qubo_phase" not in runs[0]:
        return
    if x == "epoch":
        ax.axvline(runs[0]["qubo_phase"]["after_epoch"], color=COLORS["hybrid"], ls=":", lw=1.2,
                   label="QUBO phase (hybrid)")
    else:
        s = statistics.fmean(r["qubo_phase"]["start_s"] for r in runs)
        e = statistics.fmean(r["qubo_phase"]["end_s"] for r in runs)
        ax.axvspan(s, e, color=COLORS["hybrid"], alpha=0.12, label="QUBO phase (hybrid, mean)")


def _line_plot(results: dict, key: str, x: str, xlabel: str, ylabel: str, title: str, ref_label: str,
               scale: float = 1.0) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    # the time-matched SGD run has many more epochs: shown against time only
    methods = ("sgd", "hybrid") if x == "epoch" else ("sgd", "hybrid", "sgd_matched")
    for m in methods:
        runs = results.get(m) or []
        if not runs:
            continue
        if m == "sgd_matched":  # epoch counts differ per seed: one thin line per seed
            epochs = ", ".join(str(len(r["history"]) - 1) for r in runs)
            for i, r in enumerate(runs):
                h = r["history"]
                ax.plot([p[x] for p in h], [scale * p[key] for p in h], color=COLORS[m], lw=1, alpha=0.8,
                        label=f"{LABELS[m]} ({epochs} epochs; one line per seed)" if i == 0 else None)
            continue
        mx, my, sd = _curve(runs, key, x)
        ax.plot(mx, my * scale, marker="o", ms=3, color=COLORS[m], label=f"{LABELS[m]} (mean of {len(runs)})")
        ax.fill_between(mx, (my - sd) * scale, (my + sd) * scale, color=COLORS[m], alpha=0.2, lw=0)
    _qubo_marks(ax, results.get("hybrid") or [], x)
    ref = _ref(results, key if key != "test_acc" else "test_acc")
    if ref is not None:
        ax.axhline(ref * scale, color=COLORS["lbfgs"], ls="--", lw=1.2, label=ref_label)
    if x != "epoch":
        # times span orders of magnitude (SGD epochs vs the QUBO phase): log scale, linear below
        # the first recorded time so that t = 0 (the initial head) stays on the axis
        times = [p[x] for runs in results.values() for r in runs for p in r.get("history", []) if p[x] > 0]
        if times:
            ax.set_xscale("symlog", linthresh=min(times), linscale=1.0)
            ax.set_xlim(0, max(times) * 1.3)
            xlabel += " (log scale above the first epoch's time)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def make_plots(results: dict[str, list[dict]], out_dir: str | Path, title: str = "") -> list[Path]:
    """Write the four PNGs of :data:`PLOTS` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    sub = f"\n{title}" if title else ""
    ref = lbfgs_name(results)
    paths = []
    fig = _line_plot(results, "train_loss", "epoch", "epoch", "training loss (mean cross-entropy, nats)",
                     "Training loss vs epoch (band: ±1 std over seeds)" + sub, f"{ref} (convex objective)")
    paths.append(_save(fig, out_dir / PLOTS[0]))
    fig = _line_plot(results, "train_loss", "wall_time_s", "optimizer wall-clock time (s)",
                     "training loss (mean cross-entropy, nats)",
                     "Training loss vs wall-clock time" + sub, f"{ref} (convex objective)")
    paths.append(_save(fig, out_dir / PLOTS[1]))
    fig = _line_plot(results, "test_acc", "epoch", "epoch", "test accuracy (%)",
                     "Test accuracy vs epoch (band: ±1 std over seeds)" + sub, f"{ref}: test accuracy",
                     scale=100.0)
    paths.append(_save(fig, out_dir / PLOTS[2]))
    paths.append(_save(_bar_plot(results, sub), out_dir / PLOTS[3]))
    return paths


def _bar_plot(results: dict, sub: str) -> Figure:
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    names = [m for m in ("sgd", "hybrid", "sgd_matched") if results.get(m)]
    for i, m in enumerate(names):
        vals = [100.0 * r["final"]["test_acc"] for r in results[m]]
        mean = statistics.fmean(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        ax.bar(i, mean, yerr=std, capsize=6, color=COLORS[m], alpha=0.85,
               label=f"{LABELS[m]}: {mean:.2f} ± {std:.2f} % (n={len(vals)})")
        ax.scatter(np.full(len(vals), i), vals, color="k", s=12, zorder=3)
    ref = _ref(results, "test_acc")
    if ref is not None:
        ax.axhline(100 * ref, color=COLORS["lbfgs"], ls="--", lw=1.2,
                   label=f"{lbfgs_name(results)}: {100 * ref:.2f} %")
    ax.set_xticks(range(len(names)), [LABELS[m] for m in names], fontsize=8)
    ax.set_xlabel("method")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Final test accuracy (mean ± std over seeds; dots: seeds)" + sub)
    lo = min([100 * r["final"]["test_acc"] for m in names for r in results[m]] + ([100 * ref] if ref else []))
    ax.set_ylim(max(0.0, lo - 10), 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return fig
