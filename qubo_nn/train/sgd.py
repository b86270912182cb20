"""Optimizers of the FC head on cached features: the SGD baseline and the convex optimum.

Loss of a head (W, b) on features X (N × D), labels y:
``L = mean_n CE(W x_n + b, y_n) + (l2/2)·‖W‖²`` (the bias is not penalized). SGD's
``weight_decay`` is this ``l2``: it is applied to W only, so ``train_sgd`` and
``convex_optimum(l2=weight_decay)`` minimize the same function.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.core.head import Head, check_compatible, evaluate
from qubo_nn.runtime import resolve_device, resolve_dtype, torch_generator

SCHEDULES = ("none", "cosine", "step")


@dataclass
class SGDConfig:
    """Mini-batch SGD with momentum (torch.optim.SGD, no dampening, no Nesterov)."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0
    schedule: str = "none"
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise QuboNNError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise QuboNNError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise QuboNNError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise QuboNNError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise QuboNNError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise QuboNNError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


def lr_at(cfg: SGDConfig, epoch: int, total_epochs: int) -> float:
    """Learning rate of (0-based) ``epoch`` in a run of ``total_epochs``; constant within an epoch.

    none: lr. cosine: lr·½(1 + cos(π·epoch/total)). step: lr × 0.1 from epoch ⌊total/2⌋ and
    × 0.01 from epoch ⌊3·total/4⌋.
    """
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(total_epochs, 1)))
    if cfg.schedule == "step":
        return cfg.lr * 0.1 ** ((epoch >= total_epochs // 2) + (epoch >= (3 * total_epochs) // 4))
    return cfg.lr


def train_sgd(head: Head, train: FeatureSet, test: FeatureSet | None, cfg: SGDConfig, device: str = "auto",
              start_epoch: int = 0, total_epochs: int | None = None,
              callback: Callable[[dict, Head], None] | None = None) -> tuple[Head, list[dict]]:
    """Train ``head`` with SGD on ``train``; return the new head and one record per epoch.

    Runs epochs ``[start_epoch, start_epoch + cfg.epochs)`` of a schedule defined over
    ``total_epochs`` (default ``start_epoch + cfg.epochs``), so a run may be split into pieces
    (warm-up, something else, fine-tuning) with the same learning rates and shuffles as one
    run. Epoch e shuffles with a generator seeded by (cfg.seed, e). Each call starts with a
    fresh momentum buffer. Works on whole feature tensors on ``device`` (batches are indexed
    from a permutation; the last batch may be smaller).

    Record of each epoch: ``epoch`` (1-based global index), ``lr``, ``train_loss`` and
    ``train_acc`` (the objective mean CE + (weight_decay/2)‖W‖² and accuracy of the head
    after the epoch, evaluated on the whole training set with :func:`qubo_nn.core.head.evaluate`,
    not averaged over the epoch's batches), ``test_loss`` (mean CE) and ``test_acc`` (None
    without ``test``), ``wall_time_s`` (the epoch's SGD steps) and ``eval_time_s``.
    ``callback(record, head)`` is called after each epoch. The returned head has the input
    head's device and dtype.
    """
    cfg.validate()
    check_compatible(head, train)
    if test is not None:
        check_compatible(head, test)
    total = start_epoch + cfg.epochs if total_epochs is None else total_epochs
    if start_epoch < 0 or total < start_epoch + cfg.epochs:
        raise QuboNNError(f"expected 0 <= start_epoch and start_epoch + epochs <= total_epochs, got "
                          f"start_epoch={start_epoch}, epochs={cfg.epochs}, total_epochs={total}")
    dev = resolve_device(device)
    dtype = train.X.dtype
    X, y = train.X.to(dev), train.y.to(dev).long()
    train_dev = FeatureSet(X, y, train.num_classes, train.meta)
    test_dev = test.to(dev) if test is not None else None
    W = head.W.detach().to(dev, dtype).clone().requires_grad_(True)
    b = head.b.detach().to(dev, dtype).clone().requires_grad_(True)
    opt = torch.optim.SGD([{"params": [W], "weight_decay": cfg.weight_decay}, {"params": [b], "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum)
    history = []
    n = train.n
    for epoch in range(start_epoch, start_epoch + cfg.epochs):
        lr = lr_at(cfg, epoch, total)
        for group in opt.param_groups:
            group["lr"] = lr
        perm = epoch_permutation(n, cfg.seed, epoch).to(dev)
        t0 = time.perf_counter()
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = F.cross_entropy(torch.addmm(b, X[idx], W.T), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        current = Head(W.detach(), b.detach())
        rec = {"epoch": epoch + 1, "lr": lr}
        rec["train_loss"], rec["train_acc"] = evaluate(current, train_dev, l2=cfg.weight_decay)
        rec["test_loss"], rec["test_acc"] = evaluate(current, test_dev) if test_dev is not None else (None, None)
        rec["wall_time_s"] = t1 - t0
        rec["eval_time_s"] = time.perf_counter() - t1
        history.append(rec)
        if callback is not None:
            callback(rec, current)
    out = Head(W.detach().clone(), b.detach().clone()).to(head.W.device, head.W.dtype)
    return out, history


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which (0-based) ``epoch`` visits the n samples: a CPU generator seeded by
    (seed, epoch), so that any piece of a run, on any device, shuffles the same way."""
    return torch.randperm(n, generator=torch_generator((int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)))


def convex_optimum(train: FeatureSet, l2: float = 0.0, device: str = "auto", max_iter: int = 500,
                   tol: float = 1e-9, init: Head | None = None, dtype: str = "float64") -> tuple[Head, dict]:
    """Minimize the convex loss mean CE + (l2/2)‖W‖² over the head with full-batch L-BFGS.

    torch.optim.LBFGS (strong Wolfe line search, history 20) from ``init`` (default zeros),
    at most ``max_iter`` iterations; stops when the largest |gradient| entry is <= ``tol`` or
    the loss changes by less than ``tol``·1e-3. With ``l2 = 0`` and separable classes the
    optimum is at infinity: the run then ends at ``max_iter``. Info: ``loss`` (the objective),
    ``acc``, ``iterations``, ``function_evals``, ``grad_max`` (largest |gradient| entry at the
    end), ``converged`` (stopped by a tolerance before ``max_iter``), ``wall_time_s``. Computed
    in ``dtype`` on ``device``; the head is returned in float32 on CPU.
    """
    if not l2 >= 0:
        raise QuboNNError(f"l2 must be >= 0, got {l2!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise QuboNNError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    C, D = train.num_classes, train.dim
    start = init if init is not None else Head.zeros(C, D)
    check_compatible(start, train)
    X, y = train.X.to(dev, dt), train.y.to(dev).long()
    W = start.W.detach().to(dev, dt).clone().requires_grad_(True)
    b = start.b.detach().to(dev, dt).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, max_eval=max(2 * max_iter, max_iter + 25),
                            tolerance_grad=tol, tolerance_change=tol * 1e-3, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(torch.addmm(b, X, W.T), y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    t0 = time.perf_counter()
    opt.step(closure)
    loss = closure().detach()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    grad_max = float(max(W.grad.abs().max(), b.grad.abs().max()))
    state = opt.state[W]          # LBFGS keeps its counters with the first parameter
    result = Head(W.detach().cpu().float(), b.detach().cpu().float())
    _, acc = evaluate(Head(W.detach(), b.detach()), FeatureSet(X, y, C))
    iters = int(state.get("n_iter", 0))
    info = {"loss": float(loss), "acc": acc, "l2": l2, "iterations": iters,
            "function_evals": int(state.get("func_evals", 0)), "grad_max": grad_max,
            "converged": iters < max_iter, "wall_time_s": time.perf_counter() - t0, "dtype": dtype,
            "device": str(dev)}
    return result, info


DEFAULT_L2_GRID = tuple(10.0 ** (e / 2) for e in range(-2, -13, -1))
"""Half-decades from 1e-1 down to 1e-6: the L2 values :func:`reference_head` tries (large to small)."""


def reference_head(train: FeatureSet, *, val_fraction: float = 0.2, l2_grid: tuple[float, ...] | None = None,
                   seed: int = 0, device: str = "auto", dtype: str = "float64", max_iter: int = 300,
                   tol: float = 1e-7, patience: int = 2) -> tuple[Head, dict]:
    """A stable fp32 head: the L2-regularised convex optimum, L2 chosen by validation loss.

    A seeded random ``val_fraction`` of ``train`` is held out; for each ``l2`` in ``l2_grid``
    (default :data:`DEFAULT_L2_GRID`), tried from the largest to the smallest and each fit warm
    started from the previous one, :func:`convex_optimum` minimises mean CE + (l2/2)‖W‖² on the
    rest and the held-out mean CE is measured; the scan stops once the held-out loss has not
    improved for ``patience`` consecutive values (the validation curve of an L2 path is
    U-shaped; ``patience=None`` tries every value). The best ``l2`` is then refit on all of
    ``train`` (warm started from its fit). Deterministic for a given ``seed`` on one machine;
    the objective is strongly convex, so a tiny change of the features moves the head only a
    little (see :func:`jitter_check`).

    Info: ``l2`` (chosen), ``val_loss_by_l2`` ({l2: held-out CE}, in the order tried),
    ``val_acc_by_l2``, ``val_fraction``, ``seed``, ``n_fit``/``n_val``, ``stopped_early``,
    ``fit`` (the final :func:`convex_optimum` info: ``loss`` is the regularised objective),
    ``train_ce`` (mean CE of the final head on ``train``, without the L2 term), ``train_acc``,
    ``dtype``, ``wall_time_s``.
    """
    if not isinstance(val_fraction, float) or not 0.0 < val_fraction < 1.0:
        raise QuboNNError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
    grid = tuple(sorted(DEFAULT_L2_GRID if l2_grid is None else l2_grid, reverse=True))
    if not grid or any(not (isinstance(v, (int, float)) and v > 0) for v in grid):
        raise QuboNNError(f"l2_grid must be a non-empty sequence of numbers > 0, got {l2_grid!r}")
    n_val = int(round(val_fraction * train.n))
    if n_val < 1 or train.n - n_val < 1:
        raise QuboNNError(f"val_fraction {val_fraction} of {train.n} samples leaves an empty split; "
                          f"expected at least one sample on each side")
    t0 = time.perf_counter()
    perm = torch.randperm(train.n, generator=torch_generator(seed))
    val, fit = train.subset(perm[:n_val]), train.subset(perm[n_val:])
    val_loss: dict[float, float] = {}
    val_acc: dict[float, float] = {}
    heads: dict[float, Head] = {}
    best, since_best, init = None, 0, None
    for l2 in grid:
        head, _ = convex_optimum(fit, l2=float(l2), device=device, max_iter=max_iter, tol=tol, init=init, dtype=dtype)
        val_loss[l2], val_acc[l2] = evaluate(head, val)
        heads[l2], init = head, head
        if best is None or val_loss[l2] < val_loss[best]:
            best, since_best = l2, 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break
    head, info = convex_optimum(train, l2=float(best), device=device, max_iter=max_iter, tol=tol, init=heads[best],
                                dtype=dtype)
    train_ce, train_acc = evaluate(head, train)
    return head, {"l2": float(best), "val_loss_by_l2": {str(k): v for k, v in val_loss.items()},
                  "val_acc_by_l2": {str(k): v for k, v in val_acc.items()}, "val_fraction": val_fraction,
                  "seed": seed, "n_fit": fit.n, "n_val": val.n, "stopped_early": len(val_loss) < len(grid),
                  "fit": info, "train_ce": train_ce, "train_acc": train_acc, "dtype": dtype,
                  "wall_time_s": time.perf_counter() - t0}


def jitter_check(train: FeatureSet, test: FeatureSet, fit: Callable[[FeatureSet], Head], rel: float = 1e-6,
                 trials: int = 5, seed: int = 0) -> dict:
    """How much ``fit``'s test accuracy moves when the training features move by a relative ``rel``.

    Trial t fits ``fit`` on X·(1 + rel·ε_t) (ε_t ~ N(0, 1) per entry, seeded by (seed, t); the
    labels and the test set unchanged), like the float rounding that separates two machines or
    two BLAS builds. Returns ``base_acc`` (fit on the unjittered features), ``accs`` (per trial,
    test accuracy in [0, 1]), ``min``/``max``/``spread_points`` (100·(max − min) over base and
    trials: percentage points), ``max_shift_points`` (largest |acc − base_acc|·100), ``rel``,
    ``trials``, ``seed``.
    """
    if not rel > 0:
        raise QuboNNError(f"rel must be > 0, got {rel!r}")
    if not isinstance(trials, int) or trials < 1:
        raise QuboNNError(f"trials must be an integer >= 1, got {trials!r}")

    def acc_of(feats: FeatureSet) -> float:
        head = fit(feats)
        return evaluate(head.to(head.W.device), test.to(head.W.device))[1]

    base = acc_of(train)
    accs = []
    for t in range(trials):
        g = torch_generator(int(seed) * 1_000_003 + t)
        eps = torch.randn(train.X.shape, generator=g, dtype=torch.float64)
        X = (train.X.double() * (1.0 + rel * eps)).to(train.X.dtype)
        accs.append(acc_of(FeatureSet(X, train.y, train.num_classes, dict(train.meta))))
    lo, hi = min([base] + accs), max([base] + accs)
    return {"base_acc": base, "accs": accs, "min": lo, "max": hi, "spread_points": 100.0 * (hi - lo),
            "max_shift_points": 100.0 * max(abs(a - base) for a in accs), "rel": rel, "trials": trials,
            "seed": seed}
