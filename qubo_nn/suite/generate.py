"""Write a suite directory (instances in every format, integer problems, metadata, manifest) and
verify one (file sha256s and content digests against the manifest, or against a regeneration).

Layout of a suite directory::

    manifest.json            suite name, generator versions, one entry per instance: name, family,
                             num_variables, content digest (:func:`bqm_digest`), files {format: {path, sha256}},
                             and the metadata (source, energy meaning, offset, baselines, best known, bound)
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
from qubo_nn.suite.formats import FORMATS, check_formats, problem_arrays, write_instance
from qubo_nn.suite.instance import SuiteInstance, bqm_digest, pack_bits
from qubo_nn.suite.recipes import recipes
from qubo_nn.suite.reference import reference_values

#: the committed manifest of the full suite (digests and metadata; the instance files are regenerated)
COMMITTED_MANIFEST = Path(__file__).with_name(f"{SUITE_NAME}.json")


def _entry(inst: SuiteInstance, ref: dict | None) -> dict[str, Any]:
    meta = dict(inst.meta)
    if ref is not None:
        best = dict(ref["best_known"])
        best["sample"] = pack_bits(best["sample"])
        best["sample_encoding"] = "np.packbits of the 0/1 sample in variable order 0..n-1, hex"
        meta.update(baselines=ref["baselines"], best_known=best, lower_bound=ref["lower_bound"])
    return {"name": inst.name, "family": inst.family, "num_variables": inst.num_variables,
            "num_interactions": inst.bqm.num_interactions, "content_digest": bqm_digest(inst.bqm),
            "has_integer_problem": inst.problem is not None, "meta": meta}


def generate_suite(out: str | os.PathLike, size: str = "full", formats=FORMATS, *, reference: bool = True,
                   seed: int = 0, tabu_s: float = 0.5, lns_tries: int = 200, only: str | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build every recipe of ``size`` (``only``: names containing this substring), write its files
    under ``out`` and, with ``reference``, its baselines, best known and bound; write
    ``out/manifest.json`` last (atomically). Returns the manifest."""
    formats = check_formats(formats)
    out = Path(out)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    (out / "problems").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    entries = []
    for r in recipes(size):
        if only and only not in r.name:
            continue
        t1 = time.perf_counter()
        inst = r.build()
        ref = reference_values(inst, seed=seed, tabu_s=tabu_s, lns_tries=lns_tries) if reference else None
        e = _entry(inst, ref)
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


def load_manifest(suite_dir: str | os.PathLike) -> dict[str, Any]:
    import json

    path = Path(suite_dir) / "manifest.json"
    if not path.is_file():
        raise QuboNNError(f"expected a suite directory with manifest.json (qubo-nn bench generate --out DIR), "
                          f"got {str(suite_dir)!r}")
    return json.loads(path.read_text())


def verify_suite(suite_dir: str | os.PathLike, regenerate: bool = False,
                 reference_manifest: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check every file's sha256 against ``manifest.json`` (and the content digests against the
    committed manifest, by name); with ``regenerate``, rebuild each recipe and compare its content
    digest. Returns {"ok", "checked", "problems": [...]}."""
    import json

    suite_dir = Path(suite_dir)
    man = load_manifest(suite_dir)
    ref_path = Path(reference_manifest) if reference_manifest else COMMITTED_MANIFEST
    ref = {e["name"]: e for e in json.loads(ref_path.read_text())["instances"]} if ref_path.is_file() else {}
    problems, checked = [], 0
    by_name = {r.name: r for r in recipes("full")}
    for e in man["instances"]:
        for fmt, f in e.get("files", {}).items():
            p = suite_dir / f["path"]
            checked += 1
            if not p.is_file():
                problems.append(f"{e['name']}: {f['path']} missing")
            elif sha256_file(p) != f["sha256"]:
                problems.append(f"{e['name']}: {f['path']} sha256 differs from the manifest")
        if e["name"] in ref and ref[e["name"]]["content_digest"] != e["content_digest"]:
            problems.append(f"{e['name']}: content digest differs from the committed {ref_path.name}")
        if regenerate:
            checked += 1
            d = bqm_digest(by_name[e["name"]].build().bqm)
            if d != e["content_digest"]:
                problems.append(f"{e['name']}: regenerated content digest {d[:12]} != manifest {e['content_digest'][:12]}")
    return {"ok": not problems, "checked": checked, "instances": len(man["instances"]), "problems": problems}


def check_digests(names=None, reference_manifest: str | os.PathLike | None = None) -> dict[str, tuple[str, str]]:
    """{name: (regenerated digest, committed digest)} for recipes ``names`` (default the small subset)."""
    import json

    ref = {e["name"]: e for e in json.loads(Path(reference_manifest or COMMITTED_MANIFEST).read_text())["instances"]}
    rs = recipes("small") if names is None else [r for r in recipes("full") if r.name in set(names)]
    return {r.name: (bqm_digest(r.build().bqm), ref[r.name]["content_digest"]) for r in rs}
