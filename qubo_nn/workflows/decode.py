"""Decode a solution back into a head: inject each block's best sample where the one step policy accepts it."""
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
from qubo_nn.steps.policy import DEFAULT_ACCEPT_TOL, REASON_NO_GAIN, REASON_ROSE

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
           cache_dir: str | os.PathLike | None = None, accept_tol: float = DEFAULT_ACCEPT_TOL) -> dict[str, Any]:
    """Apply the best samples of a solution to the build's head, block by block; evaluate it.

    ``feats``/``test`` default to the features the manifest references
    (``get_features(FeatureConfig(**manifest["features"]))``, from ``cache_dir`` when given,
    else the cache directory the build recorded). ``build``: the build folder (or manifest),
    when it is no longer where the solution says. The new head is written to ``out`` (a
    ``{"weight", "bias"}`` state dict) only after everything was read and checked; an ``out``
    that is one of the inputs (the build's ``head.pt``, its manifest, a block file or sidecar,
    ``solution.json``, a samples file) is refused before anything is read.

    Per block, in block order, the best sample is injected by the one step policy of
    :mod:`qubo_nn.steps.policy` (the hybrid's): only if (1) it predicts a gain over the block's
    current weights (energy of the current bits) and (2) the TRUE loss of the head so far with
    the block's step is below the loss without it by more than ``accept_tol`` (nats), on the
    exact trial and again after the update. Otherwise the block keeps its weights
    (``kept_current``; ``reason`` says which test failed). ``force`` injects every block's best
    sample whatever the two tests say.

    Returns predicted_loss (L0 + Σ_k (E_k − L0) over what was injected), true_loss and accuracy
    of the new head (and of the old one: loss_before, accuracy_before), taylor_error = true −
    predicted, the block counts, test accuracy when a test set is known, and per block a step
    record (:func:`qubo_nn.steps.policy.step_record`: accepted, reason, losses, predicted_change =
    E_best − L0, attempts) with its energies and the decision.
    """
    import torch

    from qubo_nn.runtime import atomic_path

    t0 = time.perf_counter()
    sol = read_solution(solution_dir)
    man = solution_manifest(sol, build)
    if out is not None:
        check_out_is_no_input(out, sol, man)
    head0 = _read_head(sol, man)
    chosen = _read_blocks(sol, man)
    feats, test = _features(man, feats, test, cache_dir, progress)
    res = _inject(head0, feats, man, chosen, device, force, accept_tol, progress)
    report = _report(head0, res, feats, test, man, force)
    report["accept_tol"] = float(accept_tol)
    if out is not None:
        with atomic_path(out) as tmp:
            torch.save(res["head"].state_dict(), tmp)
        report["head"] = str(out)
    report["wall_time_s"] = time.perf_counter() - t0
    return report


def decode_inputs(sol: dict[str, Any], man: dict[str, Any]) -> set[Path]:
    """Every file decode reads (resolved): the build's head, manifest, block files and sidecars,
    ``solution.json`` and the samples files."""
    root = Path(man["dir"])
    names = [man["head"], "manifest.json"] + [n for b in man.get("blocks", [])
                                            for n in (b.get("file"), b.get("sidecar"), b.get("npz"), b.get("levels"))
                                            if n]
    files = {(root / n).resolve() for n in names}
    files.add((Path(sol["dir"]) / "solution.json").resolve())
    files.update((Path(sol["dir"]) / row["samples"]).resolve() for row in sol.get("blocks", []) if row.get("samples"))
    return files


def check_out_is_no_input(out: str | os.PathLike, sol: dict[str, Any], man: dict[str, Any]) -> None:
    """Refuse an ``out`` that would overwrite an input of the decode (issue 23)."""
    target = Path(out).resolve()
    if target in decode_inputs(sol, man):
        what = "the build's head" if target == (Path(man["dir"]) / man["head"]).resolve() else "one of its inputs"
        raise QuboNNError(f"decode would overwrite {what} {str(out)!r}: expected an --out that is none of the "
                          f"build's or the solution's files, got that file")


def _read_head(sol: dict[str, Any], man: dict[str, Any]):
    from qubo_nn.runtime import tensor_digest

    if sol.get("head_digest") and sol["head_digest"] != man["head_digest"]:
        raise QuboNNError(f"solution was made for head {sol['head_digest']}, the manifest now holds "
                          f"{man['head_digest']} (rebuilt since?)")
    head0 = load_head_file(Path(man["dir"]) / man["head"])
    if tensor_digest(head0.W, head0.b) != man["head_digest"]:
        raise QuboNNError(f"{man['head']} does not match the digest in its manifest (altered after the build)")
    return head0


def _read_blocks(sol: dict[str, Any], man: dict[str, Any]) -> list[dict[str, Any]]:
    """Per solution row, all read and checked before any step: its encoding, best and current bits
    and their energies, and the block's build damping."""
    from qubo_nn.steps.policy import sample_energies

    by_name = {Path(b["file"]).name: b for b in man["blocks"]}
    chosen = []
    for row in sol["blocks"]:
        name = Path(row["file"]).name
        if name not in by_name:
            raise QuboNNError(f"block file {row['file']!r} of the solution is not in the build at {man['dir']!r}")
        bqm, enc, side = read_block(by_name[name]["path"], man["head_digest"], man["features_digest"],
                                    require_sidecar=True)
        ss = read_samples(Path(sol["dir"]) / row["samples"])
        x = best_bits(ss, bqm, where=f"block {row['block_id']}")
        x_cur = enc.current_bits().numpy().astype(x.dtype)
        e_best, e_cur = sample_energies(bqm, x, x_cur)
        damping = by_name[name].get("damping", side.get("damping") if isinstance(side, dict) else None)
        chosen.append({"row": row, "enc": enc, "x": x, "e_best": e_best, "e_cur": e_cur,
                       "damping": None if damping is None else float(damping)})
    return chosen


def _features(man, feats, test, cache_dir, progress):
    if feats is not None:
        return feats, test
    if not man.get("features"):
        raise QuboNNError("the manifest names no features (built from features in memory): pass feats=")
    from qubo_nn.data.features import FeatureConfig, get_features

    fcfg = FeatureConfig(**man["features"])
    if cache_dir is not None:
        fcfg.cache_dir = str(cache_dir)
    res = get_features(fcfg, progress=progress)
    return res.train, (res.test if test is None else test)


def _inject(head0, feats, man, chosen, device, force: bool, tol: float, progress: bool) -> dict[str, Any]:
    """Blocks in order, each decided by the step policy (or forced); the new head and the records."""
    import torch
    from tqdm.auto import tqdm

    from qubo_nn.core.bqm import apply
    from qubo_nn.curvature.head_stats import HeadStats
    from qubo_nn.runtime import resolve_device
    from qubo_nn.steps import policy as sp

    dev = resolve_device(device)
    l2 = float(man.get("config", {}).get("l2", 0.0))
    stats = HeadStats(head0, feats, l2=l2, device=dev, dtype="float64")
    L0, head, per_block = float(man["L0"]), head0.clone(), []
    for c in tqdm(chosen, desc="decode", unit="block", disable=not progress):
        enc, x, before = c["enc"], c["x"], stats.loss
        values = enc.decode(torch.as_tensor(x))
        att = sp.attempt_record(0, c["damping"], c["e_best"], c["e_cur"], L0)
        if force:
            trial = stats.trial_loss(enc.idx, values)
            stats.update(enc.idx, values)
            sp.decide(att, True, sp.REASON_FORCED, before, stats.loss, trial)
        elif not sp.predicts_gain(c["e_best"], c["e_cur"]):
            sp.decide(att, False, sp.REASON_NO_GAIN, before, before, stats.trial_loss(enc.idx, values))
        else:
            ok, trial, after = sp.try_step(stats, enc.idx, values, before, tol)
            sp.decide(att, ok, sp.REASON_FELL if ok else sp.REASON_ROSE, before, after, trial)
        if att["accepted"]:
            head = apply(head, enc, x)
        per_block.append(_block_record(c, att, enc, values))
    return {"head": head, "per_block": per_block, "dev": dev, "l2": l2}


def _block_record(c: dict[str, Any], att: dict[str, Any], enc, values) -> dict[str, Any]:
    from qubo_nn.steps.policy import step_record

    accepted = att["accepted"]
    return step_record([att], block_id=c["row"]["block_id"], energy_best=c["e_best"], energy_current=c["e_cur"],
                       predicted_decrease=c["e_cur"] - c["e_best"], true_loss_before=att["loss_before"],
                       true_loss_with_step=att["trial_loss"], kept_current=not accepted, weights=enc.m,
                       energy=c["e_best"] if accepted else c["e_cur"],
                       moved=int((values != enc.theta0).sum()) if accepted else 0)


def _report(head0, res: dict[str, Any], feats, test, man: dict[str, Any], force: bool) -> dict[str, Any]:
    from qubo_nn.core.head import evaluate
    from qubo_nn.runtime import tensor_digest

    per_block, dev, l2, head = res["per_block"], res["dev"], res["l2"], res["head"]
    L0 = float(man["L0"])
    predicted = L0 + sum(b["energy"] - L0 for b in per_block)
    feats_d = feats.to(dev)
    loss0, acc0 = evaluate(head0.to(dev), feats_d, l2)
    loss1, acc1 = evaluate(head.to(dev), feats_d, l2)
    report: dict[str, Any] = {
        "blocks": len(per_block),
        "blocks_kept_current": sum(b["kept_current"] for b in per_block),
        "blocks_no_predicted_gain": sum(b["reason"] == REASON_NO_GAIN for b in per_block),
        "blocks_true_loss_rose": sum(b["reason"] == REASON_ROSE for b in per_block),   # rose or fell <= tol
        "force": bool(force), "L0": L0, "predicted_loss": predicted, "loss_before": loss0, "true_loss": loss1,
        "taylor_error": loss1 - predicted, "predicted_decrease": L0 - predicted, "true_decrease": loss0 - loss1,
        "accuracy_before": acc0, "accuracy": acc1,
        "features_match": tensor_digest(feats.X, feats.y) == man["features_digest"],
        "build": man["dir"], "l2": l2, "per_block": per_block,
    }
    if test is not None:
        test_d = test.to(dev)
        report["test_loss_before"], report["test_accuracy_before"] = evaluate(head0.to(dev), test_d, 0.0)
        report["test_loss"], report["test_accuracy"] = evaluate(head.to(dev), test_d, 0.0)
    return report
