"""Decode a solution back into a head: inject each block's best sample where the true loss falls."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qubo_nn.errors import QuboNNError
from qubo_nn.io.blocks import read_block
from qubo_nn.io.heads import load_head_file
from qubo_nn.io.manifest import read_manifest
from qubo_nn.io.solutions import best_bits, read_samples, read_solution

if TYPE_CHECKING:
    from qubo_nn.data.featureset import FeatureSet


def solution_manifest(sol: dict[str, Any], build: str | os.PathLike | None = None) -> dict[str, Any]:
    """The build manifest a solution belongs to: ``build`` (a build folder or its manifest.json)
    when given, else the one ``solution.json`` names (relative to the solution folder; absolute
    in solutions written before paths were relative)."""
    if build is not None:
        return read_manifest(build)
    if not sol.get("manifest"):
        raise QuboNNError("decode needs a solution of blocks built by `qubo-nn build` (a manifest with the head "
                          "and encodings); this solution was made from plain QUBO files")
    path = Path(sol["dir"]) / sol["manifest"]   # an absolute name stays absolute
    if not path.exists():
        raise QuboNNError(f"the build of this solution is not at {str(path)!r} (moved?): expected it there, "
                          f"relative to the solution folder; point at it with build= (--build DIR)")
    return read_manifest(path)


def decode(solution_dir: str | os.PathLike, out: str | os.PathLike | None = None,
           feats: FeatureSet | None = None, test: FeatureSet | None = None, device: str = "auto",
           progress: bool = False, build: str | os.PathLike | None = None, force: bool = False,
           cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Apply the best samples of a solution to the build's head, block by block; evaluate it.

    ``feats``/``test`` default to the features the manifest references
    (``get_features(FeatureConfig(**manifest["features"]))``, from ``cache_dir`` when given,
    else the cache directory the build recorded). ``build``: the build folder (or manifest),
    when it is no longer where the solution says. The new head is written to ``out`` (a
    ``{"weight", "bias"}`` state dict) only after everything was read and checked.

    Per block, in block order, the best sample is injected only if (1) it predicts a gain over
    the block's current weights (energy of the current bits) and (2) the TRUE loss of the head
    so far, with the block's step, is lower than without it (as the hybrid accepts steps).
    Otherwise the block keeps its weights (``kept_current``; ``reason`` says which test failed).
    ``force`` injects every block's best sample whatever the two tests say.

    Returns predicted_loss (L0 + Σ_k (E_k − L0) over what was injected), true_loss and accuracy
    of the new head (and of the old one: loss_before, accuracy_before), taylor_error = true −
    predicted, the block counts, test accuracy when a test set is known, and per block its
    energies, true losses before/after its step, and the decision.
    """
    import torch

    from qubo_nn.core.head import evaluate
    from qubo_nn.curvature.head_stats import HeadStats
    from qubo_nn.core.bqm import apply
    from qubo_nn.runtime import atomic_path, resolve_device, tensor_digest

    t0 = time.perf_counter()
    sol = read_solution(solution_dir)
    man = solution_manifest(sol, build)
    if sol.get("head_digest") and sol["head_digest"] != man["head_digest"]:
        raise QuboNNError(f"solution was made for head {sol['head_digest']}, the manifest now holds "
                          f"{man['head_digest']} (rebuilt since?)")
    head0 = load_head_file(Path(man["dir"]) / man["head"])
    if tensor_digest(head0.W, head0.b) != man["head_digest"]:
        raise QuboNNError(f"{man['head']} does not match the digest in its manifest (altered after the build)")
    by_name = {Path(b["file"]).name: b for b in man["blocks"]}
    L0 = float(man["L0"])
    chosen = []   # (row, block path, enc, x_best, e_best, x_cur, e_cur), all read and checked first
    for row in sol["blocks"]:
        name = Path(row["file"]).name
        if name not in by_name:
            raise QuboNNError(f"block file {row['file']!r} of the solution is not in the build at {man['dir']!r}")
        path = by_name[name]["path"]
        bqm, enc, _ = read_block(path, man["head_digest"], man["features_digest"])
        ss = read_samples(Path(sol["dir"]) / row["samples"])
        x = best_bits(ss, bqm, where=f"block {row['block_id']}")
        labels = list(range(len(x)))
        x_cur = enc.current_bits().numpy().astype(x.dtype)
        e_best = float(bqm.energies((x[None, :], labels))[0])
        e_cur = float(bqm.energies((x_cur[None, :], labels))[0])
        chosen.append((row, enc, x, e_best, x_cur, e_cur))

    if feats is None:
        if not man.get("features"):
            raise QuboNNError("the manifest names no features (built from features in memory): pass feats=")
        from qubo_nn.data.features import FeatureConfig, get_features

        fcfg = FeatureConfig(**man["features"])
        if cache_dir is not None:
            fcfg.cache_dir = str(cache_dir)
        res = get_features(fcfg, progress=progress)
        feats, test = res.train, (res.test if test is None else test)
    features_match = tensor_digest(feats.X, feats.y) == man["features_digest"]
    dev = resolve_device(device)
    l2 = float(man.get("config", {}).get("l2", 0.0))
    stats = HeadStats(head0, feats, l2=l2, device=dev, dtype="float64")
    loss_now = stats.loss
    head = head0.clone()
    per_block = []
    from tqdm.auto import tqdm

    for row, enc, x, e_best, x_cur, e_cur in tqdm(chosen, desc="decode", unit="block", disable=not progress):
        new_values = enc.decode(torch.as_tensor(x))
        trial = stats.trial_loss(enc.idx, new_values)
        if force:
            accept, reason = True, "forced"
        elif not e_best < e_cur:
            accept, reason = False, "no predicted gain"
        elif not trial < loss_now:
            accept, reason = False, "true loss rose"
        else:
            accept, reason = True, "true loss fell"
        rec = {"block_id": row["block_id"], "energy_best": e_best, "energy_current": e_cur,
               "predicted_decrease": e_cur - e_best, "true_loss_before": loss_now, "true_loss_with_step": trial,
               "kept_current": not accept, "reason": reason, "weights": enc.m}
        if accept:
            stats.update(enc.idx, new_values)
            head = apply(head, enc, x)
            loss_now = trial
        rec["energy"] = e_best if accept else e_cur
        rec["moved"] = int((enc.decode(torch.as_tensor(x)) != enc.theta0).sum()) if accept else 0
        per_block.append(rec)
    predicted = L0 + sum(b["energy"] - L0 for b in per_block)

    feats_d = feats.to(dev)
    loss0, acc0 = evaluate(head0.to(dev), feats_d, l2)
    loss1, acc1 = evaluate(head.to(dev), feats_d, l2)
    report: dict[str, Any] = {
        "blocks": len(per_block),
        "blocks_kept_current": sum(b["kept_current"] for b in per_block),
        "blocks_no_predicted_gain": sum(b["reason"] == "no predicted gain" for b in per_block),
        "blocks_true_loss_rose": sum(b["reason"] == "true loss rose" for b in per_block),
        "force": bool(force),
        "L0": L0,
        "predicted_loss": predicted,
        "loss_before": loss0,
        "true_loss": loss1,
        "taylor_error": loss1 - predicted,
        "predicted_decrease": L0 - predicted,
        "true_decrease": loss0 - loss1,
        "accuracy_before": acc0,
        "accuracy": acc1,
        "features_match": features_match,
        "build": man["dir"],
        "l2": l2,
        "per_block": per_block,
    }
    if test is not None:
        test_d = test.to(dev)
        report["test_loss_before"], report["test_accuracy_before"] = evaluate(head0.to(dev), test_d, 0.0)
        report["test_loss"], report["test_accuracy"] = evaluate(head.to(dev), test_d, 0.0)
    if out is not None:
        with atomic_path(out) as tmp:
            torch.save(head.state_dict(), tmp)
        report["head"] = str(out)
    report["wall_time_s"] = time.perf_counter() - t0
    return report
