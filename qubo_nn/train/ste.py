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
    opt = torch.optim.Adam([W, b], lr=lr)
    X, y = train.X.float(), train.y.long()
    gen = torch_generator(seed)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(train.n, generator=gen)
        for i in range(0, train.n, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            logits = X[idx] @ ste_weights(W, grid).T + b
            torch.nn.functional.cross_entropy(logits, y[idx]).backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch, W.detach(), b.detach())
    return W.detach(), b.detach()


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
