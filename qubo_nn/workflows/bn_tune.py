"""Tuning only the BatchNorm γ/β of the last residual block: SGD, Adam, the QUBO hybrid, L-BFGS.

The task (issue 13): a network whose weights are frozen (e.g. the W2 GPTQ-quantized digits
ResNet-18, BN unfolded back into the plain architecture) recovers part of its training loss by
moving only the P = 4·C parameters θ = [bn1.γ, bn1.β, bn2.γ, bn2.β] of one torchvision
``BasicBlock`` (``layer4.1``: C = 512, P = 2,048) that is followed only by ``avgpool`` and ``fc``.

The frozen rest runs once (:class:`BasicBlockTail`): the block's input x and its first conv's
normalized output ẑ1 = (conv1(x) − μ1)/√(σ1² + ε) are cached for the training and test images, so
one evaluation of the loss is

    logits = fc(avgpool(relu(γ2 · (conv2(relu(γ1 ẑ1 + β1)) − μ2)/√(σ2² + ε) + β2 + x)))

(BN in eval mode; one 3 × 3 conv per call). Every method minimizes the same full-batch mean
cross-entropy on the training split and gets the same wall-time budget (optimizer time: the
clock pauses while the monitoring points evaluate train/test loss):

- ``sgd`` / ``adam``: mini-batch SGD (momentum) / Adam with a constant learning rate;
- ``lbfgs``: full-batch ``torch.optim.LBFGS`` with strong-Wolfe line search (the optimum reference);
- ``hybrid``: rounds of [Gauss–Newton local model at the current θ
  (:func:`curvature.gauss_newton.gauss_newton`: exact g, G = Σ JᵀH_CE J by ``torch.func``) → one
  sweep over channel blocks (γ and β of ``block_channels`` channels of one BN): each block's
  conditional model (:meth:`GaussNewtonModel.block`, the earlier blocks' steps included) →
  ``encoding.optimize_encoding`` → ``qubo.build_bqm`` → ``samplers.sample`` (neal by default; a
  level sampler gets ``qubo.integer_form``) → the decoded step decided by the one step policy of
  :mod:`qubo_nn.steps.policy` (accepted iff the TRUE training loss falls by more than ``accept_tol``,
  on the trial and again after the update, else undone and retried with more damping; seeds
  ``child_seed(seed, round, block, attempt)``; records in the same words as the head hybrid and
  ``decode``) → ``sgd_epochs`` epochs of the SGD method], until the budget is spent.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qubo_nn.errors import QuboNNError
from qubo_nn.workflows.head_optimize import HybridConfig, default_build
from qubo_nn.nets.layers import StopForward, run_hooked
from qubo_nn.runtime import torch_generator, versions

TUNE_METHODS = ("sgd", "adam", "hybrid", "lbfgs")
BN_NAMES = ("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias")


@dataclass
class TailData:
    """Cached activations of one split: ẑ1 (N × C × h × w), x (N × C × h × w), labels y (N,)."""

    zhat: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.zhat, self.x


class BasicBlockTail:
    """The last ``BasicBlock`` of a torchvision ResNet + avgpool + fc as a function of θ (module docstring)."""

    def __init__(self, model: nn.Module, block: str = "layer4.1") -> None:
        try:
            blk = model.get_submodule(block)
        except AttributeError as exc:
            raise QuboNNError(f"expected a module named {block!r} in the model, got none") from exc
        needed = ("conv1", "bn1", "conv2", "bn2")
        if not all(hasattr(blk, a) for a in needed) or getattr(blk, "downsample", None) is not None \
                or not isinstance(blk.bn1, nn.BatchNorm2d) or not isinstance(blk.bn2, nn.BatchNorm2d) \
                or blk.conv2.groups != 1:
            raise QuboNNError(f"expected {block!r} to be a torchvision BasicBlock without downsample, "
                              f"got {type(blk).__name__}")
        if not (hasattr(model, "avgpool") and isinstance(getattr(model, "fc", None), nn.Linear)):
            raise QuboNNError(f"expected a torchvision ResNet (avgpool, fc), got {type(model).__name__}")
        self.model, self.block = model.eval(), block
        self.conv1, self.conv2 = blk.conv1, blk.conv2
        self.channels = int(blk.bn1.num_features)
        if blk.bn2.num_features != self.channels:
            raise QuboNNError(f"expected bn1 and bn2 with the same width, got {blk.bn1.num_features} and "
                              f"{blk.bn2.num_features}")
        d = {}
        for name in ("bn1", "bn2"):
            bn = getattr(blk, name)
            d[name] = (bn.running_mean.detach().clone(), torch.sqrt(bn.running_var.detach() + bn.eps))
        self._bn = d
        self.w2 = blk.conv2.weight.detach().clone()
        self._w2_matrix: torch.Tensor | None = None
        self.fc_w, self.fc_b = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
        self.theta0 = torch.cat([blk.get_parameter(n).detach().reshape(-1) for n in BN_NAMES]).clone()

    @property
    def P(self) -> int:
        return 4 * self.channels

    def slices(self) -> dict[str, slice]:
        """Where each BN parameter sits in θ: ``bn1.weight`` = θ[0:C], ``bn1.bias`` = θ[C:2C], …"""
        C = self.channels
        return {n: slice(i * C, (i + 1) * C) for i, n in enumerate(BN_NAMES)}

    @torch.no_grad()
    def prepare(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128,
                check: bool = True) -> TailData:
        """Run the frozen network up to the block once; cache x and ẑ1. With ``check`` the tail's
        logits at θ0 must equal the model's on the first batch (else the block is not the last one)."""
        blk = self.model.get_submodule(self.block)
        xs = []

        def hook(module, args):
            xs.append(args[0].detach())
            raise StopForward

        batches = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size))
        run_hooked(self.model, batches, [blk.register_forward_pre_hook(hook)])
        x = torch.cat(xs)
        self._build_matrix(x.shape[1:])
        mu, sd = self._bn["bn1"]
        zhat = (self.conv1(x) - mu[:, None, None]) / sd[:, None, None]
        data = TailData(zhat.contiguous(), x.contiguous(), labels.long().clone())
        if check:
            n = min(batch_size, images.shape[0])
            ref = self.model(images[:n])
            got = self.logits(self.theta0, zhat[:n], x[:n])
            err = float((ref - got).abs().max())
            if not err <= 1e-3 * (1.0 + float(ref.abs().max())):
                raise QuboNNError(f"expected {self.block!r} to be followed only by avgpool and fc (the tail's "
                                  f"logits differ from the model's by {err:.3g})")
        return data

    def logits(self, theta: torch.Tensor, zhat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (B × classes) of cached activations at parameters ``theta`` (P,)."""
        return self.head(theta, self.conv2_normalized(self.bn1_relu(theta, zhat)), x)

    def bn1_relu(self, theta: torch.Tensor, zhat: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """a = relu(γ1 ẑ1 + β1), all channels or only ``channels`` (ẑ1 then holds just those)."""
        C = self.channels
        g1, b1 = theta[:C], theta[C:2 * C]
        if channels is not None:
            g1, b1 = g1[channels], b1[channels]
        return F.relu(g1[None, :, None, None] * zhat + b1[None, :, None, None])

    def conv2_normalized(self, a: torch.Tensor, channels: torch.Tensor | None = None, shift: bool = True) -> torch.Tensor:
        """ĉ = (conv2(a) − μ2)/√(σ2² + ε); with ``channels``, ``a`` holds only those input channels
        (conv2 restricted to them); ``shift=False`` leaves out −μ2 (for differences)."""
        M = self._w2_matrix
        if M is not None and (tuple(a.shape[1:]) == self._matrix_shape if channels is None
                              else tuple(a.shape[2:]) == self._matrix_shape[1:]):
            rows = M if channels is None else M.reshape(self._matrix_shape[0], -1, M.shape[1])[channels].reshape(-1, M.shape[1])
            c = (a.reshape(a.shape[0], -1) @ rows.to(a.dtype)).reshape(a.shape[0], *self._out_shape)
        else:
            w = self.w2 if channels is None else self.w2[:, channels]
            c = F.conv2d(a, w.to(a.dtype), None, self.conv2.stride, self.conv2.padding, self.conv2.dilation)
        mu, sd = self._bn["bn2"]
        if shift:
            c = c - mu[:, None, None].to(c.dtype)
        return c / sd[:, None, None].to(c.dtype)

    def head(self, theta: torch.Tensor, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits from ĉ: fc(avgpool(relu(γ2 ĉ + β2 + x)))."""
        C = self.channels
        g2, b2 = theta[2 * C:3 * C], theta[3 * C:]
        out = F.relu(g2[None, :, None, None] * c + b2[None, :, None, None] + x)
        return F.linear(out.mean((2, 3)), self.fc_w.to(out.dtype), self.fc_b.to(out.dtype))

    @torch.no_grad()
    def _build_matrix(self, shape: torch.Size) -> None:
        """conv2 on a fixed small input (C × h × w) as one dense (C·h·w × C'·h'·w') matrix: the
        same linear map (row i = conv2 of basis image i), one GEMM instead of a padded 3 × 3 conv
        (layer4 of a 64-pixel input is 2 × 2; the conv's im2col is mostly padding). Only when the
        matrix has at most 2^24 entries."""
        n = int(np.prod(shape))
        if n * n > 2 ** 24:
            self._w2_matrix = None
            return
        basis = torch.eye(n, dtype=self.w2.dtype).reshape(n, *shape)
        out = F.conv2d(basis, self.w2, None, self.conv2.stride, self.conv2.padding, self.conv2.dilation,
                       self.conv2.groups)
        self._matrix_shape, self._out_shape = tuple(shape), tuple(out.shape[1:])
        self._w2_matrix = out.reshape(n, -1).contiguous()

    def write(self, theta: torch.Tensor) -> nn.Module:
        """A copy of the model with the block's BN γ/β set from ``theta``."""
        out = copy.deepcopy(self.model)
        blk = out.get_submodule(self.block)
        with torch.no_grad():
            for n, sl in self.slices().items():
                blk.get_parameter(n).copy_(theta[sl].to(blk.get_parameter(n).dtype))
        return out

    def channel_blocks(self, channels_per_block: int) -> list[torch.Tensor]:
        """Blocks of θ: for bn1 then bn2, groups of ``channels_per_block`` channels, each block the
        γ and β of its channels (2·k indices, sorted)."""
        if not isinstance(channels_per_block, int) or channels_per_block < 1:
            raise QuboNNError(f"channels per block must be a positive integer, got {channels_per_block!r}")
        C, out = self.channels, []
        for layer in range(2):
            for start in range(0, C, channels_per_block):
                ch = torch.arange(start, min(start + channels_per_block, C))
                out.append(torch.cat([2 * layer * C + ch, (2 * layer + 1) * C + ch]))
        return out


class TailState:
    """The tail's activations at θ on one split, for exact trial losses of block changes.

    Holds a = relu(γ1 ẑ1 + β1) and ĉ (normalized conv2 output). A change of bn1's γ/β on channels
    S updates ĉ by conv2 of the change of a on S alone (O(N·|S|) of the full conv's work); a
    change of bn2's γ/β needs no conv at all. Float rounding drifts with many updates: build a
    fresh state per sweep (as the head hybrid builds a fresh ``HeadStats``).
    """

    def __init__(self, tail: BasicBlockTail, data: TailData, theta: torch.Tensor) -> None:
        self.tail, self.data = tail, data
        with torch.no_grad():
            self.theta = theta.detach().clone()
            self.a = tail.bn1_relu(self.theta, data.zhat)
            self.c = tail.conv2_normalized(self.a)
            self.loss = self._loss(self.theta, self.c)

    def _loss(self, theta: torch.Tensor, c: torch.Tensor) -> float:
        z = self.tail.head(theta, c, self.data.x)
        return float(F.cross_entropy(z.double(), self.data.y))

    def _moved(self, idx: torch.Tensor, values: torch.Tensor):
        theta = self.theta.clone()
        theta[idx] = values.to(theta.dtype)
        C = self.tail.channels
        ch = torch.unique(idx[idx < 2 * C] % C)
        if ch.numel() == 0:
            return theta, None, None, self.c
        a_ch = self.tail.bn1_relu(theta, self.data.zhat[:, ch], ch)
        c = self.c + self.tail.conv2_normalized(a_ch - self.a[:, ch], ch, shift=False)
        return theta, ch, a_ch, c

    @torch.no_grad()
    def trial_loss(self, idx: torch.Tensor, values: torch.Tensor) -> float:
        """Mean cross-entropy with θ[idx] = values, without moving the state."""
        theta, _, _, c = self._moved(idx, values)
        return self._loss(theta, c)

    @torch.no_grad()
    def update(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Set θ[idx] = values (and the cached activations)."""
        theta, ch, a_ch, c = self._moved(idx, values)
        if ch is not None:
            self.a[:, ch] = a_ch
        self.theta, self.c, self.loss = theta, c, self._loss(theta, c)


def evaluate(tail: BasicBlockTail, theta: torch.Tensor, data: TailData, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy %) of the tail at ``theta`` on cached ``data``."""
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, data.n, batch_size):
            z = tail.logits(theta, data.zhat[i:i + batch_size], data.x[i:i + batch_size])
            y = data.y[i:i + batch_size]
            loss += float(F.cross_entropy(z.double(), y, reduction="sum"))
            correct += int((z.argmax(1) == y).sum())
    return loss / data.n, 100.0 * correct / data.n


def default_hybrid() -> HybridConfig:
    """The QUBO stage's settings: 4-bit binary windows of 0.5 diagonal Newton steps (the head
    hybrid's default), damping 0.1 × mean diag G, neal 1 read × 200 sweeps, warm start, 2 retries."""
    return HybridConfig(build=replace(default_build(), damping_rel=0.1), sampler="neal",
                        sampler_params={"num_reads": 1, "num_sweeps": 200})


@dataclass
class BNTuneConfig:
    """Settings of :func:`tune` (all methods; each uses its own).

    ``budget_s``: optimizer wall time per method. ``batch_size``, ``sgd_lr``, ``momentum``:
    mini-batch SGD (also the hybrid's SGD phases); ``adam_lr``: Adam. ``lbfgs_history``,
    ``lbfgs_iters``: L-BFGS memory and iterations per monitoring point. ``hybrid``: the QUBO
    stage (used: ``build`` bits/window/step_rule/encoding/damping_rel/damping_abs/bqm_dtype,
    ``sampler``, ``sampler_params``, ``polish``, ``warm_start``, ``accept_tol``,
    ``max_retries``, ``damping_growth``, ``seed`` is set from ``seed``); ``block_channels``:
    channels per block (2·k parameters); ``sgd_epochs``: SGD epochs after each QUBO sweep;
    ``hessian_samples``: training samples for G (None: all; the gradient always uses all);
    ``gn_batch``: samples per Jacobian chunk. ``seed``: mini-batch order and sampler seeds.
    """

    budget_s: float = 60.0
    batch_size: int = 64
    sgd_lr: float = 0.05
    momentum: float = 0.9
    adam_lr: float = 1e-3
    lbfgs_history: int = 20
    lbfgs_iters: int = 5
    hybrid: HybridConfig = field(default_factory=default_hybrid)
    block_channels: int = 64
    sgd_epochs: int = 1
    hessian_samples: int | None = None
    gn_batch: int = 128
    seed: int = 0

    def validate(self) -> None:
        if not self.budget_s > 0:
            raise QuboNNError(f"budget_s must be > 0, got {self.budget_s!r}")
        for name in ("batch_size", "lbfgs_history", "lbfgs_iters", "block_channels", "gn_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise QuboNNError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.sgd_epochs, int) or self.sgd_epochs < 0:
            raise QuboNNError(f"sgd_epochs must be an integer >= 0, got {self.sgd_epochs!r}")
        for name in ("sgd_lr", "adam_lr"):
            if not getattr(self, name) > 0:
                raise QuboNNError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.hessian_samples is not None and (not isinstance(self.hessian_samples, int) or self.hessian_samples < 1):
            raise QuboNNError(f"hessian_samples must be None or a positive integer, got {self.hessian_samples!r}")
        self.hybrid.validate()

    def to_dict(self) -> dict:
        return asdict(self)


class _Clock:
    """Optimizer time: wall time minus the paused (monitoring) intervals."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._paused = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0


class _Monitor:
    """History points {t, train_loss, train_acc, test_loss, test_acc, phase, **extra} (clock paused)."""

    def __init__(self, tail: BasicBlockTail, train: TailData, test: TailData | None, clock: _Clock) -> None:
        self.tail, self.train, self.test, self.clock = tail, train, test, clock
        self.history: list[dict[str, Any]] = []

    def point(self, theta: torch.Tensor, phase: str, **extra: Any) -> dict[str, Any]:
        with self.clock.paused():
            t = self.clock.elapsed()
            tl, ta = evaluate(self.tail, theta.detach(), self.train)
            p = {"t": t, "train_loss": tl, "train_acc": ta, "phase": phase, **extra}
            if self.test is not None:
                p["test_loss"], p["test_acc"] = evaluate(self.tail, theta.detach(), self.test)
            self.history.append(p)
        return p


def tune(tail: BasicBlockTail, train: TailData, test: TailData | None, method: str, cfg: BNTuneConfig,
         theta0: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Minimize the training cross-entropy over θ by ``method`` for ``cfg.budget_s`` seconds.

    Returns the final θ and a record: ``history`` (monitoring points, the first at t = 0),
    ``final`` (the last point), ``budget_s``, ``optimizer_s``, method-specific details (hybrid:
    per block predicted/true change and acceptance, per round GN time), ``loadavg``, ``versions``.
    """
    if method not in TUNE_METHODS:
        raise QuboNNError(f"method must be one of {TUNE_METHODS}, got {method!r}")
    cfg.validate()
    theta = (tail.theta0 if theta0 is None else theta0).detach().clone()
    if theta.shape != (tail.P,):
        raise QuboNNError(f"expected θ of shape ({tail.P},), got {tuple(theta.shape)}")
    clock = _Clock()
    mon = _Monitor(tail, train, test, clock)
    mon.point(theta, "start")
    extra: dict[str, Any] = {}
    if method in ("sgd", "adam"):
        theta = _first_order(tail, train, theta, method, cfg, clock, mon)
    elif method == "lbfgs":
        theta = _lbfgs(tail, train, theta, cfg, clock, mon)
    else:
        theta, extra = _hybrid(tail, train, theta, cfg, clock, mon)
    rec = {"method": method, "config": cfg.to_dict(), "history": mon.history, "final": mon.history[-1],
           "budget_s": cfg.budget_s, "optimizer_s": clock.elapsed(), "params": tail.P, "block": tail.block,
           "n_train": train.n, "n_test": None if test is None else test.n, "loadavg": list(os.getloadavg()),
           "torch_threads": torch.get_num_threads(), "versions": versions(), **extra}
    return theta, rec


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch_generator(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])))
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def _sgd_epochs(tail, train, opt_param, opt, cfg, clock, mon, epochs, epoch0, phase) -> tuple[int, bool]:
    """Run up to ``epochs`` epochs (math.inf: until the budget) of ``opt`` on ``opt_param``; a point per epoch.
    Returns (epochs done, budget spent)."""
    e = 0
    while e < epochs:
        for idx in _epoch_batches(train.n, cfg.batch_size, cfg.seed, epoch0 + e):
            if clock.elapsed() >= cfg.budget_s:
                mon.point(opt_param, phase, epoch=epoch0 + e, partial=True)
                return e, True
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(tail.logits(opt_param, train.zhat[idx], train.x[idx]), train.y[idx])
            loss.backward()
            opt.step()
        e += 1
        mon.point(opt_param, phase, epoch=epoch0 + e)
    return e, clock.elapsed() >= cfg.budget_s


def _first_order(tail, train, theta, method, cfg, clock, mon) -> torch.Tensor:
    p = theta.clone().requires_grad_(True)
    opt = (torch.optim.SGD([p], lr=cfg.sgd_lr, momentum=cfg.momentum) if method == "sgd"
           else torch.optim.Adam([p], lr=cfg.adam_lr))
    _sgd_epochs(tail, train, p, opt, cfg, clock, mon, math.inf, 0, method)
    return p.detach()


def _full_loss(tail, train, p, batch_size=512) -> torch.Tensor:
    total = 0.0
    for i in range(0, train.n, batch_size):
        z = tail.logits(p, train.zhat[i:i + batch_size], train.x[i:i + batch_size])
        total = total + F.cross_entropy(z, train.y[i:i + batch_size], reduction="sum")
    return total / train.n


def _lbfgs(tail, train, theta, cfg, clock, mon) -> torch.Tensor:
    p = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=cfg.lbfgs_iters, history_size=cfg.lbfgs_history,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = _full_loss(tail, train, p)
        loss.backward()
        return loss

    it, last = 0, None
    while clock.elapsed() < cfg.budget_s:
        opt.step(closure)
        it += cfg.lbfgs_iters
        pt = mon.point(p, "lbfgs", iteration=it)
        if last is not None and abs(last - pt["train_loss"]) < 1e-12:
            break                                  # converged: nothing left to spend the budget on
        last = pt["train_loss"]
    return p.detach()


@dataclass
class _HybridRun:
    """What every round of :func:`_hybrid` shares: the tail, data, settings, sampler and the SGD state."""

    tail: Any
    train: TailData
    cfg: Any
    clock: Any
    mon: Any
    sampler: Any
    caps: Any
    blocks: list
    rows: torch.Tensor | None
    p: torch.Tensor
    opt: torch.optim.Optimizer


def _hybrid(tail, train, theta, cfg, clock, mon) -> tuple[torch.Tensor, dict[str, Any]]:
    """Rounds of [Gauss–Newton model → one sweep of block steps (:func:`_hybrid_round`) → SGD epochs]
    until the budget is spent (module docstring)."""
    from qubo_nn import samplers
    from qubo_nn.steps.sweep import SamplerCaps

    hc = cfg.hybrid
    sampler = samplers.get_sampler(hc.sampler)
    rows = None
    if cfg.hessian_samples is not None and cfg.hessian_samples < train.n:
        rows = torch.randperm(train.n, generator=torch_generator(cfg.seed))[:cfg.hessian_samples].sort().values
    p = theta.clone().requires_grad_(True)
    run = _HybridRun(tail, train, cfg, clock, mon, sampler, SamplerCaps.of(sampler),
                     tail.channel_blocks(cfg.block_channels), rows, p,
                     torch.optim.SGD([p], lr=cfg.sgd_lr, momentum=cfg.momentum))
    block_log, rounds = [], []
    epoch, rnd = 0, 0
    while clock.elapsed() < cfg.budget_s:
        rounds.append(_hybrid_round(run, rnd, block_log))
        mon.point(p, "qubo", round=rnd)
        if cfg.sgd_epochs and clock.elapsed() < cfg.budget_s:
            done, _ = _sgd_epochs(tail, train, p, run.opt, cfg, clock, mon, cfg.sgd_epochs, epoch, "sgd")
            epoch += done
        rnd += 1
    return p.detach(), {"rounds": rounds, "blocks": block_log,
                        "hessian_samples": train.n if rows is None else int(rows.numel())}


def _hybrid_round(run: _HybridRun, rnd: int, block_log: list) -> dict[str, Any]:
    """One Gauss–Newton model at the current θ, then each block (in a seeded order) stepped by the
    one step policy (:func:`_block_step`); θ of ``run.p`` follows every accepted step."""
    from qubo_nn.curvature.gauss_newton import gauss_newton
    from qubo_nn.steps.policy import step_seed

    cfg, clock = run.cfg, run.clock
    t0 = clock.elapsed()
    theta = run.p.detach().clone()
    gn = gauss_newton(run.tail.logits, theta, run.train.inputs(), run.train.y, batch_size=cfg.gn_batch,
                      hessian_rows=run.rows)
    t_gn = clock.elapsed() - t0
    shift = torch.zeros(run.tail.P, dtype=torch.float64)
    state = TailState(run.tail, run.train, theta)
    loss_round = state.loss
    order = torch.randperm(len(run.blocks), generator=torch_generator(step_seed(cfg.seed, rnd, 0, 0))).tolist()
    accepted = 0
    for b in order:
        if clock.elapsed() >= cfg.budget_s:
            break
        entry = _block_step(run, gn, state, shift, rnd, b)
        block_log.append(entry)
        accepted += entry["accepted"]
    return {"round": rnd, "gauss_newton_s": t_gn, "loss_before": loss_round, "loss_after": state.loss,
            "accepted": accepted, "blocks": len(order), "t_end": clock.elapsed()}


def _block_step(run: _HybridRun, gn, state: TailState, shift: torch.Tensor, rnd: int, b: int) -> dict[str, Any]:
    """Attempts on block ``b`` (μ grown per retry) until one is accepted or the retries are spent."""
    from qubo_nn.steps import policy as sp
    from qubo_nn.steps.sweep import attempt_damping, encode_block

    hc = run.cfg.hybrid
    pol, idx = hc.policy(), run.blocks[b]
    attempts = []
    for attempt in range(pol.max_retries + 1):
        tb = time.perf_counter()
        model = gn.block(idx, shift)
        mu = attempt_damping(model, hc.build, pol, attempt)
        enc, bqm, form = encode_block(model, hc.build, mu, run.caps.takes_form)
        att, x = _sample_block(run, bqm, enc, form, mu, model.L0, sp.step_seed(run.cfg.seed, rnd, b, attempt),
                               attempt, tb)
        te = time.perf_counter()
        before = state.loss
        if not sp.predicts_gain(att["energy_best"], att["energy_current"]):
            attempts.append(sp.decide(att, False, sp.REASON_NO_GAIN, before, before))
            continue
        values = enc.decode(x).to(state.theta.dtype)
        old = state.theta[idx].clone()
        ok, trial, after = sp.try_step(state, idx, values, before, pol.accept_tol)
        attempts.append(sp.decide(att, ok, sp.REASON_FELL if ok else sp.REASON_ROSE, before, after, trial))
        att["evaluate_s"] = time.perf_counter() - te
        if ok:
            shift[idx] += (values - old).double()
            with torch.no_grad():
                run.p.copy_(state.theta)
            break
    return sp.step_record(attempts, round=rnd, block=b, size=int(idx.numel()))


def _sample_block(run: _HybridRun, bqm, enc, form, mu: float, L0: float, seed: int, attempt: int, tb: float):
    """Anneal one block's BQM (warm-started, with its integer form where the sampler takes them);
    (attempt record, best sample)."""
    from qubo_nn import samplers
    from qubo_nn.steps import policy as sp

    hc = run.cfg.hybrid
    params = dict(hc.sampler_params)
    if form is not None:
        params["integer_form"] = form
    cur = enc.current_bits().cpu().numpy().astype(np.int8)
    init = cur[None, :] if hc.warm_start and run.caps.takes_initial else None
    tbuild = time.perf_counter()
    ss = samplers.sample(bqm, run.sampler, seed=seed, polish=hc.polish, initial_states=init, **params)
    tsolve = time.perf_counter()
    x = sp.best_sample(ss, enc.num_variables)
    e_best, e_cur = sp.sample_energies(bqm, x, cur)
    att = sp.attempt_record(attempt, mu, e_best, e_cur, L0, num_variables=enc.num_variables, seed=seed,
                            build_s=tbuild - tb, solve_s=tsolve - tbuild)
    return att, x
