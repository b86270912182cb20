"""The FC head's exact cross-entropy curvature: HeadStats (g, H blocks), block selection."""
from __future__ import annotations

import torch

from qubo_nn.core.head import Head, check_compatible
from qubo_nn.core.layout import flat_params, unflatten
from qubo_nn.core.model import LocalModel
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import calibration_indices, resolve_device, resolve_dtype, torch_generator

BLOCK_KINDS = ("rows", "columns", "topk", "random")


SALIENCIES = ("grad", "obd")


class HeadStats:
    """Softmax probabilities, loss and full gradient of a head on a feature set, computed once.

    Every block of the same head reuses them; only the block's Hessian costs a pass over the
    samples. ``subsample`` (int) restricts the Hessian (not the gradient) to a seeded random
    subset of that many samples.
    """

    def __init__(self, head: Head, feats: FeatureSet, l2: float = 0.0, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "float32", chunk: int = 16384, subsample: int | None = None,
                 seed: int = 0) -> None:
        check_compatible(head, feats)
        if l2 < 0:
            raise QuboNNError(f"l2 must be >= 0, got {l2}")
        if chunk < 1:
            raise QuboNNError(f"chunk must be >= 1, got {chunk}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.C, self.D, self.N = head.num_classes, head.dim, feats.n
        self.l2 = float(l2)
        self.chunk = int(chunk)
        self.X = feats.X.to(device=self.device, dtype=self.dtype)
        self.y = feats.y.to(self.device).long()
        self.theta = flat_params(head.to(self.device, self.dtype))
        W = self.theta.reshape(self.C, self.D + 1)
        self.logits = torch.addmm(W[:, self.D], self.X, W[:, : self.D].T)
        if subsample is not None:
            if not 1 <= subsample <= self.N:
                raise QuboNNError(f"subsample must be in [1, N={self.N}], got {subsample}")
            self.hess_rows = calibration_indices(self.N, subsample, seed).to(self.device)
        else:
            self.hess_rows = None
        self._refresh()

    def _refresh(self) -> None:
        logp = torch.log_softmax(self.logits, dim=1)
        self.P = logp.exp()
        nll = -logp.gather(1, self.y[:, None]).mean()
        W = self.theta.reshape(self.C, self.D + 1)[:, : self.D]
        self.loss = float(nll) + 0.5 * self.l2 * float((W * W).sum())
        # the full gradient (a C × N × D product) and diag H are computed only when asked for
        self._grad = None
        self._diag = None

    def _residual(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """R = P − onehot(y), restricted to ``classes`` (columns) when given: (N, k)."""
        if classes is None:
            classes = torch.arange(self.C, device=self.device)
        R = self.P[:, classes].clone()
        hit = self.y[:, None] == classes[None, :]
        return R - hit.to(self.dtype)

    def grad_rows(self, classes: torch.Tensor) -> torch.Tensor:
        """Gradient rows [∂L/∂W_c | ∂L/∂b_c] of ``classes`` (k,), shape (k, D+1): one k × N × D product."""
        classes = classes.to(self.device)
        if self._grad is not None:
            return self._grad.reshape(self.C, self.D + 1)[classes]
        R = self._residual(classes)
        G = torch.empty(classes.numel(), self.D + 1, device=self.device, dtype=self.dtype)
        G[:, : self.D] = R.T @ self.X / self.N
        G[:, self.D] = R.mean(0)
        if self.l2:
            G[:, : self.D] += self.l2 * self.theta.reshape(self.C, self.D + 1)[classes, : self.D]
        return G

    @property
    def grad(self) -> torch.Tensor:
        """Full gradient of L over θ, (C·(D+1),)."""
        if self._grad is None:
            self._grad = self.grad_rows(torch.arange(self.C, device=self.device)).reshape(-1)
        return self._grad

    def block_grad(self, idx: torch.Tensor) -> torch.Tensor:
        """g restricted to the flat indices ``idx``; computes only the touched class rows."""
        idx = idx.to(self.device)
        if self._grad is not None:
            return self._grad[idx].clone()
        classes, inv = torch.unique(idx // (self.D + 1), return_inverse=True)
        if classes.numel() * 4 > self.C:  # most rows needed anyway: compute (and keep) the full gradient
            return self.grad[idx].clone()
        return self.grad_rows(classes)[inv, idx % (self.D + 1)]

    def logit_change(self, idx: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(classes (k,), Δz (N, k)): the change of the touched logits when θ[idx] += delta.

        When the step touches few classes it is one (N × D)·(D × k) product over a dense per-class
        change matrix; otherwise the touched feature columns are gathered (O(N·|idx|))."""
        idx = idx.to(self.device)
        delta = delta.to(self.device, self.dtype)
        c, d = idx // (self.D + 1), idx % (self.D + 1)
        classes, inv = torch.unique(c, return_inverse=True)
        k = classes.numel()
        if k * (self.D + 1) <= 8 * idx.numel():
            dM = torch.zeros(k, self.D + 1, device=self.device, dtype=self.dtype)
            dM[inv, d] = delta
            return classes, torch.addmm(dM[:, self.D], self.X, dM[:, : self.D].T)
        is_b = d == self.D
        Xa = self.X[:, d.clamp(max=self.D - 1)] * (~is_b)  # (N, |idx|), bias columns -> 0
        Xa = Xa + is_b.to(self.dtype)
        dz = torch.zeros(self.N, k, device=self.device, dtype=self.dtype)
        dz.index_add_(1, inv, Xa * delta)
        return classes, dz

    def trial_loss(self, idx: torch.Tensor, new_values: torch.Tensor) -> float:
        """Exact loss (mean CE + (l2/2)‖W‖²) with θ[idx] = new_values, without moving the head."""
        idx = idx.to(self.device)
        new_values = new_values.to(self.device, self.dtype)
        classes, dz = self.logit_change(idx, new_values - self.theta[idx])
        logits = self.logits.clone()
        logits[:, classes] += dz
        nll = -torch.log_softmax(logits, dim=1).gather(1, self.y[:, None]).mean()
        theta = self.theta.clone()
        theta[idx] = new_values
        W = theta.reshape(self.C, self.D + 1)[:, : self.D]
        return float(nll) + 0.5 * self.l2 * float((W * W).sum())

    def update(self, idx: torch.Tensor, new_values: torch.Tensor) -> None:
        """Set θ[idx] = new_values and update the logits incrementally (no full pass over W)."""
        idx = idx.to(self.device)
        new_values = new_values.to(self.device, self.dtype)
        classes, dz = self.logit_change(idx, new_values - self.theta[idx])
        self.logits[:, classes] += dz
        self.theta[idx] = new_values
        self._refresh()

    def head(self) -> Head:
        return unflatten(self.theta, self.C, self.D)

    def hessian_diag(self) -> torch.Tensor:
        """diag H over all C·(D+1) weights, (C·(D+1),): one (C × N)·(N × D) product."""
        if self._diag is None:
            rows = slice(None) if self.hess_rows is None else self.hess_rows
            P, X = self.P[rows], self.X[rows]
            n = P.shape[0]
            w = P * (1 - P)
            diag = torch.empty(self.C, self.D + 1, device=self.device, dtype=self.dtype)
            diag[:, : self.D] = w.T @ (X * X) / n + self.l2
            diag[:, self.D] = w.mean(0)
            self._diag = diag.reshape(-1)
        return self._diag

    def _row_chunks(self):
        """Yield (features, probabilities) of the Hessian's samples, ``chunk`` rows at a time
        (views when all samples are used, gathered rows for a subsample)."""
        if self.hess_rows is None:
            for s in range(0, self.N, self.chunk):
                yield self.X[s:s + self.chunk], self.P[s:s + self.chunk]
        else:
            for s in range(0, self.hess_rows.numel(), self.chunk):
                r = self.hess_rows[s:s + self.chunk]
                yield self.X[r], self.P[r]

    def block(self, idx: torch.Tensor) -> LocalModel:
        """The local model of block ``idx`` (sorted flat indices) at the current head.

        One pass over the (sub)sampled rows in chunks: a single-class block is the weighted Gram
        matrix F̃ᵀ diag(p(1−p)) F̃ (upper panels only, mirrored); a block spanning several classes
        adds the cross terms −p_c p_c'.
        """
        idx = _check_idx(idx, self.C, self.D).to(self.device)
        c, d = idx // (self.D + 1), idx % (self.D + 1)
        m = idx.numel()
        single_class = bool((c == c[0]).all())
        full_row = single_class and m == self.D + 1
        n = self.N if self.hess_rows is None else self.hess_rows.numel()
        if full_row:
            H = self._full_row_hessian(int(c[0]))
        else:
            H = self._general_hessian(c, d, single_class)
        H /= n
        H = 0.5 * (H + H.T)
        if self.l2:
            H.diagonal().add_(self.l2 * (d < self.D).to(self.dtype))
        return LocalModel(idx=idx, g=self.block_grad(idx), H=H, L0=self.loss,
                          theta0=self.theta[idx].clone(), l2=self.l2,
                          info={"hessian_samples": int(n), "single_class": single_class})

    def _full_row_hessian(self, cls: int) -> torch.Tensor:
        """Σ_n w_n f̃_n f̃_nᵀ, w = p_c(1 − p_c), f̃ = [f, 1] ((D+1) × (D+1), not yet divided by n).

        Per chunk, ``buf = [w·f, w]`` (one scaling pass into a reused buffer; no ones column is
        ever attached to the features) and each row panel of the upper block triangle is one
        product f[:, panel]ᵀ · buf[:, panel start:] — the bias column comes with it. The corner is
        Σ w; the rest is mirrored.
        """
        D = self.D
        H = torch.zeros(D + 1, D + 1, device=self.device, dtype=self.dtype)
        cuts = _panels(D)
        buf = torch.empty(min(self.chunk, self.N), D + 1, device=self.device, dtype=self.dtype)
        for Xc, Pc in self._row_chunks():
            k = Xc.shape[0]
            p = Pc[:, cls]
            b = buf[:k]
            torch.mul(p, 1 - p, out=b[:, D])
            torch.mul(Xc, b[:, D:], out=b[:, :D])
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                H[lo:hi, lo:].addmm_(Xc[:, lo:hi].T, b[:, lo:])
            H[D, D] += b[:, D].sum()
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            H[hi:, lo:hi] = H[lo:hi, hi:].T
        return H

    def _general_hessian(self, c: torch.Tensor, d: torch.Tensor, single_class: bool) -> torch.Tensor:
        """Any block: F = f̃[:, d] per chunk (bias columns = 1), P = p[:, c]."""
        m = c.numel()
        is_b = d == self.D
        dcol = d.clamp(max=self.D - 1)
        H = torch.zeros(m, m, device=self.device, dtype=self.dtype)
        same = (c[:, None] == c[None, :]).to(self.dtype) if not single_class else None
        for Xc, Pc in self._row_chunks():
            F = Xc[:, dcol]
            F[:, is_b] = 1.0
            if single_class:
                p = Pc[:, c[0]]
                _gram_upper_(H, F * (p * (1 - p))[:, None], F)
            else:
                FP = F * Pc[:, c]
                H.add_((FP.T @ F) * same)
                H.sub_(FP.T @ FP)
        if single_class:
            _mirror_upper_(H)
        return H


def _panels(m: int) -> list[int]:
    """Panel boundaries for symmetric Gram products: 2 panels (3/4 of the flops) for big blocks."""
    return [0, m] if m < 256 else [0, m // 2, m]


def _gram_upper_(H: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> None:
    """H += AᵀB on the diagonal panels and above (AᵀB is symmetric); see :func:`_mirror_upper_`."""
    cuts = _panels(H.shape[0])
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        H[lo:hi, lo:].addmm_(A[:, lo:hi].T, B[:, lo:])


def _mirror_upper_(H: torch.Tensor) -> None:
    """Copy the panels above the diagonal below it (inverse of the panel split of :func:`_gram_upper_`)."""
    cuts = _panels(H.shape[0])
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        H[hi:, lo:hi] = H[lo:hi, hi:].T


def local_model(head: Head, feats: FeatureSet, idx: torch.Tensor, l2: float = 0.0,
                device: str | torch.device = "auto", dtype: str | torch.dtype = "float32",
                chunk: int = 16384, subsample: int | None = None, seed: int = 0) -> LocalModel:
    """Local quadratic model of one block (see :class:`HeadStats` for many blocks of one head)."""
    return HeadStats(head, feats, l2, device, dtype, chunk, subsample, seed).block(idx)


def _check_idx(idx: torch.Tensor, C: int, D: int) -> torch.Tensor:
    idx = torch.as_tensor(idx).long().reshape(-1)
    if idx.numel() == 0:
        raise QuboNNError("block is empty: expected at least one weight index")
    total = C * (D + 1)
    if int(idx.min()) < 0 or int(idx.max()) >= total:
        raise QuboNNError(f"block indices must lie in [0, C·(D+1) = {total}), got [{int(idx.min())}, {int(idx.max())}]")
    if torch.unique(idx).numel() != idx.numel():
        raise QuboNNError("block indices must be unique")
    return idx.sort().values


def select_blocks(kind: str, num_classes: int, dim: int, *, per_block: int = 1, size: int | None = None,
                  num_blocks: int | None = None, grad: torch.Tensor | None = None,
                  diag: torch.Tensor | None = None, saliency: str = "grad", seed: int = 0) -> list[torch.Tensor]:
    """Partition (or select) the C·(D+1) flat weight indices into blocks.

    - ``rows``: ``per_block`` classes per block, each with its D weights and bias (cross-class
      terms included when ``per_block > 1``).
    - ``columns``: ``per_block`` features (columns of W, the bias counting as feature D) across
      all classes.
    - ``topk``: the ``size·num_blocks`` most salient weights, ``size`` per block; saliency is
      ``grad`` = |g| or ``obd`` = g²/H_ii (needs ``grad`` and, for obd, ``diag``).
    - ``random``: a seeded permutation of all weights cut into blocks of ``size``.
    """
    C, D1 = num_classes, dim + 1
    if kind not in BLOCK_KINDS:
        raise QuboNNError(f"block kind must be one of {BLOCK_KINDS}, got {kind!r}")
    if per_block < 1:
        raise QuboNNError(f"per_block must be >= 1, got {per_block}")
    all_idx = torch.arange(C * D1).reshape(C, D1)
    if kind == "rows":
        return [all_idx[s:s + per_block].reshape(-1) for s in range(0, C, per_block)]
    if kind == "columns":
        return [all_idx[:, s:s + per_block].T.reshape(-1).sort().values for s in range(0, D1, per_block)]
    if size is None or size < 1:
        raise QuboNNError(f"block kind {kind!r} needs size >= 1 (weights per block), got {size}")
    if kind == "random":
        perm = torch.randperm(C * D1, generator=torch_generator(seed))
        return [perm[s:s + size].sort().values for s in range(0, C * D1, size)]
    if saliency not in SALIENCIES:
        raise QuboNNError(f"saliency must be one of {SALIENCIES}, got {saliency!r}")
    if grad is None or (saliency == "obd" and diag is None):
        raise QuboNNError("top-k blocks need the gradient (and the Hessian diagonal for 'obd')")
    score = grad.abs() if saliency == "grad" else grad ** 2 / diag.clamp_min(1e-12)
    k = min(C * D1, size * (num_blocks or 1))
    top = torch.topk(score.cpu(), k).indices
    return [top[s:s + size].sort().values for s in range(0, k, size)]
