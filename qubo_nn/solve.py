"""Solve QUBO files (one file or a whole build's manifest) and decode the solutions into a head.

:func:`solve` reads blocks through :mod:`qubo_nn.formats` (files written by ``qubo-nn build``,
or plain dimod/COO/.qubo files made elsewhere), samples each with :func:`qubo_nn.samplers.sample`
(blocks of a manifest in parallel over ``workers`` threads: dwave-neal and dwave-tabu release
the GIL) and writes into ``out_dir``:

- ``<block stem>.samples.json``: the block's SampleSet (``SampleSet.to_serializable()``), lowest
  energy first, with sampler, parameters, seed and timings in its ``info``;
- ``solution.json`` (last): the configuration, package versions and one row per block: best
  energy (for a block built here, the predicted loss in nats per sample of the head with only
  that block changed), energy of the current weights, sampling time.

Nothing is written unless every block succeeds: block results go to a staging directory inside
``out_dir`` and are moved into place at the end, then ``solution.json`` is written.

:func:`decode` turns a solution of builder blocks back into a head: for each block the best
sample's bits become weights (``Encoding.decode`` via :func:`qubo_nn.qubo.apply`); it reports
the true loss and accuracy of the new head (:func:`qubo_nn.head.evaluate`) beside the predicted
loss L0 + Σ_k (E_k − L0), which is exact to second order for one block and ignores the
curvature between blocks (cross terms) for several.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dimod
import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import QuboNNError
from .featureset import FeatureSet
from .formats import MANIFEST_FORMAT, MANIFEST_NAME, read_block, read_manifest, read_tagged_json
from .head import Head, evaluate
from .qubo import apply
from .runtime import atomic_path, atomic_write_json, resolve_device, tensor_digest, versions
from .samplers import DEFAULT_SAMPLER, SAMPLERS, child_seed, get_sampler
from .samplers import sample as run_sampler
from .samplers.base import check_seed

SOLUTION_NAME = "solution.json"
SOLUTION_FORMAT = "qubo-nn-solution"
SOLUTION_VERSION = 1
SAMPLES_SUFFIX = ".samples.json"
INITS = ("auto", "current", "random")


@dataclass
class SolveConfig:
    """How to solve. ``params`` go to the sampler (validated against its ``parameters``).

    ``seed``: block k is sampled with seed ``child_seed(seed, k)`` (recorded per block).
    ``init``: initial states for samplers that take them: ``current`` = the bits of the current
    weights (builder blocks only), ``random`` = the sampler's own, ``auto`` = current when the
    block has an encoding and the sampler takes initial states, else random.
    ``keep``: samples stored per block (lowest energy first; None = all).
    """

    sampler: str = DEFAULT_SAMPLER
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    polish: bool = False
    init: str = "auto"
    workers: int = 1
    keep: int | None = None

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise QuboNNError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        check_seed(self.seed)
        if self.init not in INITS:
            raise QuboNNError(f"init must be one of {INITS}, got {self.init!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise QuboNNError(f"workers must be a positive integer, got {self.workers!r}")
        if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
            raise QuboNNError(f"keep must be a positive integer or None, got {self.keep!r}")
        if not isinstance(self.params, dict):
            raise QuboNNError(f"params must be a dict of sampler options, got {type(self.params).__name__}")
        for own in ("seed", "initial_states"):
            if own in self.params:
                raise QuboNNError(f"give {own!r} through the solve options, not through the sampler params")


# --------------------------------------------------------------------------- sources

def _json_format(path: Path) -> str | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj.get("format") if isinstance(obj, dict) else None


def plan(source: str | os.PathLike) -> dict[str, Any]:
    """What ``source`` holds: ``{"kind": "manifest"|"file", "blocks": [...], "manifest": dict|None}``.

    A directory or a ``manifest.json`` is a whole build; anything else is one QUBO file (or a
    block sidecar ``.json``), with an encoding when a sidecar lies beside it.
    """
    path = Path(source)
    if not path.exists():
        raise QuboNNError(f"{str(path)!r} does not exist: expected a QUBO file or a build's manifest.json")
    if path.is_dir() or (path.suffix.lower() == ".json" and _json_format(path) == MANIFEST_FORMAT):
        man = read_manifest(path)
        if not man.get("blocks"):
            raise QuboNNError(f"manifest {str(path)!r} lists no blocks")
        blocks = [{"block_id": int(b["block_id"]), "path": b["path"], "L0": b.get("L0")} for b in man["blocks"]]
        return {"kind": "manifest", "blocks": blocks, "manifest": man,
                "manifest_path": str(Path(man["dir"]) / MANIFEST_NAME)}
    sibling = path.parent / MANIFEST_NAME
    return {"kind": "file", "blocks": [{"block_id": 0, "path": str(path.resolve()), "L0": None}], "manifest": None,
            "manifest_path": str(sibling.resolve()) if sibling.is_file() else None}


# --------------------------------------------------------------------------- solve

def solve(source: str | os.PathLike, out_dir: str | os.PathLike, cfg: SolveConfig | None = None,
          progress: bool = False) -> dict[str, Any]:
    """Solve every block of ``source`` (a QUBO file, a build directory or its manifest.json).

    Returns the summary also written to ``out_dir/solution.json``. Raises :class:`QuboNNError`
    (and writes nothing) when a file is missing, corrupt, truncated or does not match its
    sidecar/manifest, or when the sampler refuses its options.
    """
    cfg = cfg or SolveConfig()
    cfg.validate()
    get_sampler(cfg.sampler)  # missing extras fail before any file is read
    t0 = time.perf_counter()
    src = plan(source)
    man = src["manifest"]
    digests = (man["head_digest"], man["features_digest"]) if man else (None, None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuboNNError(f"output {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".solve-", dir=out))
    rows: list[dict[str, Any]] = []
    try:
        with cf.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="solve") as pool:
            futures = [pool.submit(_solve_block, blk, cfg, staging, digests) for blk in src["blocks"]]
            try:
                with tqdm(total=len(futures), desc=f"solve ({cfg.sampler})", unit="block",
                          disable=not progress) as bar:
                    for fut in cf.as_completed(futures):
                        rows.append(fut.result())
                        bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        rows.sort(key=lambda r: r["block_id"])
        (out / SOLUTION_NAME).unlink(missing_ok=True)  # the old summary would name replaced files
        for r in rows:
            os.replace(staging / r["samples"], out / r["samples"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = _summary(src, rows, cfg, time.perf_counter() - t0)
    atomic_write_json(out / SOLUTION_NAME, summary)
    return summary


def _solve_block(blk: dict[str, Any], cfg: SolveConfig, staging: Path,
                 digests: tuple[str | None, str | None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    bqm, enc, side = read_block(blk["path"], *digests)
    t1 = time.perf_counter()
    seed = child_seed(cfg.seed, blk["block_id"])
    current = None
    if enc is not None:
        current = enc.current_bits().cpu().numpy().astype(np.int8)
        if current.shape[0] != bqm.num_variables:
            raise QuboNNError(f"block {blk['path']!r}: encoding has {current.shape[0]} bits, QUBO "
                              f"{bqm.num_variables} variables")
    takes_init = "initial_states" in get_sampler(cfg.sampler).parameters
    init = None
    if cfg.init == "current" and current is None:
        raise QuboNNError(f"init 'current' needs a block built by qubo-nn (with a sidecar); {blk['path']!r} has none")
    if cfg.init == "current" and not takes_init:
        raise QuboNNError(f"sampler {cfg.sampler!r} does not take initial states (init 'current')")
    if cfg.init in ("current", "auto") and current is not None and takes_init:
        init = (current[None, :], list(range(len(current))))
    ss = run_sampler(bqm, cfg.sampler, seed=seed, polish=cfg.polish, initial_states=init, **cfg.params)
    t2 = time.perf_counter()
    if cfg.keep is not None and len(ss) > cfg.keep:
        ss = ss.truncate(cfg.keep)
    stem = Path(blk["path"]).name.split(".")[0]
    name = f"{stem}{SAMPLES_SUFFIX}"
    atomic_write_json(staging / name, ss.to_serializable())
    t3 = time.perf_counter()
    best = float(ss.first.energy) if len(ss) else float(bqm.offset)
    e_cur = float(bqm.energies((current[None, :], list(range(len(current)))))[0]) if current is not None else None
    info = ss.info
    return {
        "block_id": blk["block_id"],
        "file": str(blk["path"]),
        "samples": name,
        "builder_block": enc is not None,
        "num_variables": bqm.num_variables,
        "num_interactions": bqm.num_interactions,
        "num_reads": len(ss),
        "best_energy": best,
        "current_energy": e_cur,
        "predicted_decrease": (e_cur - best) if e_cur is not None else None,
        "L0": side.get("L0", blk.get("L0")),
        "seed": info.get("seed"),
        "initial_states": "current" if init is not None else "random",
        "params": info.get("params"),
        "sampler_energy_error": info.get("sampler_energy_error"),
        "timings": {"read_s": t1 - t0, "sample_s": info.get("wall_time_s", t2 - t1), "write_s": t3 - t2,
                    "total_s": t3 - t0},
    }


def _summary(src: dict[str, Any], rows: list[dict[str, Any]], cfg: SolveConfig, seconds: float) -> dict[str, Any]:
    man = src["manifest"]
    builder = all(r["builder_block"] for r in rows)
    L0 = man["L0"] if man else (rows[0]["L0"] if len(rows) == 1 else None)
    totals: dict[str, Any] = {
        "blocks": len(rows),
        "variables": sum(r["num_variables"] for r in rows),
        "wall_time_s": seconds,
        "sample_time_s": sum(r["timings"]["sample_s"] for r in rows),
        "mean_block_time_s": float(np.mean([r["timings"]["total_s"] for r in rows])),
    }
    if builder and L0 is not None:
        totals["L0"] = L0
        totals["predicted_loss"] = L0 + sum(r["best_energy"] - L0 for r in rows)
        totals["predicted_decrease"] = L0 - totals["predicted_loss"]
    return {
        "format": SOLUTION_FORMAT,
        "version": SOLUTION_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": src["kind"],
        "source": str(Path(src["blocks"][0]["path"]).resolve()) if src["kind"] == "file" else src["manifest_path"],
        "manifest": src["manifest_path"] if builder else None,
        "head_digest": man["head_digest"] if man else None,
        "features_digest": man["features_digest"] if man else None,
        "config": asdict(cfg),
        "versions": versions(),
        "totals": totals,
        "blocks": rows,
    }


# --------------------------------------------------------------------------- decode

def read_solution(solution_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``solution.json`` of a solve (``solution_dir`` is its directory or the file)."""
    path = Path(solution_dir)
    if path.is_dir():
        path = path / SOLUTION_NAME
    if not path.is_file():
        raise QuboNNError(f"no {SOLUTION_NAME} at {str(path)!r} (run `qubo-nn solve ... --out DIR` first)")
    sol = read_tagged_json(path, SOLUTION_FORMAT, SOLUTION_VERSION, "solution", "solution")
    if not isinstance(sol.get("blocks"), list) or not sol["blocks"]:
        raise QuboNNError(f"solution {str(path)!r} lists no blocks")
    sol["dir"] = str(path.parent.resolve())
    return sol


def read_samples(path: str | os.PathLike) -> dimod.SampleSet:
    """A SampleSet written by :func:`solve` (``SampleSet.to_serializable`` as JSON)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
        return dimod.SampleSet.from_serializable(obj)
    except FileNotFoundError as exc:
        raise QuboNNError(f"samples file {str(path)!r} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QuboNNError(f"samples file {str(path)!r} is not valid JSON (truncated?): {exc}") from exc
    except Exception as exc:  # dimod's deserializer raises assorted errors on foreign JSON
        raise QuboNNError(f"samples file {str(path)!r} is not a serialized dimod SampleSet: "
                          f"{type(exc).__name__}: {exc}") from exc


def best_bits(ss: dimod.SampleSet, bqm: dimod.BinaryQuadraticModel, where: str = "") -> np.ndarray:
    """The lowest-energy sample of ``ss`` as bits in variable order 0..n−1, checked against ``bqm``:
    same variables, and the stored energy equals ``bqm``'s (else the two do not belong together)."""
    n = bqm.num_variables
    if len(ss) == 0:
        raise QuboNNError(f"{where}: the solution holds no samples")
    if set(ss.variables) != set(bqm.variables) or set(bqm.variables) != set(range(n)):
        raise QuboNNError(f"{where}: the solution's {len(ss.variables)} variables do not match the QUBO's {n}")
    if ss.vartype is not dimod.BINARY:
        ss = ss.change_vartype(dimod.BINARY, inplace=False)
    i = int(np.argmin(ss.record.energy))
    row = ss.record.sample[i]
    x = np.asarray([row[ss.variables.index(v)] for v in range(n)], dtype=np.int8)
    e = float(bqm.energies((x[None, :], list(range(n))))[0])
    stored = float(ss.record.energy[i])
    if not np.isclose(e, stored, rtol=1e-9, atol=1e-9):
        raise QuboNNError(f"{where}: the stored energy {stored!r} of the best sample differs from the QUBO's "
                          f"{e!r}: the solution was made for a different QUBO")
    return x


def load_head_file(path: str | os.PathLike) -> Head:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise QuboNNError(f"head file {str(path)!r} does not exist") from exc
    except Exception as exc:  # zip/pickle errors of a damaged file
        raise QuboNNError(f"head file {str(path)!r} is not a torch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(sd, dict):
        raise QuboNNError(f"head file {str(path)!r} must hold a dict with 'weight' and 'bias', got {type(sd).__name__}")
    return Head.from_state_dict(sd)


def decode(solution_dir: str | os.PathLike, out: str | os.PathLike | None = None,
           feats: FeatureSet | None = None, test: FeatureSet | None = None, device: str = "auto",
           progress: bool = False) -> dict[str, Any]:
    """Apply the best sample of every block of a solution to the build's head; evaluate it.

    ``feats``/``test`` default to the features the manifest references
    (``get_features(FeatureConfig(**manifest["features"]))``). The new head is written to
    ``out`` (a ``{"weight", "bias"}`` state dict) only after everything was read and checked.

    A block whose best sample predicts no gain over its current weights (energy of the current
    bits) keeps them (``kept_current`` in its row; ``blocks_kept_current`` in all).

    Returns predicted_loss (L0 + Σ_k (E_k − L0)), true_loss and accuracy of the new head (and
    of the old one: loss_before, accuracy_before), taylor_error = true − predicted, test
    accuracy when a test set is known, and per-block energies.
    """
    t0 = time.perf_counter()
    sol = read_solution(solution_dir)
    if not sol.get("manifest"):
        raise QuboNNError("decode needs a solution of blocks built by `qubo-nn build` (a manifest with the head "
                          "and encodings); this solution was made from plain QUBO files")
    man = read_manifest(sol["manifest"])
    if sol.get("head_digest") and sol["head_digest"] != man["head_digest"]:
        raise QuboNNError(f"solution was made for head {sol['head_digest']}, the manifest now holds "
                          f"{man['head_digest']} (rebuilt since?)")
    head0 = load_head_file(Path(man["dir"]) / man["head"])
    if tensor_digest(head0.W, head0.b) != man["head_digest"]:
        raise QuboNNError(f"{man['head']} does not match the digest in its manifest (altered after the build)")
    by_path = {str(Path(b["path"]).resolve()): b for b in man["blocks"]}
    head = head0.clone()
    per_block = []
    L0 = float(man["L0"])
    for row in tqdm(sol["blocks"], desc="decode", unit="block", disable=not progress):
        key = str(Path(row["file"]).resolve())
        if key not in by_path:
            raise QuboNNError(f"block file {row['file']!r} of the solution is not in manifest {sol['manifest']!r}")
        bqm, enc, _ = read_block(key, man["head_digest"], man["features_digest"])
        ss = read_samples(Path(sol["dir"]) / row["samples"])
        x = best_bits(ss, bqm, where=f"block {row['block_id']}")
        labels = list(range(len(x)))
        e = float(bqm.energies((x[None, :], labels))[0])
        # A sampler may end above the current weights (a hot anneal that did not come back down):
        # never inject a step whose predicted loss is worse than keeping the block as it is.
        x_cur = enc.current_bits().numpy().astype(x.dtype)
        e_cur = float(bqm.energies((x_cur[None, :], labels))[0])
        kept = not e < e_cur
        if kept:
            x, e = x_cur, e_cur
        head = apply(head, enc, x)
        per_block.append({"block_id": row["block_id"], "energy": e, "energy_current": e_cur,
                          "predicted_decrease": L0 - e, "kept_current": kept,
                          "weights": enc.m, "moved": int((enc.decode(x) != enc.theta0).sum())})
    predicted = L0 + sum(b["energy"] - L0 for b in per_block)

    if feats is None:
        if not man.get("features"):
            raise QuboNNError("the manifest names no features (built from features in memory): pass feats=")
        from .features import FeatureConfig, get_features

        res = get_features(FeatureConfig(**man["features"]), progress=progress)
        feats, test = res.train, (res.test if test is None else test)
    features_match = tensor_digest(feats.X, feats.y) == man["features_digest"]
    dev = resolve_device(device)
    l2 = float(man.get("config", {}).get("l2", 0.0))
    feats_d = feats.to(dev)
    loss0, acc0 = evaluate(head0.to(dev), feats_d, l2)
    loss1, acc1 = evaluate(head.to(dev), feats_d, l2)
    report: dict[str, Any] = {
        "blocks": len(per_block),
        "blocks_kept_current": sum(b["kept_current"] for b in per_block),
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
