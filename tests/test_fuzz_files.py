"""Fuzz the readers (issue 23): valid .bqm, .coo, .qubo, manifest, sidecar and samples files are
mangled at random (truncation, byte flips, huge/NaN numbers, wrong types, duplicate ids, paths
outside the folder) and solved through the CLI. No case may end in a traceback, a signal, output
under --json that is not one JSON object (NaN included), or exit 0 with a result other than the
undamaged input's (a build's or a solve's files carry digests: damage is refused, never used).

40 cases by default (seeded, a few seconds); ``QUBO_NN_FUZZ_CASES=2000`` runs more,
``QUBO_NN_FUZZ_SEED`` picks another sequence.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import dimod
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qubo_nn.cli.main import main
from qubo_nn.core.head import Head
from qubo_nn.data.featureset import synthetic_features
from qubo_nn.io.bqm_files import read_bqm, write_bqm
from qubo_nn.io.solutions import best_bits, read_samples
from qubo_nn.workflows.build import BuildConfig, build_to_dir

pytestmark = pytest.mark.usefixtures("one_thread")
CASES = int(os.environ.get("QUBO_NN_FUZZ_CASES", "40"))
SEED = int(os.environ.get("QUBO_NN_FUZZ_SEED", "0"))
KINDS = ("bqm", "coo", "qubo", "block", "manifest", "sidecar", "samples")
SOLVE = ["--sampler", "steepest", "--seed", "0", "--json", "--no-progress"]
WEIRD = [1e308, -1e308, float("nan"), float("inf"), -1, 0, 2**40, "x", "../outside.bqm", "/etc/passwd", None,
         [], {}, True, 3.5]
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
NUMBERS = [b"1e308", b"-1e308", b"nan", b"NaN", b"inf", b"Infinity", b"1e400", b"99999999999", b"-1", b"0.5", b"x"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Valid files of every kind, and the result of solving the build undamaged."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    train, _ = synthetic_features(n=200, dim=4, num_classes=3, seed=0, n_test=10)
    build_to_dir(Head.init_like_linear(3, 4, seed=0), train,
                 BuildConfig(bits=2, window=0.25, device="cpu", dtype="float64"), root / "build")
    bqm = dimod.BinaryQuadraticModel({0: 1.0, 1: -2.0, 2: 0.5, 3: 0.0}, {(0, 1): 1.5, (1, 2): -1.0, (2, 3): 0.25},
                                     0.25, "BINARY")
    for suffix in (".bqm", ".coo", ".qubo"):
        write_bqm(bqm, root / f"plain{suffix}")
    res = CliRunner().invoke(main, ["solve", str(root / "build"), "--out", str(root / "sol"), *SOLVE])
    assert res.exit_code == 0, res.output
    best = [r["best_energy"] for r in json.loads(res.stdout)["blocks"]]
    return root, best


def mangle_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    op = rng.integers(3)
    if op == 0 or not data:                                           # truncation
        return data[:int(rng.integers(0, max(len(data), 1)))]
    if op == 1:                                                       # byte flips
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(len(buf)))] ^= int(rng.integers(1, 256))
        return bytes(buf)
    spans = [m.span() for m in NUMBER.finditer(data)]                 # a number → huge, NaN, not a number
    if not spans:
        return data[::-1]
    a, b = spans[int(rng.integers(len(spans)))]
    return data[:a] + NUMBERS[int(rng.integers(len(NUMBERS)))] + data[b:]


def _containers(obj, out):
    if isinstance(obj, dict):
        out.append(obj)
        for v in obj.values():
            _containers(v, out)
    elif isinstance(obj, list):
        out.append(obj)
        for v in obj:
            _containers(v, out)
    return out


def mangle_json(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    if rng.random() < 0.3:
        return mangle_bytes(data, rng)
    obj = json.loads(data)
    op = rng.integers(4)
    if kind == "manifest" and op == 0:                                # duplicate ids
        obj["blocks"].append(dict(obj["blocks"][int(rng.integers(len(obj["blocks"])))]))
    elif kind in ("manifest", "sidecar") and op == 1:                 # paths outside the folder
        where = obj["blocks"][int(rng.integers(len(obj["blocks"])))] if kind == "manifest" else obj
        key = ["file", "npz", "levels", "sidecar"][int(rng.integers(4))]
        where[key] = ["../build/" + str(where.get(key)), "/etc/hostname", "../../x.bqm"][int(rng.integers(3))]
    else:                                                             # wrong types, huge and NaN numbers
        boxes = [c for c in _containers(obj, []) if c]
        box = boxes[int(rng.integers(len(boxes)))]
        key = list(box)[int(rng.integers(len(box)))] if isinstance(box, dict) else int(rng.integers(len(box)))
        if rng.random() < 0.15 and isinstance(box, dict):
            del box[key]
        else:
            box[key] = WEIRD[int(rng.integers(len(WEIRD)))]
    return json.dumps(obj).encode()


def make_case(root: Path, case: Path, kind: str, rng: np.random.Generator) -> tuple[list[str], str]:
    """Copy what ``kind`` needs into ``case``, damage one file; return the solve arguments and the file."""
    if kind in ("bqm", "coo", "qubo"):
        src = case / f"plain.{kind}"
        shutil.copy(root / src.name, src)
        target, args = src, [str(src)]
    else:
        build = Path(shutil.copytree(root / "build", case / "build"))
        args = [str(build)]
        if kind == "samples":
            sol = Path(shutil.copytree(root / "sol", case / "sol"))
            (sol / "solution.json").unlink()
            target = sorted(sol.glob("*.samples.json"))[int(rng.integers(3))]
        else:
            target = {"block": build / f"block_0000{rng.integers(3)}.bqm", "manifest": build / "manifest.json",
                      "sidecar": build / f"block_0000{rng.integers(3)}.json"}[kind]
    data = target.read_bytes()
    new = mangle_json(data, kind, rng) if target.suffix == ".json" else mangle_bytes(data, rng)
    if new == data:
        new = data[:-1]
    target.write_bytes(new)
    return args + ["--out", str(case / "sol")], str(target)


def test_fuzz_mangled_files_never_crash_and_never_pass_silently(corpus, tmp_path):
    root, best = corpus
    rng = np.random.default_rng(SEED)
    counts = {0: 0, 2: 0}
    for i in range(CASES):
        kind = KINDS[i % len(KINDS)]
        case = tmp_path / f"case{i}"
        case.mkdir()
        args, target = make_case(root, case, kind, rng)
        res = CliRunner().invoke(main, ["solve", *args, *SOLVE])
        where = f"case {i} ({kind}, {target})"
        assert res.exit_code in (0, 2), f"{where}: exit {res.exit_code}\n{res.output}\n{res.exc_info}"
        assert "Traceback" not in res.output, where
        obj = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"{where}: {c} in --json output"))
        assert obj["ok"] is (res.exit_code == 0), where
        if res.exit_code == 0:
            rows = [r["best_energy"] for r in obj["blocks"]]
            if kind in ("bqm", "coo", "qubo"):    # a still-valid plain file is a model like any other: the
                bqm = read_bqm(target)             # result must be that model's (stored energy checked)
                x = best_bits(read_samples(case / "sol" / obj["blocks"][0]["samples"]), bqm, where)
                assert rows[0] == pytest.approx(float(bqm.energies((x[None, :], list(range(len(x)))))[0]))
            else:                                  # a build's or a solve's files: damage never used
                assert rows == best, f"{where}: exit 0 with a result other than the undamaged input's"
        else:
            assert obj["error"] and len(res.stderr.strip().splitlines()) == 1, where
        counts[res.exit_code] += 1
        shutil.rmtree(case)
    assert counts[2] > 0
