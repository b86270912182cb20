"""Solve QUBO files (one file or a whole build's manifest) and decode the solutions into a head.

:func:`solve` reads blocks through :mod:`qubo_nn.io.bqm_files` (files written by ``qubo-nn build``,
or plain dimod/COO/.qubo files made elsewhere), samples each with :func:`qubo_nn.samplers.sample`
(blocks of a manifest in parallel over ``workers`` threads: dwave-neal and dwave-tabu release
the GIL) and writes into ``out_dir``:

- ``<block stem>.samples.json``: the block's SampleSet (``SampleSet.to_serializable()``), lowest
  energy first, with sampler, parameters, seed and timings in its ``info``;
- ``solution.json`` (last): the configuration, package versions and one row per block: best
  energy (for a block built here, the predicted loss in nats per sample of the head with only
  that block changed), energy of the current weights, sampling time.

Samplers that work on levels (``gptq``, ``cd``, ``pipeline``: ``properties["needs"] ==
"integer_form"``) get each block's integer form from its ``block_NNNNN.levels.npz``
(:func:`qubo_nn.io.blocks.read_integer_form`); a bare file, or a build made before those files
existed, is refused with a QuboNNError naming the block.

Nothing is written unless every block succeeds: block results go to a staging directory inside
``out_dir`` and are moved into place at the end, then ``solution.json`` is written.

:func:`decode` turns a solution of builder blocks back into a head: for each block the best
sample's bits become weights (``Encoding.decode`` via :func:`qubo_nn.core.bqm.apply`); it reports
the true loss and accuracy of the new head (:func:`qubo_nn.core.head.evaluate`) beside the predicted
loss L0 + Σ_k (E_k − L0), which is exact to second order for one block and ignores the
curvature between blocks (cross terms) for several.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from qubo_nn.execution import block_task
# decode and the readers live in qubo_nn.io.solutions (torch only inside its functions); re-exported here
from qubo_nn.io.solutions import (SOLUTION_FORMAT, SOLUTION_NAME, SOLUTION_VERSION, best_bits, read_samples,
    read_solution)
from qubo_nn.workflows.decode import decode
from qubo_nn.io.heads import load_head_file
from qubo_nn.errors import QuboNNError
from qubo_nn.execution.executors import ExecutorConfig, check_available, map_unordered
from qubo_nn.io.manifest import MANIFEST_FORMAT, MANIFEST_NAME, read_manifest
from qubo_nn.io.blocks import is_sidecar, read_block, read_integer_form
from qubo_nn.io.json_files import check_fields
from qubo_nn.io.locks import folder_lock
from qubo_nn.runtime import atomic_write_json, sha256_file, to_jsonable, versions
from qubo_nn.samplers import DEFAULT_SAMPLER, SAMPLERS, child_seed, get_sampler
from qubo_nn.samplers.base import check_seed, jsonable
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
    ``executor``, ``workers``, ``ray_address``, ``max_in_flight``: where the blocks are solved
    (:class:`qubo_nn.execution.executors.ExecutorConfig`: ``workers`` threads, or Ray tasks on a local
    instance of ``workers`` CPUs or on the cluster at ``ray_address``); they do not change the
    samples.
    """

    sampler: str = DEFAULT_SAMPLER
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    polish: bool = False
    init: str = "auto"
    workers: int = 1
    keep: int | None = None
    executor: str = "threads"
    ray_address: str | None = None
    max_in_flight: int | None = None

    def executor_config(self) -> ExecutorConfig:
        return ExecutorConfig(executor=self.executor, workers=self.workers, ray_address=self.ray_address,
                              max_in_flight=self.max_in_flight)

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
        if "integer_form" in self.params:
            raise QuboNNError("the integer form comes from the build's files (block_NNNNN.levels.npz), "
                              "not through the sampler params")
        self.executor_config().validate()


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

_SAMPLES_PATTERN = f"*{SAMPLES_SUFFIX}"
_RESUME_KEY = "qubo_nn_solve"  # in each samples file's info: what made it (resume check) and its row


def solve(source: str | os.PathLike, out_dir: str | os.PathLike, cfg: SolveConfig | None = None,
          progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Solve every block of ``source`` (a QUBO file, a build directory or its manifest.json).

    The driver (this process) reads and checks each block, then hands it to the executor
    (``cfg.executor``: threads here, or Ray tasks that get the model as compact arrays, see
    :mod:`qubo_nn.execution.block_task`); at most ``max_in_flight`` blocks are read ahead. As each block
    finishes, its ``<stem>.samples.json`` is written (atomically) into ``out_dir``, with what
    made it (source digests, sampler, params, seeds) and its summary row in the SampleSet's
    ``info``; ``solution.json`` is written last. Block k is sampled with seed
    ``child_seed(cfg.seed, k)`` whatever the executor, so a seeded run gives the same samples
    with threads and with Ray.

    Resume: a block whose samples file in ``out_dir`` was made from the same source files
    (sha256) with the same sampler, params, seed, polish, init and keep is not solved again
    (an interrupted run keeps its finished blocks; rerun the same command). Any other file of
    a solve in ``out_dir`` (``solution.json`` of another source or other settings, samples of
    other blocks or made otherwise) makes the call refuse, unless ``overwrite``: then those
    files (and only those) are removed first and every block is solved afresh.

    Returns the summary also written to ``out_dir/solution.json``; its rows name the block files
    relative to ``out_dir``. Raises :class:`QuboNNError` when a file is missing, corrupt,
    truncated or does not match its sidecar/manifest, or when the sampler refuses its options;
    then nothing of this call is left behind (not even ``out_dir`` if it created it). Other
    interruptions (Ctrl-C, a lost Ray cluster) keep the finished blocks for a rerun.
    """
    cfg = cfg or SolveConfig()
    cfg.validate()
    get_sampler(cfg.sampler)  # missing extras fail before any file is read
    ex_cfg = cfg.executor_config()
    check_available(ex_cfg)   # so does a missing Ray
    t0 = time.perf_counter()
    src = plan(source)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuboNNError(f"output {str(out)!r} exists and is not a directory")
    created = [p for p in (out, *out.absolute().parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuboNNError(f"cannot create the output folder {str(out)!r}: {exc.strerror}; expected a "
                          f"writable folder name") from None
    try:
        with folder_lock(out):   # one solve per folder at a time
            return _solve_locked(src, out, cfg, ex_cfg, t0, progress, overwrite)
    except (QuboNNError, KeyboardInterrupt):
        for path in created:   # leave no folder this call created and left empty
            try:
                path.rmdir()
            except OSError:
                break
        raise


def _solve_locked(src: dict[str, Any], out: Path, cfg: SolveConfig, ex_cfg: ExecutorConfig, t0: float,
                  progress: bool, overwrite: bool) -> dict[str, Any]:
    done = _prepare_out(out, src, cfg, overwrite)
    todo = [blk for blk in src["blocks"] if blk["block_id"] not in done]
    rows: dict[int, dict[str, Any]] = dict(done)
    written: list[Path] = []
    nodes: dict[int, str] = {}
    pending: dict[int, dict[str, Any]] = {}
    tasks = _read_tasks(todo, src, cfg, pending, pack=ex_cfg.ships_tasks)
    desc = f"solve ({cfg.sampler}, {cfg.executor})" + (f", {len(done)} resumed" if done else "")
    # nothing left to solve (all resumed): no executor, no Ray instance started
    results = (map_unordered(block_task.sample_task, tasks, ex_cfg, progress=progress, desc=desc, total=len(todo),
                             nodes=nodes) if todo else (r for r in ()))
    try:
        with contextlib.closing(results):
            for index, result in results:
                row = _finish_block(pending.pop(index), result, out, nodes.get(index))
                written.append(out / row["samples"])
                rows[row["block_id"]] = row
    except QuboNNError:
        for path in written:  # bad input: leave nothing of this call
            path.unlink(missing_ok=True)
        raise
    ordered = [rows[blk["block_id"]] for blk in src["blocks"]]
    summary = to_jsonable(_summary(src, ordered, cfg, time.perf_counter() - t0, out))
    atomic_write_json(out / SOLUTION_NAME, summary)
    return summary


def _prepare_out(out: Path, src: dict[str, Any], cfg: SolveConfig, overwrite: bool) -> dict[int, dict[str, Any]]:
    """Check what ``out`` already holds; return the rows of the blocks that need no new solve.

    Refuses (unless ``overwrite``, which removes the solve's files and returns {}) when ``out``
    holds samples of other blocks, samples made otherwise, or a solution.json of another
    source or other settings. Leftovers of an interrupted write (hidden temporaries, the
    ``.solve-*`` staging folders of older versions) are removed in any case.
    """
    if not out.is_dir():
        return {}
    for tmp in [*out.glob(f".*{SAMPLES_SUFFIX}.*.tmp"), *out.glob(f".{SOLUTION_NAME}.*.tmp")]:
        tmp.unlink(missing_ok=True)
    for stale in out.glob(".solve-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    ours = sorted(out.glob(_SAMPLES_PATTERN))
    solution = out / SOLUTION_NAME
    if overwrite:
        for path in ours:
            path.unlink()
        solution.unlink(missing_ok=True)
        return {}
    by_name = {_samples_name(blk): blk for blk in src["blocks"]}
    done: dict[int, dict[str, Any]] = {}
    foreign: list[str] = []
    damaged: list[str] = []
    for path in ours:
        blk = by_name.get(path.name)
        row = _resumable(path, blk, cfg, out) if blk is not None else None
        if row is _DAMAGED:
            damaged.append(path.name)
        elif row is None:
            foreign.append(path.name)
        else:
            done[blk["block_id"]] = row
    problems = []
    if damaged:
        problems.append(f"{len(damaged)} damaged samples file(s) (truncated, not a SampleSet, or its row does not "
                        f"match its samples: {', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''})")
    if foreign:
        problems.append(f"{len(foreign)} samples file(s) of other blocks or made with other settings or source "
                        f"files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")
    if solution.is_file():
        try:
            old = json.loads(solution.read_text())
            same = (old.get("source") == _relative(_source_path(src), out)
                    and _settings(old.get("config", {})) == _settings(asdict(cfg)))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            same = False
        if not same:
            problems.append(f"a {SOLUTION_NAME} of another source or other settings")
    if problems:
        raise QuboNNError(f"output folder {str(out)!r} holds {' and '.join(problems)}: expected an empty folder "
                          f"or one of an interrupted run of the same solve; pass overwrite (--overwrite) to "
                          f"replace them, or choose another output folder")
    return done


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape the samples (not where or how fast they ran)."""
    return {k: config.get(k) for k in ("sampler", "params", "seed", "polish", "init", "keep")}


def _samples_name(blk: dict[str, Any]) -> str:
    return f"{Path(blk['path']).name.split('.')[0]}{SAMPLES_SUFFIX}"


def _source_digests(path: str | os.PathLike) -> dict[str, str | None]:
    """sha256 of a block's QUBO file and of its encoding (.npz, when a sidecar names one), and of
    its integer form (``levels_sha256``, only when the sidecar names a .levels.npz)."""
    path = Path(path)
    side_path = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
    file, npz, lev = path, None, None
    if is_sidecar(side_path):
        try:
            side = json.loads(side_path.read_text())
            file = side_path.parent / side["file"]
            npz = side_path.parent / side["npz"]
            lev = side_path.parent / side["levels"] if "levels" in side else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            pass
    out = {"file_sha256": sha256_file(file) if file.is_file() else None,
           "npz_sha256": sha256_file(npz) if npz is not None and npz.is_file() else None}
    if lev is not None:
        out["levels_sha256"] = sha256_file(lev) if lev.is_file() else None
    return out


def _block_key(blk: dict[str, Any], cfg: SolveConfig, digests: dict[str, str | None]) -> dict[str, Any]:
    return {**digests, **_settings(asdict(cfg)), "params": jsonable(cfg.params),
            "block_seed": child_seed(cfg.seed, blk["block_id"])}


_DAMAGED: dict[str, Any] = {}   # sentinel of _resumable: the file cannot be trusted


def _resumable(path: Path, blk: dict[str, Any], cfg: SolveConfig, out: Path) -> dict[str, Any] | None:
    """The row of samples file ``path`` when it was made for ``blk`` as ``cfg`` would make it; None
    when it was made otherwise; ``_DAMAGED`` when it is unreadable or its stored row disagrees with
    its samples (the best energy and the digest of the samples are recomputed, never trusted)."""
    try:
        obj = json.loads(path.read_text(), parse_constant=_no_constant)
        stored = obj["info"][_RESUME_KEY]
        key, row = stored["key"], dict(stored["row"])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError, RecursionError):
        return _DAMAGED
    if key != jsonable(_block_key(blk, cfg, _source_digests(blk["path"]))):
        return None
    try:
        check_fields(row, _ROW_TYPES, "row", path)
        check_fields(row["timings"], dict.fromkeys(row["timings"], (int, float)), "timings", path)
        ss = read_samples(path)
        ok = (len(ss) > 0 and row["record_sha256"] == _record_digest(ss) and row["block_id"] == blk["block_id"]
              and row["best_energy"] == float(ss.first.energy) and row["num_reads"] == len(ss)
              and row["num_variables"] == len(ss.variables) and "sample_s" in row["timings"])
    except (QuboNNError, TypeError, ValueError):
        ok = False
    if not ok:
        return _DAMAGED
    e_cur = row.get("current_energy")
    row.update(file=_relative(blk["path"], out), samples=path.name, resumed=True,
               builder_block=bool(row.get("builder_block")), best_energy=float(ss.first.energy),
               predicted_decrease=(e_cur - float(ss.first.energy)) if isinstance(e_cur, (int, float)) else None)
    return row


_ROW_TYPES: dict[str, tuple[type, ...]] = {
    "block_id": (int,), "builder_block": (bool, int), "num_variables": (int,), "num_interactions": (int,),
    "num_reads": (int,), "best_energy": (int, float), "current_energy": (int, float, type(None)),
    "L0": (int, float, type(None)), "seed": (int, type(None)), "initial_states": (str,), "record_sha256": (str,),
    "timings": (dict,), "params": (dict, type(None)), "sampler_energy_error": (int, float, type(None))}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _record_digest(ss: Any) -> str:
    """sha256 of a SampleSet's samples (int8, variables in order) and energies (float64)."""
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ss.record.sample, dtype=np.int8).tobytes())
    h.update(np.ascontiguousarray(ss.record.energy, dtype=np.float64).tobytes())
    h.update(repr(list(ss.variables)).encode())
    return h.hexdigest()


def _relative(path: str | os.PathLike | None, out: Path) -> str | None:
    return None if path is None else os.path.relpath(Path(path).absolute(), out.absolute())


def _source_path(src: dict[str, Any]) -> str:
    return str(Path(src["blocks"][0]["path"]).resolve()) if src["kind"] == "file" else src["manifest_path"]


def _read_tasks(todo: list[dict[str, Any]], src: dict[str, Any], cfg: SolveConfig, pending: dict[int, dict],
                pack: bool) -> Iterator[dict[str, Any]]:
    """Read, check and prepare each block in turn (lazily: the executor pulls the next one when a
    slot frees); what the driver keeps of block i until its result comes goes to ``pending[i]``."""
    man = src["manifest"]
    digests = (man["head_digest"], man["features_digest"]) if man else (None, None)
    smp = get_sampler(cfg.sampler)
    takes_init = "initial_states" in smp.parameters
    needs_form = smp.properties.get("needs") == "integer_form"   # gptq, cd, pipeline
    for index, blk in enumerate(todo):
        t0 = time.perf_counter()
        bqm, enc, side = read_block(blk["path"], *digests, require_sidecar=src["kind"] == "manifest")
        current = None
        if enc is not None:
            current = enc.current_bits().cpu().numpy().astype(np.int8)
            if current.shape[0] != bqm.num_variables:
                raise QuboNNError(f"block {blk['path']!r}: encoding has {current.shape[0]} bits, QUBO "
                                  f"{bqm.num_variables} variables")
        if cfg.init == "current" and current is None:
            raise QuboNNError(f"init 'current' needs a block built by qubo-nn (with a sidecar); {blk['path']!r} "
                              f"has none")
        if cfg.init == "current" and not takes_init:
            raise QuboNNError(f"sampler {cfg.sampler!r} does not take initial states (init 'current')")
        use_init = cfg.init in ("current", "auto") and current is not None and takes_init
        form = read_integer_form(blk["path"], side or None) if needs_form else None
        if side:
            source = {"file_sha256": side["file_sha256"], "npz_sha256": side["npz_sha256"]}
            if "levels_sha256" in side:
                source["levels_sha256"] = side["levels_sha256"]
        else:
            source = {"file_sha256": sha256_file(blk["path"]), "npz_sha256": None}
        labels = list(range(bqm.num_variables))
        pending[index] = {
            "blk": blk,
            "key": _block_key(blk, cfg, source),
            "builder_block": enc is not None,
            "num_variables": bqm.num_variables,
            "num_interactions": bqm.num_interactions,
            "current_energy": (float(bqm.energies((current[None, :], labels))[0]) if current is not None
                               else None),
            "offset": float(bqm.offset),
            "L0": side.get("L0", blk.get("L0")),
            "initial_states": "current" if use_init else "random",
        }
        task = {"bqm": block_task.pack_bqm(bqm) if pack else bqm, "sampler": cfg.sampler, "params": cfg.params,
                "seed": child_seed(cfg.seed, blk["block_id"]), "polish": cfg.polish,
                "initial": current if use_init else None, "keep": cfg.keep}
        if form is not None:   # Ray: plain arrays (the task stays torch-free); threads: the object
            task["form"] = form.arrays() if pack else form
        pending[index]["read_s"] = time.perf_counter() - t0
        del bqm, enc, form
        yield task


def _finish_block(meta: dict[str, Any], result: dict[str, Any], out: Path, node: str | None) -> dict[str, Any]:
    """Write one finished block's samples file; return its row."""
    t0 = time.perf_counter()
    blk = meta["blk"]
    ss = block_task.to_sampleset(result)
    info = ss.info
    best = float(ss.first.energy) if len(ss) else meta["offset"]
    e_cur = meta["current_energy"]
    name = _samples_name(blk)
    row = {
        "block_id": blk["block_id"],
        "file": _relative(blk["path"], out),
        "samples": name,
        "builder_block": meta["builder_block"],
        "num_variables": meta["num_variables"],
        "num_interactions": meta["num_interactions"],
        "num_reads": len(ss),
        "best_energy": best,
        "current_energy": e_cur,
        "predicted_decrease": (e_cur - best) if e_cur is not None else None,
        "L0": meta["L0"],
        "seed": info.get("seed"),
        "initial_states": meta["initial_states"],
        "params": info.get("params"),
        "sampler_energy_error": info.get("sampler_energy_error"),
        "record_sha256": _record_digest(ss),
        "node": node,
        "resumed": False,
        "timings": {"read_s": meta["read_s"], "unpack_s": result["unpack_s"],
                    "sample_s": info.get("wall_time_s", result["t_end"] - result["t_start"])},
    }
    info[_RESUME_KEY] = {"key": jsonable(meta["key"]), "row": to_jsonable(row)}
    atomic_write_json(out / name, to_jsonable(ss.to_serializable()))
    row["timings"]["write_s"] = time.perf_counter() - t0
    row["timings"]["total_s"] = sum(row["timings"].values())
    return row


def _summary(src: dict[str, Any], rows: list[dict[str, Any]], cfg: SolveConfig, seconds: float,
             out: Path) -> dict[str, Any]:
    """solution.json: the configuration, versions, totals and one row per block (paths relative to ``out``)."""
    man = src["manifest"]
    builder = all(r["builder_block"] for r in rows)
    L0 = man["L0"] if man else (rows[0]["L0"] if len(rows) == 1 else None)
    fresh = [r for r in rows if not r.get("resumed")]   # solved by this call (resumed rows took no time now)
    totals: dict[str, Any] = {
        "blocks": len(rows),
        "resumed": len(rows) - len(fresh),
        "variables": sum(r["num_variables"] for r in rows),
        "wall_time_s": seconds,
        "sample_time_s": sum(r["timings"]["sample_s"] for r in fresh),
        "mean_sample_time_s": float(np.mean([r["timings"]["sample_s"] for r in fresh])) if fresh else None,
        "mean_block_time_s": (float(np.mean([r["timings"].get("total_s", r["timings"]["sample_s"]) for r in fresh]))
                              if fresh else None),
        "resumed_sample_time_s": sum(r["timings"]["sample_s"] for r in rows if r.get("resumed")),
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
        "source": _relative(_source_path(src), out),
        "manifest": _relative(src["manifest_path"], out) if builder else None,
        "head_digest": man["head_digest"] if man else None,
        "features_digest": man["features_digest"] if man else None,
        "config": asdict(cfg),
        "versions": versions(),
        "totals": totals,
        "blocks": rows,
    }
