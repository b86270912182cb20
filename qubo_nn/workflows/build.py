"""Build a head's block QUBOs into a folder: plan, build, write, manifest."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import dimod
import numpy as np
import torch
from tqdm.auto import tqdm

from qubo_nn.core.bqm import _NP_DTYPES, DEFAULT_MAX_QUBO_BYTES, build_bqm, check_fits
from qubo_nn.core.encoding import Encoding, optimize_encoding
from qubo_nn.core.grid import check_bits, check_encoding, variables_per_weight
from qubo_nn.core.head import Head
from qubo_nn.core.model import LocalModel, damping_mu
from qubo_nn.curvature.head_stats import HeadStats, select_blocks
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.io.json_files import FILE_VERSION
from qubo_nn.io.blocks import HEAD_NAME, features_digest, head_digest, write_block
from qubo_nn.io.bqm_files import SUFFIXES, format_of
from qubo_nn.io.locks import folder_lock
from qubo_nn.io.manifest import MANIFEST_FORMAT, MANIFEST_NAME
from qubo_nn.runtime import atomic_path, atomic_write_json, versions

if TYPE_CHECKING:
    from qubo_nn.core.encoding import Encoding
    from qubo_nn.core.head import Head
    from qubo_nn.data.featureset import FeatureSet


MAX_STEP = 1e6
"""The largest fixed grid step accepted: beyond it the weights, the QUBO's biases and the energies
overflow (a step of 1e308 makes every bias Inf)."""


@dataclass
class BuildConfig:
    """How a head becomes QUBOs. ``damping`` μ = damping_abs + damping_rel · mean(diag H)."""

    blocks: str = "rows"
    per_block: int = 1
    size: int | None = None
    num_blocks: int | None = None
    saliency: str = "grad"
    bits: int = 4
    encoding: str = "binary"
    window: float = 2.0
    step_rule: str = "curvature"
    step: float | None = None
    damping_rel: float = 0.1
    damping_abs: float = 0.0
    l2: float = 0.0
    subsample: int | None = None
    dtype: str = "float32"
    bqm_dtype: str = "float64"
    device: str = "auto"
    chunk: int = 16384
    seed: int = 0
    max_qubo_bytes: int = DEFAULT_MAX_QUBO_BYTES

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Refuse bad settings up front (before any Hessian pass), saying what was expected."""
        from qubo_nn.curvature.head_stats import BLOCK_KINDS, SALIENCIES

        if self.blocks not in BLOCK_KINDS:
            raise QuboNNError(f"block kind must be one of {BLOCK_KINDS}, got {self.blocks!r}")
        if self.saliency not in SALIENCIES:
            raise QuboNNError(f"saliency must be one of {SALIENCIES}, got {self.saliency!r}")
        check_bits(self.bits)
        check_encoding(self.encoding)
        for name in ("per_block", "chunk"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise QuboNNError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("size", "num_blocks", "subsample"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise QuboNNError(f"{name} must be None or an integer >= 1, got {v!r}")
        if self.blocks in ("topk", "random") and self.size is None:
            raise QuboNNError(f"block kind {self.blocks!r} needs size >= 1 (weights per block), got None")
        if not np.isfinite(self.window) or self.window <= 0:
            raise QuboNNError(f"window must be > 0, got {self.window}")
        if self.step_rule not in ("curvature", "fixed"):
            raise QuboNNError(f"step_rule must be 'curvature' or 'fixed', got {self.step_rule!r}")
        if self.step_rule == "fixed" and (self.step is None or not self.step > 0):
            raise QuboNNError(f"step_rule 'fixed' needs step > 0, got {self.step}")
        if self.step is not None and self.step_rule != "fixed":
            raise QuboNNError(f"step (--step) is used only by step_rule 'fixed' (--step-rule fixed), got step "
                              f"{self.step} with step_rule {self.step_rule!r}")
        if self.step is not None and not self.step <= MAX_STEP:
            raise QuboNNError(f"step must be a finite number of at most {MAX_STEP:g} (a grid step in weight "
                              f"units; trained weights are O(1)), got {self.step}")
        if self.num_blocks is not None and self.blocks != "topk":
            raise QuboNNError(f"num_blocks (--num-blocks) applies only to block kind 'topk' (the top "
                              f"size x num_blocks weights), got num_blocks {self.num_blocks} with blocks "
                              f"{self.blocks!r}")
        for name in ("damping_rel", "damping_abs", "l2"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise QuboNNError(f"{name} must be finite and >= 0, got {v}")
        if self.dtype not in _NP_DTYPES:
            raise QuboNNError(f"dtype must be one of {sorted(_NP_DTYPES)}, got {self.dtype!r}")
        if self.bqm_dtype not in _NP_DTYPES:
            raise QuboNNError(f"BQM dtype must be one of {sorted(_NP_DTYPES)}, got {self.bqm_dtype!r}")
        if not self.max_qubo_bytes > 0:
            raise QuboNNError(f"max_qubo_bytes must be > 0, got {self.max_qubo_bytes}")


@dataclass
class BlockQUBO:
    """One block's local model, encoding and BQM, with the time each stage took (s)."""

    block_id: int
    model: LocalModel
    enc: Encoding
    bqm: dimod.BinaryQuadraticModel
    damping: float
    timings: dict = field(default_factory=dict)


def damping_for(model: LocalModel, cfg: BuildConfig) -> float:
    return damping_mu(model.H.diagonal(), cfg.damping_rel, cfg.damping_abs)


def make_block_qubo(stats: HeadStats, idx: torch.Tensor, cfg: BuildConfig, block_id: int = 0) -> BlockQUBO:
    """Local model → encoding (optimize mode) → BQM for one block at the head in ``stats``."""
    t0 = time.perf_counter()
    model = stats.block(idx)
    if stats.device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    mu = damping_for(model, cfg)
    enc = optimize_encoding(model, cfg.bits, cfg.window, mu, cfg.step_rule, cfg.step, kind=cfg.encoding)
    bqm = build_bqm(model, enc, mu, cfg.bqm_dtype, cfg.max_qubo_bytes)
    t2 = time.perf_counter()
    return BlockQUBO(block_id, model, enc, bqm, mu, {"hessian_s": t1 - t0, "qubo_s": t2 - t1})


def plan_blocks(stats: HeadStats, cfg: BuildConfig) -> list[torch.Tensor]:
    """The block index sets for ``cfg`` at the head in ``stats``, checked against the memory limit."""
    need_diag = cfg.blocks == "topk" and cfg.saliency == "obd"
    blocks = select_blocks(cfg.blocks, stats.C, stats.D, per_block=cfg.per_block, size=cfg.size,
                           num_blocks=cfg.num_blocks, grad=stats.grad,
                           diag=stats.hessian_diag() if need_diag else None,
                           saliency=cfg.saliency, seed=cfg.seed)
    itemsize = np.dtype(_NP_DTYPES.get(cfg.bqm_dtype, np.float64)).itemsize
    per = variables_per_weight(cfg.encoding, cfg.bits)
    check_fits(max(b.numel() for b in blocks) * per, itemsize, cfg.max_qubo_bytes)
    return blocks


def iter_block_qubos(head: Head, feats: FeatureSet, cfg: BuildConfig, progress: bool = False) -> Iterator[BlockQUBO]:
    """Stream the QUBOs of every block of ``head`` (all at the same head), one at a time.

    Settings are checked, and the largest block's QUBO is checked against ``cfg.max_qubo_bytes``,
    before the first Hessian pass.
    """
    cfg.validate()
    stats = HeadStats(head, feats, cfg.l2, cfg.device, cfg.dtype, cfg.chunk, cfg.subsample, cfg.seed)
    blocks = plan_blocks(stats, cfg)
    for k, idx in enumerate(tqdm(blocks, desc="build", unit="block", disable=not progress)):
        yield make_block_qubo(stats, idx, cfg, k)


_BUILD_FILE = re.compile(r"block_\d{5}\.(bqm|coo|qubo|json|npz|levels\.npz)")


def build_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files of a build in ``out_dir`` (manifest, head, block files, sidecars), sorted; other
    files are not a build's and are never touched."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.is_file() and (p.name in (MANIFEST_NAME, HEAD_NAME) or _BUILD_FILE.fullmatch(p.name)))


def block_sizes(num_classes: int, dim: int, cfg: BuildConfig) -> list[int]:
    """Weights per block of a build of a C × D head (the sizes ``select_blocks`` makes, without torch)."""
    C, D1, p = num_classes, dim + 1, cfg.per_block
    if cfg.blocks == "rows":
        return [min(p, C - s) * D1 for s in range(0, C, p)]
    if cfg.blocks == "columns":
        return [min(p, D1 - s) * C for s in range(0, D1, p)]
    total = C * D1 if cfg.blocks == "random" else min(C * D1, cfg.size * (cfg.num_blocks or 1))
    return [min(cfg.size, total - s) for s in range(0, total, cfg.size)]


def estimate_build(num_classes: int, dim: int, cfg: BuildConfig, fmt: str = "dimod") -> dict[str, Any]:
    """What a build will write, before it writes: ``blocks``, ``variables``, ``interactions`` and
    ``bytes`` on disk (block files, dense QUBOs; sidecars and .npz included roughly).

    Bytes per block of n variables: dimod's format stores every interaction twice with a 4-byte
    index, n²·(itemsize + 4) + 200 (exact for dense blocks); COO/qbsolv text about
    2·digits(n) + 22 characters per coupler line (repr(float) biases).
    """
    fmt = format_of("", fmt)
    itemsize = np.dtype(_NP_DTYPES.get(cfg.bqm_dtype, np.float64)).itemsize
    per = variables_per_weight(cfg.encoding, cfg.bits)
    total_bytes = variables = interactions = 0
    sizes = block_sizes(num_classes, dim, cfg)
    for m in sizes:
        n = m * per
        pairs = n * (n - 1) // 2
        variables += n
        interactions += pairs
        if fmt == "dimod":
            total_bytes += n * n * (itemsize + 4) + 200
        else:
            total_bytes += (pairs + n) * (2 * len(str(n)) + 22) + 200
        total_bytes += m * 8 * (per + 6) + 4096  # .npz (A values, idx, grids) and the JSON sidecar
        total_bytes += m * (m + 1) * 4 + m * 32 + 1024  # .levels.npz (the integer form: H's triangle, target, box)
    total_bytes += num_classes * (dim + 1) * 4 + 1536   # head.pt (float32 state dict, zip overhead)
    return {"blocks": len(sizes), "variables": variables, "interactions": interactions, "bytes": total_bytes,
            "file_format": fmt}


def build_to_dir(head: Head, feats: FeatureSet, cfg: BuildConfig, out_dir: str | os.PathLike, fmt: str = "dimod",
                 features_ref: dict | None = None, progress: bool = False, overwrite: bool = False,
                 max_disk_bytes: int | None = None) -> Path:
    """Build every block of ``head`` (:func:`~qubo_nn.workflows.build.iter_block_qubos`, one BQM in memory at
    a time) into ``out_dir``: ``head.pt``, block files and sidecars, then ``manifest.json``.

    ``features_ref`` (a :class:`~qubo_nn.data.features.FeatureConfig` as dict, or None) lets a later
    ``decode`` reload the features. Returns the manifest path.

    A folder already holding a build's files (:func:`build_files`) is refused unless
    ``overwrite``; then those files (and only those) are removed first, so no block of the old
    build is left beside the new ones, and an interrupted build leaves no manifest.
    ``max_disk_bytes``: refuse (before writing) a build whose :func:`estimate_build` is larger,
    or larger than the free space of the target file system.
    """
    import torch

    from qubo_nn.core.head import check_compatible

    fmt = format_of("", fmt)
    cfg.validate()
    check_compatible(head, feats)
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuboNNError(f"output {str(out)!r} exists and is not a directory")
    old = build_files(out)
    if old and not overwrite:
        blocks = sum(1 for p in old if p.suffix == SUFFIXES.get(fmt) or p.suffix in (".bqm", ".coo", ".qubo"))
        raise QuboNNError(f"output folder {str(out)!r} already holds a build ({len(old)} files, {blocks} block "
                          f"files); expected an empty or new folder: pass overwrite (--overwrite) to replace it")
    from qubo_nn.core.bqm import check_fits

    itemsize = np.dtype(_NP_DTYPES.get(cfg.bqm_dtype, np.float64)).itemsize
    check_fits(max(block_sizes(head.num_classes, head.dim, cfg)) * variables_per_weight(cfg.encoding, cfg.bits),
               itemsize, cfg.max_qubo_bytes)   # one block too large for memory: the more specific refusal
    estimate = estimate_build(head.num_classes, head.dim, cfg, fmt)["bytes"]
    check_disk(estimate, out, max_disk_bytes)
    if cfg.subsample is not None and cfg.subsample > feats.n:
        raise QuboNNError(f"subsample must be at most the {feats.n} training samples, got {cfg.subsample}")
    # everything that can refuse (device, sizes, the blocks' plan) runs before the folder is touched
    stats = HeadStats(head, feats, cfg.l2, cfg.device, cfg.dtype, cfg.chunk, cfg.subsample, cfg.seed)
    blocks = plan_blocks(stats, cfg)
    hd, fd = head_digest(head), features_digest(feats)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuboNNError(f"cannot create the output folder {str(out)!r}: {exc.strerror}") from None
    try:
        with folder_lock(out):
            return _write_build(head, feats, cfg, out, fmt, features_ref, progress, old, stats, blocks, hd, fd,
                                estimate, t0)
    except QuboNNError:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _write_build(head: Head, feats: FeatureSet, cfg: BuildConfig, out: Path, fmt: str, features_ref: dict | None,
                 progress: bool, old: list[Path], stats: HeadStats, blocks: list[torch.Tensor], hd: str, fd: str,
                 estimate: int, t0: float) -> Path:
    """The writing half of :func:`build_to_dir` (the folder locked, every check done)."""
    manifest_path = out / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)
    for p in old:
        p.unlink(missing_ok=True)
    for tmp in out.glob(".*.tmp"):   # temporaries of an interrupted build (atomic writes) are never results
        if tmp.is_file() and (_BUILD_FILE.fullmatch(tmp.name[1:].rsplit(".", 2)[0])
                              or tmp.name.startswith((f".{MANIFEST_NAME}.", f".{HEAD_NAME}."))):
            tmp.unlink(missing_ok=True)
    with atomic_path(out / HEAD_NAME) as tmp:
        torch.save(head.state_dict(), tmp)
    entries: list[dict[str, Any]] = []
    L0 = None
    for k, idx in enumerate(tqdm(blocks, desc="build", unit="block", disable=not progress)):
        blk = make_block_qubo(stats, idx, cfg, k)
        entries.append(write_block(out, blk, fmt, hd, fd))
        L0 = blk.model.L0
        del blk  # hold one BQM at a time
    seconds = time.perf_counter() - t0
    totals = {"blocks": len(entries),
              "variables": sum(e["num_variables"] for e in entries),
              "interactions": sum(e["num_interactions"] for e in entries),
              "bytes": sum(e["bytes"] for e in entries),
              # everything written (head, block files, sidecars, encodings, integer forms; the manifest not
              # yet): what `du` shows, and what estimate_build (``estimated_bytes``) predicts
              "bytes_on_disk": sum(p.stat().st_size for p in build_files(out)),
              "estimated_bytes": estimate,
              "seconds": seconds}
    for key in ("hessian_s", "qubo_s", "write_s"):
        totals[key] = sum(e["timings"].get(key, 0.0) for e in entries)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": FILE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "file_format": fmt,
        "config": cfg.to_dict(),
        "versions": versions(),
        "features": features_ref,
        "head": HEAD_NAME,
        "head_digest": hd,
        "features_digest": fd,
        "num_classes": head.num_classes,
        "dim": head.dim,
        "num_samples": feats.n,
        "L0": L0,
        "blocks": entries,
        "totals": totals,
    }
    atomic_write_json(manifest_path, manifest)
    return manifest_path


def check_disk(nbytes: int, out_dir: str | os.PathLike, max_bytes: int | None) -> None:
    """Refuse writing ``nbytes`` under ``out_dir`` beyond ``max_bytes`` (None: no limit) or beyond
    the free space of its file system."""
    mib = nbytes / 2**20
    if max_bytes is not None and nbytes > max_bytes:
        raise QuboNNError(f"the build would write about {mib:,.1f} MiB, more than the limit of "
                          f"{max_bytes / 2**20:,.1f} MiB: expected a smaller build (fewer bits or blocks, "
                          f"--format dimod) or a larger --max-disk")
    probe = Path(out_dir).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if nbytes > free:
        raise QuboNNError(f"the build would write about {mib:,.1f} MiB but {str(probe)!r} has only "
                          f"{free / 2**20:,.1f} MiB free")
