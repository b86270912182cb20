"""The instance recipes of nnqubo-v1: seeded, each one -> a :class:`SuiteInstance`.

Sources (stated sizes, all on CPU, float64):

- ``head-*``: class rows of an L2 head (``train.sgd.convex_optimum``, l2 = 1e-3, 50 L-BFGS iterations) on the realistic
  synthetic features (``data.featureset.realistic_features``: 2,000 train points, 128-d, 100 classes,
  seed 0, a reduced size of the default 50,000 × 512). Row c's energy is GPTQ's objective
  E(k) = ½(w(k) − w₀)ᵀ(H + μI)(w(k) − w₀), H the row's exact cross-entropy Hessian block
  (``curvature.head_stats.HeadStats``), μ = 0.01·mean diag H, w(k) on the signed b-bit grid
  (``workflows.head_quantize.grid_scale``/``qrange``): the second-order predicted increase of the
  training loss when the row is quantized (the gradient term is dropped, as in GPTQ). ``loss_offset`` = the fp32 head's training loss, so loss_offset + E is the
  predicted loss. Encodings: binary (b variables per weight), unary and domain-wall (2^b − 1).
- ``binary-row``: the same rows on the symmetric 1-bit grid w = s·(k − ½), s = 2·mean|w₀|.
- ``ternary-row``: the same rows on w = α·k, k ∈ {−1, 0, 1} (α of Ternary Weight Networks: the mean
  |w₀| above 0.7·mean|w₀|), unary encoding (2 variables per weight).
- ``network-*``: output-channel rows of a conv layer of a randomly initialised (seed 0) ResNet-18
  on 64 digits images at 32 px; H = 2·XXᵀ/P (the layer Gram of ``curvature.layer_gram``, P columns)
  + μI: E = the mean squared change of the layer's output per position (+ damping) when the row is
  quantized to 2 bits (signed grid, ``w2``) or to the symmetric binary grid (``binary``).
- ``prune``: channel-pruning masks (``workflows.prune.objective``) of the same network's prunable
  layers: E(s) = ‖diag(γ/σ)(Σ s_i Y_i − Y)‖² (the next BatchNorm-weighted reconstruction error of
  the layer's output) + λ(Σs − k)², k = half the channels, λ = ``safe_penalty`` (exact: the minimum
  is a mask with Σs = k). No integer problem, no bound.
- ``multirow``: blocks of several consecutive class rows of the head above (the cross-row CE
  Hessian couples them), binary encoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

from qubo_nn.core.problem import IntegerProblem
from qubo_nn.suite.instance import SuiteInstance, problem_bqm

HEAD_FEATURES = {"n_train": 2000, "n_test": 500, "dim": 128, "num_classes": 100, "seed": 0}
#: the head: mean CE + (l2/2)‖W‖² by full-batch L-BFGS from zeros, stopped after max_iter iterations
HEAD_FIT = {"l2": 1e-3, "max_iter": 50}
NETWORK = {"arch": "resnet18", "weights": "none (random init)", "seed": 0, "dataset": "digits",
           "images": 64, "image_size": 32}


@dataclass(frozen=True)
class Recipe:
    """One instance: ``family``, a unique ``name``, the builder ``make(**args)`` and its args."""

    name: str
    family: str
    args: dict

    def build(self) -> SuiteInstance:
        return BUILDERS[self.family](self)


# ------------------------------------------------------------------ shared sources (cached per process)

@lru_cache(maxsize=1)
def _head():
    from qubo_nn.curvature.head_stats import HeadStats
    from qubo_nn.data.featureset import realistic_features
    from qubo_nn.train.sgd import convex_optimum

    tr, _ = realistic_features(**HEAD_FEATURES)
    head, info = convex_optimum(tr, l2=HEAD_FIT["l2"], device="cpu", max_iter=HEAD_FIT["max_iter"], tol=1e-9)
    stats = HeadStats(head.to("cpu", torch.float64), tr, 0.0, "cpu", "float64", 4096, None, 0)
    return head, stats, info


def _head_model(rows: list[int]):
    """(H + μI, w₀, L0) of the head's class ``rows`` (weights only, no bias), μ = 0.01·mean diag H."""
    head, stats, _ = _head()
    D = head.dim
    idx = torch.cat([torch.arange(c * (D + 1), c * (D + 1) + D) for c in rows])
    model = stats.block(idx)
    H = model.H.double().cpu().numpy().copy()
    H[np.diag_indices_from(H)] += 0.01 * float(np.diag(H).mean())
    return H, model.theta0.double().cpu().numpy(), float(model.L0)


@lru_cache(maxsize=1)
def _network():
    from qubo_nn.data.datasets import load_dataset
    from qubo_nn.nets.backbones import build_model
    from qubo_nn.train.pretrain import materialize

    model = build_model("resnet18", "none", num_classes=10, seed=NETWORK["seed"])
    ds = load_dataset("digits", "train", NETWORK["image_size"])
    X, _ = materialize(ds, range(NETWORK["images"]))
    return model, X


@lru_cache(maxsize=4)
def _layer_gram(layer: str) -> np.ndarray:
    from qubo_nn.curvature.layer_gram import capture_gram

    model, X = _network()
    acc = capture_gram(model, layer, [X])
    return (acc.hessian() / acc.count).numpy()


# ------------------------------------------------------------------ grids

def _signed(w0: np.ndarray, rows: int, bits: int):
    """Per-row scale of the signed b-bit grid (``quantize``'s), its (qmin, qmax)."""
    from qubo_nn.workflows.head_quantize import grid_scale, qrange

    W = torch.as_tensor(w0.reshape(rows, -1))
    s = grid_scale(W, bits).double().numpy().reshape(rows, 1)
    return np.broadcast_to(s, W.shape).reshape(-1).copy(), qrange(bits)


def _shifted(H, w0, scale, kmin: int, kmax: int, const: float = 0.0) -> IntegerProblem:
    """E over k' = k − kmin ∈ [0, kmax − kmin] of ½(s·k − w₀)ᵀH(s·k − w₀)."""
    return IntegerProblem(H, w0 - scale * kmin, scale, 0, kmax - kmin, const)


def _integer_instance(r: Recipe, p: IntegerProblem, kind: str, levels: int, meta: dict) -> SuiteInstance:
    bqm = problem_bqm(p, kind, levels)
    meta = {"encoding": kind, "levels": levels, "weights": p.m, **meta}
    return SuiteInstance(r.name, r.family, bqm, meta, p, kind, levels)


def _head_source(rows) -> dict:
    _, _, info = _head()
    return {"source": "realistic synthetic features " + ", ".join(f"{k}={v}" for k, v in HEAD_FEATURES.items())
            + f"; head: convex_optimum l2={HEAD_FIT['l2']}, {HEAD_FIT['max_iter']} L-BFGS iterations (train loss "
            f"{info.get('loss'):.4f}); class rows {list(rows)}"}


def build_head(r: Recipe) -> SuiteInstance:
    rows, bits, kind = r.args["rows"], r.args["bits"], r.args["encoding"]
    H, w0, L0 = _head_model(rows)
    s, (qmin, qmax) = _signed(w0, len(rows), bits)
    p = _shifted(H, w0, s, qmin, qmax)
    meta = {**_head_source(rows), "grid": f"signed {bits}-bit w = s·k, k in [{qmin}, {qmax}]",
            "energy": "second-order predicted increase of the mean training cross-entropy when the rows are "
                      "quantized: ½(w − w0)ᵀ(H + μI)(w − w0)", "loss_offset": L0,
            "loss_offset_meaning": "fp32 head's mean training cross-entropy: loss_offset + energy = predicted loss"}
    return _integer_instance(r, p, kind, 2 ** bits, meta)


def build_binary(r: Recipe) -> SuiteInstance:
    H, w0, L0, meta = _row_source(r)
    a = float(np.abs(w0).mean())
    s = 2.0 * a if a > 0 else 1.0
    p = IntegerProblem(H, w0 + s / 2, s, 0, 1)          # w = s·k − s/2, k ∈ {0, 1}
    meta["grid"] = "symmetric binary w = s·(k − 1/2), k in {0, 1}, s = 2·mean|w0|"
    return _integer_instance(r, p, "binary", 2, meta)


def build_ternary(r: Recipe) -> SuiteInstance:
    H, w0, L0, meta = _row_source(r)
    a = np.abs(w0)
    big = a > 0.7 * a.mean()
    alpha = float(a[big].mean()) if big.any() else 1.0
    p = IntegerProblem(H, w0 + alpha, alpha, 0, 2)      # w = α·(k − 1), k ∈ {0, 1, 2}
    meta["grid"] = "ternary w = α·(k − 1), k in {0, 1, 2}, α of TWN (mean |w0| above 0.7·mean|w0|)"
    return _integer_instance(r, p, "unary", 3, meta)


def _row_source(r: Recipe):
    """H, w₀, L0 and metadata of a head row or a network row (``args["source"]``)."""
    if r.args["source"] == "head":
        rows = r.args["rows"]
        H, w0, L0 = _head_model(rows)
        meta = {**_head_source(rows), "loss_offset": L0,
                "loss_offset_meaning": "fp32 head's mean training cross-entropy: loss_offset + energy = predicted loss",
                "energy": "second-order predicted increase of the mean training cross-entropy: ½(w − w0)ᵀ(H + μI)(w − w0)"}
        return H, w0, L0, meta
    layer, row = r.args["layer"], r.args["row"]
    model, _ = _network()
    G = _layer_gram(layer).copy()
    G[np.diag_indices_from(G)] += 0.01 * float(np.diag(G).mean())
    w0 = model.get_submodule(layer).weight.detach()[row].reshape(-1).double().numpy()
    meta = {"source": f"{layer} output channel {row} of a random-init ResNet-18 (seed 0) on 64 digits images at 32 px",
            "energy": "mean squared change of the layer's output per position when the row is quantized "
                      "(+ damping 0.01·mean diag): ½(w − w0)ᵀ(2XXᵀ/P + μI)(w − w0)", "loss_offset": 0.0,
            "loss_offset_meaning": "the fp32 row's own error (0)"}
    return G, w0, 0.0, meta


def build_network(r: Recipe) -> SuiteInstance:
    if r.args["grid"] == "binary":
        return build_binary(Recipe(r.name, r.family, {**r.args, "source": "network"}))
    H, w0, L0, meta = _row_source(Recipe(r.name, r.family, {**r.args, "source": "network"}))
    s, (qmin, qmax) = _signed(w0, 1, 2)
    p = _shifted(H, w0, s, qmin, qmax)
    meta["grid"] = f"signed 2-bit w = s·k, k in [{qmin}, {qmax}] (W2)"
    return _integer_instance(r, p, "binary", 4, meta)


def build_prune(r: Recipe) -> SuiteInstance:
    from qubo_nn.workflows.prune.network import prunable_layers, stats_for
    from qubo_nn.workflows.prune.objective import prune_bqm, pruning_problem

    model, X = _network()
    pl = {p.consumer: p for p in prunable_layers(model)}[r.args["layer"]]
    stats, scale = stats_for(model, pl, X)
    prob = pruning_problem(stats, model.get_submodule(pl.consumer).weight.detach(), scale)
    k = prob.n // 2
    bqm, info = prune_bqm(prob, k, "penalty", "safe")
    meta = {"source": f"channel pruning of {pl.consumer} ({prob.n} input channels) of a random-init ResNet-18 "
                      "(seed 0) on 64 digits images at 32 px; keep k = n/2",
            "energy": "BatchNorm-weighted reconstruction error of the layer's output ‖diag(γ/σ)(Σ s_i Y_i − Y)‖² "
                      "+ λ(Σs − k)² (λ = safe_penalty: every minimum keeps exactly k channels)",
            "loss_offset": 0.0, "loss_offset_meaning": "energy is the error itself on masks with Σs = k",
            "keep": k, "penalty": info["penalty"], "relative_to": prob.yy}
    return SuiteInstance(r.name, r.family, bqm, meta)


BUILDERS: dict[str, Callable[[Recipe], SuiteInstance]] = {
    "head": build_head, "binary-row": build_binary, "ternary-row": build_ternary,
    "network": build_network, "prune": build_prune, "multirow": build_head,
}


def recipes(size: str = "full") -> list[Recipe]:
    """The suite's recipes; ``size="small"``: the few small ones ``make test`` regenerates."""
    out: list[Recipe] = []
    head_rows = (0, 1, 2, 3)
    for c in head_rows:
        for bits in (1, 2, 4):
            out.append(Recipe(f"head-binary-b{bits}-r{c}", "head", {"rows": [c], "bits": bits, "encoding": "binary"}))
    for kind in ("unary", "domain-wall"):
        for c in head_rows:
            for bits in (1, 2):
                out.append(Recipe(f"head-{kind}-b{bits}-r{c}", "head", {"rows": [c], "bits": bits, "encoding": kind}))
        out.append(Recipe(f"head-{kind}-b4-r0", "head", {"rows": [0], "bits": 4, "encoding": kind}))
    for c in range(6):
        out.append(Recipe(f"binary-row-r{c}", "binary-row", {"source": "head", "rows": [c]}))
    for c in range(6):
        out.append(Recipe(f"ternary-row-r{c}", "ternary-row", {"source": "head", "rows": [c]}))
    for layer in ("layer1.0.conv1", "layer2.0.conv2"):
        for row in (0, 1):
            for grid in ("w2", "binary"):
                out.append(Recipe(f"network-{grid}-{layer}-c{row}", "network", {"layer": layer, "row": row, "grid": grid}))
    for layer in ("layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2", "layer2.1.conv2", "layer3.0.conv2",
                  "layer3.1.conv2"):
        out.append(Recipe(f"prune-{layer}", "prune", {"layer": layer}))
    for rows, bits in (((0, 1), 2), ((0, 1, 2, 3), 2), ((0, 1, 2, 3), 4), (tuple(range(8)), 4)):
        out.append(Recipe(f"multirow-{len(rows)}x-b{bits}", "multirow",
                          {"rows": list(rows), "bits": bits, "encoding": "binary"}))
    if size == "small":
        keep = {"network-binary-layer1.0.conv1-c0", "network-w2-layer1.0.conv1-c1", "prune-layer1.0.conv2"}
        out = [r for r in out if r.name in keep]
    elif size != "full":
        raise ValueError(size)
    return out
