"""The comparison: SGD baseline vs hybrid (SGD warm-up, QUBO sweeps, SGD fine-tuning) vs SGD
given the hybrid's time vs the convex optimum of the head, on the same cached features, over
several seeds.

Per seed both trained methods start from the same head (``Head.init_like_linear(C, D, seed)``)
and use the same SGD settings, learning-rate schedule over the same E epochs and the same
per-epoch shuffles (``train_sgd`` seeds epoch e by (seed, e)): the baseline runs epochs
[0, E); the hybrid runs [0, W), the QUBO sweep(s), then [W, E). The L-BFGS optimum of the same
convex objective (:func:`qubo_nn.train.sgd.convex_optimum`, from the same init) bounds what any
head optimizer can reach on the training loss. ``sgd_matched`` (optional, on by default) is
SGD run for about as long as the hybrid took (see :class:`ExperimentConfig`).

Run directory ``out`` (files written atomically):

- ``config.json`` (the :class:`ExperimentConfig`, the features' digest and settings),
  ``versions.json``;
- ``per-seed/<method>-seed<seed>.json``: one per (method, seed), written when it completes, with a
  ``checksum`` of its content. ``history`` holds one point per epoch (``epoch``, ``train_loss``,
  ``train_acc``, ``test_loss``, ``test_acc``, ``wall_time_s`` = cumulative optimizer time: SGD
  steps plus the QUBO phase, without the per-epoch monitoring evaluations, ``phase``), starting
  with the initial head at epoch 0; the hybrid has two points at epoch W (before and after the
  QUBO phase), ``qubo_phase`` (where it sits: ``after_epoch``, ``start_s``, ``end_s``) and the
  full ``qubo`` record of :func:`qubo_nn.workflows.head_optimize.hybrid_sweeps`; every result also records
  ``features_digest``, ``head_digest`` (the run's final head) and ``machine``;
- ``summary.json``, ``summary.txt`` and the PNG plots of :mod:`qubo_nn.study.plots`.

Resume: rerunning with the same config loads the completed (method, seed) results and computes
only the missing ones; a result file that does not parse or whose checksum/identity does not
match is reported in ``warnings`` and recomputed. A run directory made with a different config
(or different features) is refused unless ``overwrite`` (then its result files are deleted).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

from tqdm.auto import tqdm

from qubo_nn.errors import QuboNNError
from qubo_nn.data.featureset import SYNTHETIC_GENERATORS, FeatureSet, synthetic_by_name
from qubo_nn.core.head import Head, evaluate
from qubo_nn.workflows.head_optimize import HybridConfig, hybrid_sweeps
from qubo_nn.runtime import (SEED_BOUND, atomic_write_json, atomic_write_text, machine_info, portable_path,
    resolve_device, tensor_digest, to_jsonable, versions)

METHODS = ("sgd", "hybrid", "sgd_matched", "lbfgs")
METHOD_LABELS = {"sgd": "SGD baseline", "hybrid": "hybrid (SGD + QUBO + SGD)",
                 "sgd_matched": "SGD, time-matched", "lbfgs": "L-BFGS optimum"}
RESULT_FORMAT = 1
RESULTS_SUBDIR = "per-seed"   # one JSON per (method, seed); not "runs/", which .gitignore reserves for scratch runs
# config keys that do not change results: a run directory may be resumed with other values
_RUNTIME_KEYS = ("out", "overwrite", "cache_dir", "data_root", "download", "device", "seeds", "threads")


@dataclass
class ExperimentConfig:
    """The whole comparison. Feature settings as in :class:`qubo_nn.data.features.FeatureConfig`
    (``n_train``, ``n_test``, ``feature_dim``, ``num_classes`` size ``synthetic-features``
    (realistic, not separable) and ``synthetic-separable`` only; ``feature_seed`` seeds the
    random backbone / synthetic features), SGD settings as in
    :class:`qubo_nn.train.sgd.SGDConfig` (``epochs`` E in total, ``warmup_epochs`` W of them before
    the QUBO phase of the hybrid), ``hybrid`` as in :class:`qubo_nn.workflows.head_optimize.HybridConfig` (its
    ``seed`` and ``build.l2`` are set per run: the seed, and ``weight_decay`` so that every
    method minimizes the same objective), ``seeds`` the seeds, ``out`` the run directory.
    ``time_matched``: also run SGD for as many epochs as the hybrid's optimizer time allows
    (``sgd_matched``: E × t_hybrid / t_sgd epochs of the same seed, rounded, at least E, at most
    ``matched_max_factor`` × E; its own schedule over those epochs), the baseline that answers
    "what would SGD have reached in the same time?".
    ``threads``: torch CPU threads for the optimizers (None: leave torch's setting; the feature
    extraction before them keeps torch's own). The default 1
    keeps wall times comparable on a shared CPU: the head's mini-batch kernels are tiny, and
    with more threads than free cores their thread pool stalls (per-epoch times then vary by
    10× or more between identical runs) and competes with the annealing thread."""

    dataset: str = "digits"
    arch: str = "resnet18"
    weights: str = "none"
    image_size: int = 64
    data_root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    limit: int | None = None
    n_train: int = 50_000
    n_test: int = 10_000
    feature_dim: int | None = None
    num_classes: int = 100
    feature_seed: int = 0
    device: str = "auto"
    epochs: int = 10
    warmup_epochs: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seeds: tuple[int, ...] = (0, 1, 2)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    lbfgs_max_iter: int = 500
    time_matched: bool = True
    matched_max_factor: int = 100
    threads: int | None = 1
    out: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise QuboNNError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs <= self.epochs:
            raise QuboNNError(f"warmup epochs must be an integer in [0, epochs={self.epochs}], got {self.warmup_epochs!r}")
        self.sgd(0).validate()
        self.hybrid.validate()
        seeds = list(self.seeds)
        if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < SEED_BOUND for s in seeds):
            raise QuboNNError(f"seeds must be a non-empty list of integers in [0, {SEED_BOUND - 1}], got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise QuboNNError(f"seeds must be distinct, got {self.seeds!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise QuboNNError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if not isinstance(self.matched_max_factor, int) or self.matched_max_factor < 1:
            raise QuboNNError(f"matched_max_factor must be an integer >= 1, got {self.matched_max_factor!r}")
        if not isinstance(self.lbfgs_max_iter, int) or self.lbfgs_max_iter < 1:
            raise QuboNNError(f"lbfgs_max_iter must be an integer >= 1, got {self.lbfgs_max_iter!r}")
        if self.dataset in SYNTHETIC_GENERATORS:
            for name in ("n_train", "n_test", "num_classes"):
                v = getattr(self, name)
                if not isinstance(v, int) or v < (2 if name == "num_classes" else 1):
                    raise QuboNNError(f"{name} must be a positive integer, got {v!r}")
        else:
            self.feature_config().validate()

    def sgd(self, seed: int, epochs: int | None = None):
        from qubo_nn.train.sgd import SGDConfig

        return SGDConfig(epochs=self.epochs if epochs is None else epochs, lr=self.lr, momentum=self.momentum,
                         batch_size=self.batch_size, weight_decay=self.weight_decay, schedule=self.schedule,
                         seed=seed)

    def feature_config(self):
        from qubo_nn.data.features import FeatureConfig

        return FeatureConfig(dataset=self.dataset, arch=self.arch, weights=self.weights,
                             image_size=self.image_size, data_root=self.data_root, download=self.download,
                             device=self.device, seed=self.feature_seed, cache_dir=self.cache_dir, limit=self.limit)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        d = dict(d)
        d["hybrid"] = HybridConfig.from_dict(d.get("hybrid", {}))
        d["seeds"] = tuple(d.get("seeds", (0, 1, 2)))
        return cls(**d)

    def result_dict(self) -> dict:
        """The settings that change results (compared on resume)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_KEYS}
        # where the anneals run (threads or Ray) does not change them: same seeds, same samples
        d["hybrid"] = {k: v for k, v in d["hybrid"].items() if k not in ("executor", "ray_address")}
        return d


def default_out(dataset: str) -> Path:
    """``results/<dataset>-<YYYYmmdd-HHMMSS>``."""
    return Path("results") / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_features(cfg: ExperimentConfig, progress: bool = False) -> tuple[FeatureSet, FeatureSet, dict]:
    """Train/test features of ``cfg`` (cached backbone features, or synthetic ones) and a description."""
    t0 = time.perf_counter()
    if cfg.dataset in SYNTHETIC_GENERATORS:
        dim = cfg.feature_dim or _arch_dim(cfg.arch)
        train, test = synthetic_by_name(cfg.dataset, cfg.n_train, cfg.n_test, dim, cfg.num_classes, cfg.feature_seed)
        info = {"source": train.meta["generator"], "n_train": cfg.n_train, "n_test": cfg.n_test, "dim": dim,
                "num_classes": cfg.num_classes, "seed": cfg.feature_seed}
    else:
        from qubo_nn.data.features import config_dict, get_features

        fcfg = cfg.feature_config()
        res = get_features(fcfg, progress=progress)
        train, test = res.train, res.test
        info = {"source": "get_features", "config": config_dict(fcfg), "cache_path": portable_path(res.path),
                "cache_hit": res.hit}
    info.update(seconds=time.perf_counter() - t0, digest=tensor_digest(train.X, train.y, test.X, test.y),
                shape_train=list(train.X.shape), shape_test=list(test.X.shape), num_classes=train.num_classes)
    return train, test, info


def _arch_dim(arch: str) -> int:
    from qubo_nn.nets.backbones import FEATURE_DIMS

    if arch not in FEATURE_DIMS:
        raise QuboNNError(f"arch must be one of {tuple(FEATURE_DIMS)}, got {arch!r}")
    return FEATURE_DIMS[arch]


def run_experiment(cfg: ExperimentConfig, progress: bool = False,
                   thread_scope: Callable[[], ContextManager] | None = None,
                   qubo_thread_scope: Callable[[], ContextManager] | None = None) -> dict:
    """Run (or resume) the comparison of ``cfg``; return the summary (also written to ``out``).

    Summary: ``out``, ``methods`` (per method: ``seeds`` and mean/std of the final
    ``train_loss``, ``train_acc``, ``test_acc``, ``wall_time_s``; for the hybrid also the QUBO
    phase time, accepted blocks and overlap), ``computed`` / ``loaded`` ((method, seed) names),
    ``warnings``, ``plots`` and ``table`` (the text table).

    This function sets no process-wide state: ``thread_scope`` (entered after the features are
    loaded, around the optimizers) and ``qubo_thread_scope`` (around each QUBO phase) are context
    managers the caller supplies; the ``experiment`` command passes ones that apply ``cfg.threads``
    and ``cfg.hybrid.device_threads`` to torch.
    """
    cfg.validate()
    t_start = time.perf_counter()
    train, test, finfo = load_features(cfg, progress)  # the backbone runs with torch's own thread count
    with (thread_scope() if thread_scope is not None else contextlib.nullcontext()):
        return _run(cfg, progress, train, test, finfo, t_start, qubo_thread_scope)


def _run(cfg: ExperimentConfig, progress: bool, train: FeatureSet, test: FeatureSet, finfo: dict,
         t_start: float, qubo_thread_scope: Callable[[], ContextManager] | None = None) -> dict:
    out = Path(cfg.out) if cfg.out else default_out(cfg.dataset)
    cfg.out = str(out)
    config_record = {"experiment": cfg.to_dict(), "result_settings": cfg.result_dict(),
                     "features": finfo, "format": RESULT_FORMAT}
    _prepare_out(out, cfg, finfo)
    atomic_write_json(out / "config.json", config_record)
    atomic_write_json(out / "versions.json", versions())
    digest = _config_digest(cfg, finfo)
    dev = resolve_device(cfg.device)

    methods = [m for m in METHODS if m != "sgd_matched" or cfg.time_matched]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    computed, loaded, warnings = [], [], []
    todo = [(m, s) for s in cfg.seeds for m in methods]
    bar = tqdm(todo, desc="runs", unit="run", disable=not progress)
    for method, seed in bar:
        name = f"{method}-seed{seed}"
        bar.set_postfix_str(name)
        path = out / RESULTS_SUBDIR / f"{name}.json"
        res, problem = _load_result(path, method, seed, digest)
        if res is not None and method == "sgd_matched":
            hyb = results["hybrid"][-1]["final"]["wall_time_s"]
            if res["matched"]["hybrid_time_s"] != hyb:
                res, problem = None, "matched to another hybrid run (its hybrid result was recomputed)"
        if res is None:
            if problem is not None:
                warnings.append(f"{path.name}: {problem}; recomputed")
            prior = {m: results[m][-1] for m in methods if results[m] and results[m][-1]["seed"] == seed}
            extra = {"thread_scope": qubo_thread_scope} if method == "hybrid" else {}
            res = _RUNNERS[method](cfg, seed, train, test, dev, progress, prior, **extra)
            res.update(method=method, seed=seed, config_digest=digest, features_digest=finfo["digest"],
                       device=str(dev), machine=machine_info(dev), format=RESULT_FORMAT)
            _write_result(path, res)
            computed.append(name)
        else:
            loaded.append(name)
        results[method].append(res)
    bar.close()

    from qubo_nn.study.plots import make_plots

    plots = make_plots(results, out, title=_title(cfg, finfo))
    summary = summarize(results)
    summary.update(out=str(out), computed=computed, loaded=loaded, warnings=warnings,
                   plots=[str(p) for p in plots], features=finfo,
                   elapsed_s=time.perf_counter() - t_start)
    summary["table"] = format_table(summary)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.txt", summary["table"] + "\n")
    return summary


# --- the three methods -------------------------------------------------------------------------

def _point(epoch: int, head: Head, train: FeatureSet, test: FeatureSet, l2: float, wall: float, phase: str) -> dict:
    tl, ta = evaluate(head, train, l2=l2)
    vl, va = evaluate(head, test)
    return {"epoch": epoch, "train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va,
            "wall_time_s": wall, "phase": phase}


def _sgd_points(hist: list[dict], wall0: float, phase: str) -> tuple[list[dict], float]:
    pts, wall = [], wall0
    for r in hist:
        wall += r["wall_time_s"]
        pts.append({"epoch": r["epoch"], "train_loss": r["train_loss"], "train_acc": r["train_acc"],
                    "test_loss": r["test_loss"], "test_acc": r["test_acc"], "wall_time_s": wall,
                    "lr": r["lr"], "phase": phase})
    return pts, wall


def _epoch_bar(total: int, desc: str, progress: bool):
    bar = tqdm(total=total, desc=desc, unit="epoch", leave=False, disable=not progress)
    return bar, (lambda rec, head: bar.update(1))


def _run_sgd(cfg: ExperimentConfig, seed: int, train, test, dev, progress: bool, prior: dict,
             epochs: int | None = None) -> dict:
    from qubo_nn.train.sgd import train_sgd

    sgd = cfg.sgd(seed, epochs)
    head = Head.init_like_linear(train.num_classes, train.dim, seed)
    t0 = time.perf_counter()
    history = [_point(0, head, train, test, cfg.weight_decay, 0.0, "init")]
    bar, cb = _epoch_bar(sgd.epochs, f"sgd seed {seed}", progress)
    head, hist = train_sgd(head, train, test, sgd, device=str(dev), callback=cb)
    bar.close()
    pts, wall = _sgd_points(hist, 0.0, "sgd")
    history += pts
    return {"history": history, "final": _final(history), "elapsed_s": time.perf_counter() - t0,
            "sgd": asdict(sgd), "head_digest": _head_digest(head)}


def matched_epochs(cfg: ExperimentConfig, sgd_time_s: float, hybrid_time_s: float) -> int:
    """Epochs of SGD that take about the hybrid's optimizer time: E × t_hybrid / t_sgd, clamped."""
    if not sgd_time_s > 0:
        return cfg.epochs * cfg.matched_max_factor
    n = round(cfg.epochs * hybrid_time_s / sgd_time_s)
    return int(min(max(n, cfg.epochs), cfg.epochs * cfg.matched_max_factor))


def _run_sgd_matched(cfg: ExperimentConfig, seed: int, train, test, dev, progress: bool, prior: dict) -> dict:
    t_sgd, t_hyb = prior["sgd"]["final"]["wall_time_s"], prior["hybrid"]["final"]["wall_time_s"]
    n = matched_epochs(cfg, t_sgd, t_hyb)
    res = _run_sgd(cfg, seed, train, test, dev, progress, prior, epochs=n)
    res["matched"] = {"epochs": n, "sgd_time_s": t_sgd, "hybrid_time_s": t_hyb,
                      "max_factor": cfg.matched_max_factor}
    return res


def _run_hybrid(cfg: ExperimentConfig, seed: int, train, test, dev, progress: bool, prior: dict,
                thread_scope: Callable[[], ContextManager] | None = None) -> dict:
    from dataclasses import replace

    from qubo_nn.train.sgd import train_sgd

    E, W = cfg.epochs, cfg.warmup_epochs
    head = Head.init_like_linear(train.num_classes, train.dim, seed)
    t0 = time.perf_counter()
    history = [_point(0, head, train, test, cfg.weight_decay, 0.0, "init")]
    bar, cb = _epoch_bar(E, f"hybrid seed {seed}", progress)
    wall = 0.0
    if W:
        head, hist = train_sgd(head, train, test, cfg.sgd(seed, W), device=str(dev), start_epoch=0,
                               total_epochs=E, callback=cb)
        pts, wall = _sgd_points(hist, wall, "warmup")
        history += pts
    hcfg = replace(cfg.hybrid, seed=seed, build=replace(cfg.hybrid.build, l2=cfg.weight_decay))
    head, qrec = hybrid_sweeps(head, train, hcfg, dev, progress=progress, thread_scope=thread_scope)
    q_start, wall = wall, wall + qrec["total_wall_s"]
    history.append(_point(W, head, train, test, cfg.weight_decay, wall, "qubo"))
    if E > W:
        head, hist = train_sgd(head, train, test, cfg.sgd(seed, E - W), device=str(dev), start_epoch=W,
                               total_epochs=E, callback=cb)
        pts, wall = _sgd_points(hist, wall, "finetune")
        history += pts
    bar.close()
    phase = {"after_epoch": W, "start_s": q_start, "end_s": q_start + qrec["total_wall_s"],
             "loss_before": qrec["loss_start"], "loss_after": qrec["loss_end"]}
    return {"history": history, "final": _final(history), "elapsed_s": time.perf_counter() - t0,
            "qubo_phase": phase, "qubo": qrec, "sgd": asdict(cfg.sgd(seed)), "head_digest": _head_digest(head)}


def _run_lbfgs(cfg: ExperimentConfig, seed: int, train, test, dev, progress: bool, prior: dict) -> dict:
    from qubo_nn.train.sgd import convex_optimum

    init = Head.init_like_linear(train.num_classes, train.dim, seed)
    t0 = time.perf_counter()
    head, info = convex_optimum(train, l2=cfg.weight_decay, device=str(dev), max_iter=cfg.lbfgs_max_iter, init=init)
    point = _point(0, head, train, test, cfg.weight_decay, info["wall_time_s"], "lbfgs")
    point.pop("epoch")
    return {"final": point, "lbfgs": info, "elapsed_s": time.perf_counter() - t0, "head_digest": _head_digest(head)}


def _head_digest(head: Head) -> str:
    """Content digest of a run's final head (weights and bias, as stored on the CPU)."""
    h = head.to("cpu")
    return tensor_digest(h.W, h.b)


_RUNNERS = {"sgd": _run_sgd, "hybrid": _run_hybrid, "sgd_matched": _run_sgd_matched, "lbfgs": _run_lbfgs}


def _final(history: list[dict]) -> dict:
    last = history[-1]
    return {k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "wall_time_s")}


# --- run directory, results, resume ------------------------------------------------------------

def _config_digest(cfg: ExperimentConfig, finfo: dict) -> str:
    blob = json.dumps({"settings": cfg.result_dict(), "features": finfo["digest"]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _prepare_out(out: Path, cfg: ExperimentConfig, finfo: dict) -> None:
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        return
    try:
        old = json.loads(cfg_path.read_text())
        old_settings, old_digest = old["result_settings"], old["features"]["digest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not cfg.overwrite:
            raise QuboNNError(f"{cfg_path} is unreadable ({exc}): pass --overwrite to start this run directory afresh")
        old_settings, old_digest = None, None
    new_settings = json.loads(json.dumps(cfg.result_dict(), default=str))
    diff = sorted(_diff_keys(old_settings, new_settings)) if old_settings is not None else ["config.json"]
    if old_digest is not None and old_digest != finfo["digest"]:
        diff.append("features (digest %s, now %s)" % (old_digest, finfo["digest"]))
    if not diff:
        return
    if not cfg.overwrite:
        raise QuboNNError(f"run directory {out} holds a run with other settings ({', '.join(diff)}): "
                          f"expected the same config to resume; use another --out or pass --overwrite")
    _clear_run(out)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _clear_run(out: Path) -> None:
    """Delete the files a run writes (and nothing else) from ``out``."""
    for p in list((out / RESULTS_SUBDIR).glob("*.json")) + list(out.glob("*.png")):
        p.unlink()
    for name in ("config.json", "versions.json", "summary.json", "summary.txt"):
        (out / name).unlink(missing_ok=True)


def _checksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _write_result(path: Path, res: dict) -> None:
    res = to_jsonable(res)  # plain JSON types (NaN/Inf -> null), so the checksum round-trips
    res["checksum"] = _checksum(res)
    atomic_write_json(path, res)


def _load_result(path: Path, method: str, seed: int, digest: str) -> tuple[dict | None, str | None]:
    """(result, None) for a valid completed result; (None, why) for a bad one; (None, None) if absent."""
    if not path.exists():
        return None, None
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"corrupt result file ({type(exc).__name__}: {exc})"
    if not isinstance(res, dict) or res.get("checksum") != _checksum(res):
        return None, "corrupt result file (checksum does not match its content)"
    if (res.get("method"), res.get("seed"), res.get("config_digest")) != (method, seed, digest):
        return None, (f"result is for {res.get('method')}/seed {res.get('seed')}/config {res.get('config_digest')}, "
                      f"expected {method}/seed {seed}/config {digest}")
    return res, None


# --- summary -----------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarize(results: dict[str, list[dict]]) -> dict:
    """Mean ± std (sample std over seeds) of each method's final numbers."""
    methods = {}
    for m, runs in results.items():
        if not runs:
            continue
        s = {"seeds": [r["seed"] for r in runs]}
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "wall_time_s"):
            s[key] = _mean_std([r["final"][key] for r in runs])
        if m == "hybrid":
            q = [r["qubo"] for r in runs]
            s["qubo_time_s"] = _mean_std([x["total_wall_s"] for x in q])
            s["qubo_gain"] = _mean_std([x["loss_start"] - x["loss_end"] for x in q])
            s["accepted_blocks"] = _mean_std([x["accepted"] for x in q])
            s["blocks_visited"] = _mean_std([x["blocks_visited"] for x in q])
            s["overlap"] = _mean_std([x["overlap"] for x in q])
        if m == "lbfgs":
            s["iterations"] = _mean_std([r["lbfgs"]["iterations"] for r in runs])
            s["converged"] = sum(bool(r["lbfgs"].get("converged")) for r in runs)
        if m == "sgd_matched":
            s["epochs"] = _mean_std([r["matched"]["epochs"] for r in runs])
        methods[m] = s
    return {"methods": methods}


def _fmt(ms: dict, scale: float = 1.0, digits: int = 4) -> str:
    if ms.get("mean") is None:
        return "-"
    return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table (final numbers, mean ± std over seeds)."""
    rows = [("method", "seeds", "train loss", "train acc %", "test acc %", "time s", "notes")]
    for m, s in summary["methods"].items():
        notes = ""
        if m == "hybrid":
            notes = (f"QUBO phase {_fmt(s['qubo_time_s'], digits=1)} s, gain {_fmt(s['qubo_gain'])} nats, "
                     f"accepted {s['accepted_blocks']['mean']:.1f}/{s['blocks_visited']['mean']:.0f} blocks, "
                     f"overlap {100 * s['overlap']['mean']:.0f}%")
        elif m == "lbfgs":
            what = "convex optimum" if s["converged"] == len(s["seeds"]) else (
                f"L-BFGS (not converged in {len(s['seeds']) - s['converged']} of {len(s['seeds'])} seeds)")
            notes = f"{what}, {s['iterations']['mean']:.0f} iterations"
        elif m == "sgd_matched":
            notes = f"{s['epochs']['mean']:.0f} epochs (about the hybrid's time)"
        rows.append((m, str(len(s["seeds"])), _fmt(s["train_loss"]), _fmt(s["train_acc"], 100, 2),
                     _fmt(s["test_acc"], 100, 2), _fmt(s["wall_time_s"], digits=2), notes))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    lines.append("time s: optimizer time (SGD steps + QUBO phase; per-epoch evaluations excluded)")
    return "\n".join(lines)


def _title(cfg: ExperimentConfig, finfo: dict) -> str:
    n, d = finfo["shape_train"]
    base = f"{cfg.dataset}" + ("" if cfg.dataset in SYNTHETIC_GENERATORS else f", {cfg.arch} ({cfg.weights})")
    return f"{base}: N={n}, D={d}, C={finfo['num_classes']}, {len(cfg.seeds)} seeds"
