"""Straight-through-estimator training of a binary or ternary head: the strong, tuned baseline of
discrete training (BinaryConnect / XNOR-Net / TWN).

Latent fp32 weights W start at the fp32 head; the forward pass uses Q(W) = α_c·code(W_c) per class row
(binary: sign, α_c = mean |W_c| (XNOR-Net); ternary: TWN, threshold 0.7·mean |W_c|, α_c = mean |W| above
it), the backward pass takes ∂L/∂Q as ∂L/∂W (straight through; α is recomputed from W, not learned);
the bias is trained in full precision; Adam. :func:`tune_ste` picks the learning rate and the number of
epochs on a held-out split of train (every (lr, epoch) validation loss is recorded) and retrains on all
of train with them.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from qubo_nn.core.head import Head
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.runtime import torch_generator


def quantize_rows(W: torch.Tensor, grid: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, α) of W (C × D) on the grid, differentiable-free (the STE forward)."""
    absw = W.abs()
    if grid == "binary":
        return torch.where(W >= 0, 1.0, -1.0).to(W.dtype), absw.mean(1)
    mask = absw > 0.7 * absw.mean(1, keepdim=True)
    codes = torch.sign(W) * mask
    alpha = (absw * mask).sum(1) / mask.sum(1).clamp(min=1)
    return codes.to(W.dtype), torch.where(mask.any(1), alpha, absw.mean(1))


def ste_weights(W: torch.Tensor, grid: str) -> torch.Tensor:
    """Q(W) in the forward pass, identity in the backward pass."""
    codes, alpha = quantize_rows(W.detach(), grid)
    return W + (alpha[:, None] * codes - W).detach()


def train_ste(head: Head, train: FeatureSet, grid: str, lr: float, epochs: int, batch: int, seed: int,
              on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent W and bias after ``epochs`` epochs of STE + Adam; ``on_epoch(epoch, W, b)`` after each."""
    W = head.W.detach().clone().float().requires_grad_(True)
    b = head.b.detach().clone().float().requires_grad_(True)
    _adam_epochs([W, b], lambda X: X @ ste_weights(W, grid).T + b, train, lr, epochs, batch, seed,
                 None if on_epoch is None else lambda epoch: on_epoch(epoch, W.detach(), b.detach()))
    return W.detach(), b.detach()


def _adam_epochs(params: list[torch.Tensor], logits_of: Callable[[torch.Tensor], torch.Tensor], train: FeatureSet,
                 lr: float, epochs: int, batch: int, seed: int, after_epoch: Callable[[int], None] | None = None,
                 after_step: Callable[[], None] | None = None) -> None:
    """Adam on the mean cross-entropy of ``logits_of(features)`` over shuffled minibatches (the order drawn
    from ``seed``), ``epochs`` epochs; ``after_step()`` after each update, ``after_epoch(epoch)`` after each epoch."""
    opt = torch.optim.Adam(params, lr=lr)
    X, y = train.X.float(), train.y.long()
    gen = torch_generator(seed)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(train.n, generator=gen)
        for i in range(0, train.n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(logits_of(X[idx]), y[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()
        if after_epoch is not None:
            after_epoch(epoch)


def _ce(W: torch.Tensor, b: torch.Tensor, feats: FeatureSet, grid: str) -> float:
    codes, alpha = quantize_rows(W, grid)
    with torch.no_grad():
        logits = feats.X.float() @ (alpha[:, None] * codes).T + b
        return float(torch.nn.functional.cross_entropy(logits, feats.y.long()))


def tune_ste(head: Head, fit: FeatureSet, val: FeatureSet, grid: str, lrs: tuple[float, ...], epochs: int,
             batch: int, seed: int) -> dict:
    """Validation loss of every (lr, epoch) of the grid; the best (lr, epochs) by validation loss.

    The fp32 start itself (epochs = 0) is a candidate, so a tuned STE is never worse on validation than
    its own threshold rounding."""
    t0 = time.perf_counter()
    grid_losses: dict[str, list[float]] = {}
    best = {"lr": None, "epochs": 0, "val_loss": _ce(head.W.float(), head.b.float(), val, grid)}
    for lr in lrs:
        curve: list[float] = []

        def record(epoch: int, W: torch.Tensor, b: torch.Tensor, curve=curve, lr=lr) -> None:
            loss = _ce(W, b, val, grid)
            curve.append(loss)
            if loss < best["val_loss"]:
                best.update(lr=lr, epochs=epoch, val_loss=loss)

        train_ste(head, fit, grid, lr, epochs, batch, seed, on_epoch=record)
        grid_losses[repr(lr)] = curve
    return {**best, "val_loss_by_lr": grid_losses, "tune_wall_time_s": time.perf_counter() - t0}


# ---------------------------------------------------------------- STE with learned scales (from any discrete head)

def scaled_codes(W: torch.Tensor, alpha: torch.Tensor, grid: str) -> torch.Tensor:
    """Codes of latent W (C × D) on the grid of scales α (C,): binary sign(W) (+1 at 0), ternary
    clamp(round(W/α), −1, 1) (the threshold is α/2). A head with codes k and scales α is its own fixed point:
    ``scaled_codes(α·k, α) == k``."""
    if grid == "binary":
        return torch.where(W >= 0, 1.0, -1.0).to(W.dtype)
    return torch.clamp(torch.round(W / alpha[:, None].clamp(min=1e-12)), -1, 1).to(W.dtype)


def scaled_ste_weights(W: torch.Tensor, alpha: torch.Tensor, grid: str) -> torch.Tensor:
    """Q = α·codes(W/α) in the forward pass; ∂Q/∂W = I (straight through), ∂Q/∂α_c = codes_c (exact)."""
    codes = scaled_codes(W.detach(), alpha.detach(), grid)
    return alpha[:, None] * codes + (W - W.detach())


def train_ste_scaled(codes: torch.Tensor, alpha: torch.Tensor, b: torch.Tensor, train: FeatureSet, grid: str,
                     lr: float, epochs: int, batch: int, seed: int,
                     on_epoch: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """STE + Adam from a discrete head (codes (C × D) in {−1, 0, 1}, scales α (C,), bias b (C,)), with the
    scales learned (LSQ-style) instead of recomputed from W. The latent weights start AT the head (W = α·codes),
    so epoch 0 is the head itself. Returns (codes, α, b) after ``epochs`` epochs; ``on_epoch(epoch, codes, α, b)``
    after each."""
    a0 = alpha.detach().clone().float()
    W = (a0[:, None] * codes.float()).requires_grad_(True)
    a = a0.clone().requires_grad_(True)
    bb = b.detach().clone().float().requires_grad_(True)

    def clamp() -> None:
        with torch.no_grad():
            a.clamp_(min=1e-8)

    _adam_epochs([W, a, bb], lambda X: X @ scaled_ste_weights(W, a, grid).T + bb, train, lr, epochs, batch, seed,
                 None if on_epoch is None else lambda epoch: on_epoch(epoch, scaled_codes(W.detach(), a.detach(), grid),
                                                                      a.detach().clone(), bb.detach().clone()),
                 clamp)
    return scaled_codes(W.detach(), a.detach(), grid), a.detach(), bb.detach()


def _ce_q(codes: torch.Tensor, alpha: torch.Tensor, b: torch.Tensor, feats: FeatureSet) -> float:
    with torch.no_grad():
        logits = feats.X.float() @ (alpha.float()[:, None] * codes.float()).T + b.float()
        return float(torch.nn.functional.cross_entropy(logits, feats.y.long()))


def tune_ste_scaled(codes: torch.Tensor, alpha: torch.Tensor, b: torch.Tensor, fit: FeatureSet, val: FeatureSet,
                    grid: str, lrs: tuple[float, ...], epochs: int, batch: int, seed: int) -> dict:
    """:func:`tune_ste` for :func:`train_ste_scaled`: every (lr, epoch) validation loss recorded; the start
    head itself (epochs = 0) is a candidate, so the choice is never worse on validation than the start."""
    t0 = time.perf_counter()
    grid_losses: dict[str, list[float]] = {}
    best = {"lr": None, "epochs": 0, "val_loss": _ce_q(codes, alpha, b, val)}
    for lr in lrs:
        curve: list[float] = []

        def record(epoch, c, a, bb, curve=curve, lr=lr) -> None:
            loss = _ce_q(c, a, bb, val)
            curve.append(loss)
            if loss < best["val_loss"]:
                best.update(lr=lr, epochs=epoch, val_loss=loss)

        train_ste_scaled(codes, alpha, b, fit, grid, lr, epochs, batch, seed, on_epoch=record)
        grid_losses[repr(lr)] = curve
    return {**best, "val_loss_by_lr": grid_losses, "tune_wall_time_s": time.perf_counter() - t0}
