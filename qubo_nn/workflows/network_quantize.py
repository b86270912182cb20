"""Layer-wise rounding of every conv and linear layer of a network (GPTQ's sequential scheme).

Pipeline (:func:`quantize_network`):

1. BatchNorm is folded into the preceding convolutions (:func:`nets.bn.fold_batchnorm`).
2. The weight layers are visited in forward order (:func:`nets.layers.weight_layers`). For
   layer ℓ, the calibration images run through the network whose layers before ℓ are already
   quantized, and ℓ's inputs are accumulated into its Gram: H = 2 X Xᵀ (D × D,
   :func:`curvature.layer_gram.capture_gram`; im2col for convs; the pass stops at ℓ).
3. Each output channel r is a row w_r of the C_out × D weight view, quantized to w = s_r · k with
   k ∈ [−2^(b−1), 2^(b−1) − 1] and the per-row scale s_r of :func:`qubo_nn.core.scales.grid_scale` (``mse``
   rule by default): the same grid for every method. b = ``bits``, except the first and last
   weight layer, which get ``first_last_bits`` (default 8). With ``grid`` ``binary``/``ternary`` the
   other layers get codes ±1 (or −1/0/+1) and a per-row α alternated with GPTQ's codes
   (:func:`qubo_nn.workflows.spin_quantize.spin_layer`, issue 24; ``bits`` is then unused).
4. Rounding minimises the row's reconstruction error ½ (s k − w)ᵀ H̃ (s k − w) with H̃ = H + μI
   (μ = ``damping`` · mean diag H). Columns are permuted by act-order (descending diag H) and cut
   into groups of at most ``group_size``; group by group, each row's integer problem has the
   group Hessian and fed-back target of :mod:`curvature.sequential` (error feedback: later columns
   absorb the rounding error of earlier groups, exactly as GPTQ's lazy block update), so group
   energies add up to the row's. Methods:

   - ``rtn``: k = clamp(round(w/s)) (no H, no feedback);
   - ``gptq``: GPTQ with act-order (:func:`qubo_nn.core.kernels.gptq_rows`: column by column
     through U, all rows at once, float64);
   - ``cd`` / ``qubo``: GPTQ's levels first; then each (row, group) :class:`levels.IntegerProblem`
     is re-solved by ``levels.solve_levels`` (``cd``: coordinate descent with pair moves from
     GPTQ act-order; ``qubo``: the best classical answer, then annealing rounds of a level-window
     QUBO in ``encoding`` with ``sampler``, polished) and kept when its energy is not higher, row
     after row while time is left: ``solve_budget_s`` seconds for the whole network, shared among
     layers by their weight count and among a layer's groups evenly (unspent time carries over).
     Rows past the budget keep GPTQ's answer; ``coverage`` records the solved fraction. The same
     budget for cd and qubo puts them on an equal wall-time footing.

   With ``bn_correct`` the quantized convolutions then get the folded-network form of BatchNorm
   re-estimation (:mod:`nets.bn_correct`: each conv's output mean and spread matched, in forward
   order, to the fp32 network's on the calibration images; levels unchanged, row scales times a_c).

5. The per-layer relative reconstruction error ‖(W − Ŵ) X‖² / ‖W X‖² = tr(ΔGΔᵀ)/tr(WGWᵀ)
   (G = X Xᵀ, undamped, the layer's calibration inputs) and the end-to-end test loss
   (cross-entropy) and accuracy are recorded. The quantized network is written back into the
   plain architecture (:func:`nets.bn.unfold_batchnorm`) so ``--weights PATH`` loads it.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from qubo_nn.curvature.layer_gram import capture_gram
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import ExecutorConfig
from qubo_nn.nets.bn import fold_batchnorm, unfold_batchnorm
from qubo_nn.nets.layers import weight_layers
from qubo_nn.core.layout import apply_levels, row_view
from qubo_nn.core.grid import MAX_CODE_BITS, check_bits
from qubo_nn.core.scales import check_grid_config, grid_scale
from qubo_nn.runtime import atomic_path, resolve_device, versions
from qubo_nn.runtime import calibration_indices  # noqa: F401  (re-exported: the CLI and experiments draw from here)
from qubo_nn.workflows.layer_rounding import (_solver_executor, gptq_grouped, round_grouped_layer,  # noqa: F401
                                             round_layer, spin_rows, sum_group_infos)  # (re-exported)

NETWORK_METHODS = ("rtn", "gptq", "cd", "qubo")


@dataclass
class NetworkQuantizeConfig:
    """Bits, method and the layer-wise rounding settings (see the module docstring)."""

    bits: int = 4
    grid: str = "signed"
    method: str = "gptq"
    first_last_bits: int = 8
    calib: int = 256
    group_size: int = 64
    act_order: bool = True
    damping: float = 0.01
    scale: str = "mse"
    encoding: str = "unary"
    sampler: str = "batch-anneal"
    sampler_params: dict = field(default_factory=dict)
    solve_budget_s: float = 1200.0
    batch_size: int = 64
    factor_dtype: str = "float32"
    seed: int = 0
    device: str = "auto"
    executor: str = "threads"
    workers: int = 1
    ray_address: str | None = None
    bn_correct: bool = False

    def executor_config(self) -> ExecutorConfig:
        """Where the (row, group) re-solves of cd/qubo run (see :mod:`qubo_nn.execution.executors`)."""
        return ExecutorConfig(executor=self.executor, workers=self.workers, ray_address=self.ray_address)

    def validate(self) -> None:
        check_grid_config(self.grid, self.bits, self.scale)
        self.executor_config().validate()
        check_bits(self.first_last_bits, MAX_CODE_BITS, "first_last_bits")
        if self.method not in NETWORK_METHODS:
            raise QuboNNError(f"method must be one of {NETWORK_METHODS}, got {self.method!r}")
        for name in ("calib", "group_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise QuboNNError(f"{name} must be a positive integer, got {v!r}")
        if not self.damping > 0:
            raise QuboNNError(f"damping must be > 0 (the Gram of a few calibration images is singular), "
                              f"got {self.damping!r}")
        if not self.solve_budget_s > 0:
            raise QuboNNError(f"solve_budget_s must be > 0, got {self.solve_budget_s!r}")


@dataclass
class NetworkQuantizeResult:
    """The quantized network (plain architecture, eval mode), its levels and scales, the record."""

    model: nn.Module
    levels: dict[str, torch.Tensor]      # layer -> C_out × D int8 levels (row view)
    scales: dict[str, torch.Tensor]      # layer -> C_out float32 scales
    bits: dict[str, int]
    record: dict[str, Any]

    def save(self, path: str | os.PathLike) -> dict[str, Any] | None:
        """Checkpoint ``{"state_dict", "levels", "scales", "bits"}`` (atomic): ``--weights PATH`` loads it.

        A ``.safetensors`` path gets the compact export instead (packed codes + row scales,
        :func:`qubo_nn.io.packed.save_packed`; returns its record: bytes before/after, bits per weight)."""
        if Path(path).suffix == ".safetensors":
            from qubo_nn.io.packed import save_packed

            return save_packed(path, self.model.state_dict(), self.levels, self.scales, self.bits)
        with atomic_path(path) as tmp:
            torch.save({"state_dict": self.model.state_dict(), "levels": self.levels, "scales": self.scales,
                        "bits": self.bits}, tmp)


def quantize_network(model: nn.Module, calib_images: torch.Tensor, test_images: torch.Tensor,
                     test_labels: torch.Tensor, cfg: NetworkQuantizeConfig, progress: bool = False) -> NetworkQuantizeResult:
    """Quantize every conv/linear layer of ``model`` (a copy; BN folded first); see the module docstring.

    ``calib_images`` (N × 3 × S × S) are the calibration inputs; the test set is used only to
    report end-to-end loss and accuracy of the fp32, folded and quantized networks.
    """
    from qubo_nn.train.pretrain import evaluate_model

    cfg.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    original = model.to("cpu").eval()
    folded, pairs = fold_batchnorm(original)
    folded = folded.to(device)
    names = weight_layers(folded, calib_images[:1].to(device))
    batches = [calib_images[i:i + cfg.batch_size].to(device) for i in range(0, len(calib_images), cfg.batch_size)]
    total_weights = sum(folded.get_submodule(n).weight.numel() for n in names)
    fp_loss, fp_acc = evaluate_model(original, test_images, test_labels)
    levels, scales, bits_of, layers = {}, {}, {}, []
    reference = copy.deepcopy(folded) if cfg.bn_correct else None   # the fp32 folded network's statistics
    with _solver_executor(cfg) as executor:   # one for the whole network: Ray starts once, not per group
        for i, name in enumerate(tqdm(names, desc=f"{cfg.method} W{cfg.bits}", disable=not progress)):
            layers.append(_quantize_layer(folded, names, i, name, batches, cfg, total_weights, executor,
                                          levels, scales, bits_of, device))
    correction = None
    if reference is not None:
        folded, correction = _correct_statistics(reference, folded, calib_images.to(device), cfg, scales,
                                                 original, pairs, test_images, test_labels)
    folded = folded.to("cpu").eval()
    plain = _plain_copy(original)
    plain.load_state_dict(unfold_batchnorm(folded, original, pairs))
    q_loss, q_acc = evaluate_model(plain, test_images, test_labels)
    record = {"config": asdict(cfg), "layers": layers, "folded_pairs": len(pairs),
              "reference": {"test_loss": fp_loss, "test_acc": fp_acc},
              "quantized": {"test_loss": q_loss, "test_acc": q_acc},
              "calib_images": int(len(calib_images)), "seconds": time.perf_counter() - t_start,
              "loadavg": list(os.getloadavg()), "device": str(device), "torch_threads": torch.get_num_threads(),
              "versions": versions()}
    if correction is not None:
        record["bn_correct"] = correction
    return NetworkQuantizeResult(plain.eval(), levels, scales, bits_of, record)


def _correct_statistics(reference: nn.Module, folded: nn.Module, images: torch.Tensor, cfg: NetworkQuantizeConfig,
                        scales: dict[str, torch.Tensor], original: nn.Module, pairs: list, test_images: torch.Tensor,
                        test_labels: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """Bias + variance correction of every quantized conv (:func:`nets.bn_correct.correct_statistics`,
    the folded-network form of re-estimating BatchNorm after quantization). The levels stay; each
    corrected row's scale becomes a_c·s_c (``scales`` updated). Returns the corrected network and
    the record: test loss/accuracy before the correction and per-layer statistics errors."""
    from qubo_nn.nets.bn_correct import correct_statistics
    from qubo_nn.train.pretrain import evaluate_model

    t0 = time.perf_counter()
    plain = _plain_copy(original)
    plain.load_state_dict(unfold_batchnorm(copy.deepcopy(folded).cpu().eval(), original, pairs))
    before_loss, before_acc = evaluate_model(plain, test_images, test_labels)
    corrected, info = correct_statistics(reference.eval(), folded.eval(), images, cfg.batch_size)
    for name, inf in info.items():
        scales[name] = (scales[name].to(torch.float64) * inf["scale_factor"].cpu().to(torch.float64)).float()
    return corrected, {"before": {"test_loss": before_loss, "test_acc": before_acc},
                       "note": "layers[].rel_error are before the correction",
                       "seconds": time.perf_counter() - t0,
                       "layers": {n: {k: inf[k] for k in ("mean_error_rel", "std_ratio_min", "std_ratio_max")}
                                  for n, inf in info.items()}}


def _quantize_layer(folded: nn.Module, names: list[str], i: int, name: str, batches: list[torch.Tensor],
                    cfg: NetworkQuantizeConfig, total_weights: int, executor: Any, levels: dict, scales: dict,
                    bits_of: dict, device: torch.device) -> dict[str, Any]:
    """Round layer ``name`` (the i-th weight layer) of ``folded`` in place; fill ``levels``/``scales``/
    ``bits_of``; return the layer's record."""
    layer = folded.get_submodule(name)
    bits = cfg.first_last_bits if i in (0, len(names) - 1) else cfg.bits
    t0 = time.perf_counter()
    acc = capture_gram(folded, name, batches)
    t_capture = time.perf_counter() - t0
    W = row_view(layer.weight.detach()).to("cpu", torch.float64)
    budget = cfg.solve_budget_s * W.numel() / total_weights
    t1 = time.perf_counter()
    spin = cfg.grid != "signed" and i not in (0, len(names) - 1)
    if spin:   # issue 24: codes ±1 (or −1/0/+1) and a per-row α alternated with the codes
        H = acc.hessian().cpu()
        if acc.grouped:     # each conv group's rows against that group's Hessian, its share of the budget
            from qubo_nn.runtime import child_seed

            G = H.shape[0]
            per = W.shape[0] // G
            parts = [spin_rows(W[g * per:(g + 1) * per], H[g], bits, cfg, budget * per / W.shape[0],
                                child_seed(i, g), executor) for g in range(G)]
            k, scale = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            info = sum_group_infos([p[2] for p in parts])
        else:
            k, scale, info = spin_rows(W, H, bits, cfg, budget, i, executor)
        bits = 2 if cfg.grid == "ternary" else 1
    elif acc.grouped:     # grouped/depthwise conv: the rows of each group against that group's Hessian
        scale = grid_scale(W, bits, cfg.scale)
        k, info = round_grouped_layer(W, acc.hessian().cpu(), scale, bits, cfg, budget, i, executor)
    else:
        scale = grid_scale(W, bits, cfg.scale)
        k, info = round_layer(W, acc.hessian().cpu(), scale, bits, cfg, budget_s=budget, layer_seed=i,
                              executor=executor)
    t_solve = time.perf_counter() - t1
    written = apply_levels(layer.weight.detach().cpu(), k, scale.float())
    with torch.no_grad():
        layer.weight.copy_(written.to(device))
    G = acc.gram.cpu()
    dW = row_view(written).to(torch.float64) - W      # the error of the weights the network holds
    if acc.grouped:
        Gw, Gd = (t.reshape(G.shape[0], -1, t.shape[1]) for t in (W, dW))
        rel = float(torch.einsum("grd,gde,gre->", Gd, G, Gd) / torch.einsum("grd,gde,gre->", Gw, G, Gw))
    else:
        rel = float(torch.einsum("rd,de,re->", dW, G, dW) / torch.einsum("rd,de,re->", W, G, W))
    levels[name], scales[name], bits_of[name] = k.to(torch.int8), scale.float(), bits
    return {"layer": name, "shape": list(layer.weight.shape), "rows": W.shape[0], "dim": W.shape[1],
            "bits": bits, "rel_error": rel, "capture_s": t_capture, "solve_s": t_solve,
            "calib_columns": acc.count, **info}


def _plain_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cpu().eval()
