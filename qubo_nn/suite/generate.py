"""Write a suite directory (instances in every format, integer problems, metadata, manifest) and
verify one (file sha256s against its manifest; content against the committed manifest: bit for bit by
digest, or within round-off by fingerprint, since BLAS results depend on the CPU and the thread count).

Layout of a suite directory::

    manifest.json            suite name, generator versions, one entry per instance: name, family,
                             num_variables, content digest (:func:`bqm_digest`), fingerprint
                             (:func:`bqm_fingerprint`), files {format: {path, sha256}}, and the metadata
                             (source, energy meaning, offset, baselines, best known, bound)
    instances/NAME.{bqm,qubo,coo,ommx}
    problems/NAME.npz        the integer problem behind the BQM (H, target, scale, kmin, kmax, const, kind, levels)
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import atomic_path, atomic_write_json, sha256_file, to_jsonable, versions
from qubo_nn.suite import SUITE_NAME
from qubo_nn.suite.formats import FORMATS, check_formats, problem_arrays, read_problem, write_instance
from qubo_nn.suite.instance import (FINGERPRINT_RTOL, SuiteInstance, bqm_fingerprint, fingerprint_distance,
                                    pack_bits, unpack_bits)
from qubo_nn.suite.recipes import recipes
from qubo_nn.suite.reference import bound_entry, reference_values

#: the committed manifest of the full suite (digests and metadata; the instance files are regenerated)
COMMITTED_MANIFEST = Path(__file__).with_name(f"{SUITE_NAME}.json")


def _content(bqm) -> dict[str, Any]:
    """{"content_digest", "fingerprint"} of a BQM (what :func:`compare_content` compares)."""
    fp = bqm_fingerprint(bqm)
    return {"content_digest": fp["content_digest"], "fingerprint": fp}


def _committed_entries(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """{name: entry} of the committed manifest (or of ``path``); {} when the file is missing."""
    import json

    path = Path(path) if path else COMMITTED_MANIFEST
    return {e["name"]: e for e in json.loads(path.read_text())["instances"]} if path.is_file() else {}


def _entry(inst: SuiteInstance, ref: dict | None, committed: dict | None = None) -> dict[str, Any]:
    """The manifest entry of ``inst``: with ``ref`` (:func:`reference_values`) its own metadata; without,
    the ``committed`` entry's baselines, bound and best known, the best known's energy re-evaluated
    on this regeneration (``energy_committed`` keeps the recorded one)."""
    meta = dict(inst.meta)
    if ref is not None:
        best = dict(ref["best_known"])
        best["sample"] = pack_bits(best["sample"])
        best["sample_encoding"] = "np.packbits of the 0/1 sample in variable order 0..n-1, hex"
        meta.update(baselines=ref["baselines"], best_known=best, lower_bound=ref["lower_bound"])
    elif committed is not None and committed["meta"].get("best_known"):
        cm = committed["meta"]
        best = dict(cm["best_known"])
        x = unpack_bits(best["sample"], inst.num_variables)
        best.update(energy=float(inst.bqm.energy((x, range(inst.num_variables)))), energy_committed=best["energy"])
        meta.update(baselines=cm.get("baselines", {}), best_known=best, lower_bound=cm.get("lower_bound"),
                    reference_from=f"{COMMITTED_MANIFEST.name}; best_known.energy re-evaluated on these files")
    return {"name": inst.name, "family": inst.family, "num_variables": inst.num_variables,
            "num_interactions": inst.bqm.num_interactions, **_content(inst.bqm), "has_integer_problem": inst.problem is not None, "meta": meta}


def generate_suite(out: str | os.PathLike, size: str = "full", formats=FORMATS, *, reference: bool = True,
                   seed: int = 0, tabu_s: float = 0.5, lns_tries: int = 200, only: str | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build every recipe of ``size`` (``only``: names containing this substring), write its files
    under ``out`` and, with ``reference``, its baselines, best known and bound (without: the committed
    manifest's, see :func:`_entry`); write ``out/manifest.json`` last (atomically). Returns the manifest."""
    formats = check_formats(formats)
    out = Path(out)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    (out / "problems").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    entries = []
    committed = {} if reference else _committed_entries()
    for r in recipes(size):
        if only and only not in r.name:
            continue
        t1 = time.perf_counter()
        inst = r.build()
        ref = reference_values(inst, seed=seed, tabu_s=tabu_s, lns_tries=lns_tries) if reference else None
        e = _entry(inst, ref, committed.get(inst.name))
        files = write_instance(inst.bqm, out / "instances" / inst.name, formats, title=f"{SUITE_NAME}/{inst.name}")
        if inst.problem is not None:
            path = out / "problems" / f"{inst.name}.npz"
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **problem_arrays(inst.problem, inst.kind, inst.levels))
            files["problem"] = path
        e["files"] = {k: {"path": str(p.relative_to(out)), "sha256": sha256_file(p)} for k, p in files.items()}
        e["build_s"] = time.perf_counter() - t1
        entries.append(e)
        if progress:
            best = e["meta"].get("best_known", {})
            lb = e["meta"].get("lower_bound") or {}
            progress(f"{inst.name}: n={inst.num_variables} best={best.get('energy')} by {best.get('found_by')} "
                     f"gap={lb.get('gap')} ({e['build_s']:.1f} s)")
    manifest = {"suite": SUITE_NAME, "size": size, "formats": list(formats), "seed": seed,
                "reference": {"tabu_s": tabu_s, "lns_tries": lns_tries} if reference else None,
                "versions": versions(), "wall_time_s": time.perf_counter() - t0,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "instances": entries}
    atomic_write_json(out / "manifest.json", to_jsonable(manifest))
    return manifest


def refresh_manifest(manifest: dict, suite_dir: str | os.PathLike, *, bounds: bool = True,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``manifest`` (e.g. the committed one) with each instance's fingerprint taken from the files in
    ``suite_dir`` (a regeneration whose content agrees with the manifest: :func:`compare_content`;
    an instance that differs raises) and, with ``bounds``, its lower bound recomputed on the integer
    problem in ``suite_dir`` against the manifest's best known. Best known and baselines are kept."""
    from qubo_nn.io.bqm_files import read_bqm

    here = {e["name"]: e for e in load_manifest(suite_dir)["instances"]}
    suite_dir = Path(suite_dir)
    for e in manifest["instances"]:
        h = here[e["name"]]
        bqm = read_bqm(suite_dir / h["files"]["dimod"]["path"])
        here_content = _content(bqm)
        best = e["meta"]["best_known"]
        x = unpack_bits(best["sample"], e["num_variables"])
        adopted = {**best, "energy_committed": best["energy"], "energy": float(bqm.energy((x, range(x.size))))}
        status, dist = compare_content({**here_content, "meta": {"best_known": adopted}}, e)
        if status == "differs":
            raise QuboNNError(f"expected {e['name']} in {suite_dir} to agree with the manifest, got relative distance {dist:.3g}")
        e["fingerprint"] = here_content["fingerprint"]
        if bounds and e["meta"].get("lower_bound") is not None:
            p, _, _ = read_problem(suite_dir / h["files"]["problem"]["path"])
            e["meta"]["lower_bound"] = bound_entry(p, best["energy"])
        if progress:
            lb = e["meta"].get("lower_bound") or {}
            progress(f"{e['name']}: {status} ({dist:.2g}); gap {lb.get('gap')}")
    return manifest


def refresh_committed(suite_dir: str | os.PathLike, path: str | os.PathLike | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """:func:`refresh_manifest` of the committed manifest (or ``path``) from the regeneration in
    ``suite_dir``, written back with a ``refreshed`` record (date, wall time, versions)."""
    import json

    path = Path(path) if path else COMMITTED_MANIFEST
    man = json.loads(path.read_text())
    t0 = time.perf_counter()
    refresh_manifest(man, suite_dir, progress=progress)
    man["refreshed"] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "wall_time_s": time.perf_counter() - t0, "versions": versions(),
                        "what": "fingerprints (bqm_fingerprint) from a regeneration that agrees with the content "
                                "digests within FINGERPRINT_RTOL, and lower bounds recomputed by "
                                "core.bounds.box_lower_bound on its integer problems; content digests, best known "
                                "and baselines are those of the first generation"}
    atomic_write_json(path, to_jsonable(man))
    return man


def load_manifest(suite_dir: str | os.PathLike) -> dict[str, Any]:
    import json

    path = Path(suite_dir) / "manifest.json"
    if not path.is_file():
        raise QuboNNError(f"expected a suite directory with manifest.json (qubo-nn bench generate --out DIR), "
                          f"got {str(suite_dir)!r}")
    return json.loads(path.read_text())


def compare_content(entry: dict, reference: dict) -> tuple[str, float]:
    """How an instance's manifest ``entry`` agrees with the ``reference`` entry of the same name:
    ("identical", 0) when its content digest is the reference's (or that of the content the reference's
    fingerprint was computed on); else ("within tolerance", d) or
    ("differs", d) by the largest relative distance d of the fingerprints (:func:`fingerprint_distance`)
    and of an adopted best-known energy (``energy_committed``); ("differs", ∞) with nothing to compare."""
    if entry["content_digest"] in (reference["content_digest"], reference.get("fingerprint", {}).get("content_digest")):
        return "identical", 0.0
    d = []
    if entry.get("fingerprint") and reference.get("fingerprint"):
        d.append(fingerprint_distance(entry["fingerprint"], reference["fingerprint"]))
    best = entry.get("meta", {}).get("best_known", {})
    if "energy_committed" in best:
        d.append(abs(best["energy"] - best["energy_committed"]) / max(abs(best["energy_committed"]), 1e-300))
    dist = max(d) if d else float("inf")
    return ("within tolerance" if dist <= FINGERPRINT_RTOL else "differs"), dist


def verify_suite(suite_dir: str | os.PathLike, regenerate: bool = False,
                 reference_manifest: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check every file's sha256 against ``manifest.json`` and every instance's content against the
    committed manifest (by name, :func:`compare_content`: bit-identical digests, or fingerprints
    within :data:`FINGERPRINT_RTOL` where BLAS round-off of another CPU or thread count changed the
    last bits); with ``regenerate``, rebuild each recipe and compare it with the manifest the same way.
    Returns {"ok", "checked", "instances", "identical", "within_tolerance" {name: distance}, "problems"}."""
    suite_dir = Path(suite_dir)
    man = load_manifest(suite_dir)
    ref = _committed_entries(reference_manifest)
    ref_name = Path(reference_manifest).name if reference_manifest else COMMITTED_MANIFEST.name
    problems, close, checked, identical = [], {}, 0, 0
    by_name = {r.name: r for r in recipes("full")}
    for e in man["instances"]:
        for fmt, f in e.get("files", {}).items():
            p = suite_dir / f["path"]
            checked += 1
            if not p.is_file():
                problems.append(f"{e['name']}: {f['path']} missing")
            elif sha256_file(p) != f["sha256"]:
                problems.append(f"{e['name']}: {f['path']} sha256 differs from the manifest")
        against = [(ref[e["name"]], ref_name)] if e["name"] in ref else []
        if regenerate:
            inst = by_name[e["name"]].build()
            against.append((_content(inst.bqm), "the regeneration"))
        for other, label in against:
            checked += 1
            status, dist = compare_content(e, other)
            if status == "identical":
                identical += 1
            elif status == "within tolerance":
                close[f"{e['name']} vs {label}"] = dist
            else:
                problems.append(f"{e['name']}: content differs from {label} (digest {e['content_digest'][:12]} != "
                                f"{other['content_digest'][:12]}, relative distance {dist:.3g} > {FINGERPRINT_RTOL:g})")
    return {"ok": not problems, "checked": checked, "instances": len(man["instances"]), "identical": identical,
            "within_tolerance": close, "problems": problems}

