"""QUBO files: exact round trips in every format, files made elsewhere, sidecars, manifests."""
from __future__ import annotations

import json
import shutil

import dimod
import numpy as np
import pytest
import torch

import qubo_nn.workflows.build as build_mod
from dimod.serialization import coo as dimod_coo

from qubo_nn.core.head import Head
from qubo_nn.curvature.head_stats import HeadStats
from qubo_nn.data.featureset import FeatureSet
from qubo_nn.errors import QuboNNError
from qubo_nn.io.blocks import read_block, write_block
from qubo_nn.io.bqm_files import FORMATS, SUFFIXES, read_bqm, write_bqm
from qubo_nn.io.manifest import read_manifest
from qubo_nn.workflows.build import (
    BuildConfig,
    build_to_dir,
    iter_block_qubos,
    make_block_qubo,
)


def awkward_bqm(n: int = 12, dtype=np.float64, seed: int = 0) -> dimod.BinaryQuadraticModel:
    """Dense BQM whose biases span 1e-12 .. 1e12, with zeros, negative zero, a big offset."""
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n, n)) * 10.0 ** rng.integers(-12, 13, (n, n))
    Q[0, 1] = Q[1, 0] = 0.0          # a zero coupler (kept by COO/dimod, dropped by qbsolv)
    Q[2, 2] = 0.0                    # a zero linear bias
    Q[3, 4], Q[4, 3] = 1e-12, 0.0
    Q[5, 6], Q[6, 5] = 1e12, 0.0
    Q[7, 8], Q[8, 7] = 1.0 / 3.0, 0.0
    bqm = dimod.BinaryQuadraticModel(Q, "BINARY", offset=-1234.5678901234567, dtype=dtype)
    bqm.add_quadratic(0, 1, 0.0)     # the dense constructor skips zeros: store one explicitly
    return bqm


def random_samples(n: int, k: int = 64, seed: int = 1) -> np.ndarray:
    X = np.random.default_rng(seed).integers(0, 2, (k, n)).astype(np.int8)
    return np.vstack([X, np.zeros(n, np.int8), np.ones(n, np.int8)])


def energies(bqm, X):
    return bqm.energies((X, range(X.shape[1])))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_format_round_trips_exactly(tmp_path, fmt, dtype):
    bqm = awkward_bqm(dtype=dtype)
    path = tmp_path / ("model" + SUFFIXES[fmt])
    write_bqm(bqm, path)
    back = read_bqm(path)
    assert list(back.variables) == list(range(bqm.num_variables))
    assert back.vartype is dimod.BINARY and back.dtype == dtype
    assert back.offset == bqm.offset
    X = random_samples(bqm.num_variables)
    assert np.array_equal(energies(back, X), energies(bqm, X))          # identical, not just close
    assert back.get_linear(2) == 0.0 and back.get_quadratic(3, 4) == dtype(1e-12)
    assert back.get_quadratic(5, 6) == dtype(1e12) and back.get_quadratic(7, 8) == dtype(1.0 / 3.0)
    if fmt == "qubo":
        assert back.num_interactions == bqm.num_interactions - 1        # the zero coupler is not written
    else:
        assert back.num_interactions == bqm.num_interactions
        assert back == bqm
    assert not list(tmp_path.glob(".*.tmp"))                            # no temporary left behind


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_and_isolated_variables_round_trip(tmp_path, fmt):
    empty = dimod.BinaryQuadraticModel({}, {}, 2.5, "BINARY")
    write_bqm(empty, tmp_path / ("e" + SUFFIXES[fmt]))
    back = read_bqm(tmp_path / ("e" + SUFFIXES[fmt]))
    assert back.num_variables == 0 and back.offset == 2.5
    lonely = dimod.BinaryQuadraticModel({0: 0.0, 1: 0.0, 2: 1.0}, {}, 0.0, "BINARY")
    write_bqm(lonely, tmp_path / ("l" + SUFFIXES[fmt]))
    assert read_bqm(tmp_path / ("l" + SUFFIXES[fmt])) == lonely


def test_native_file_is_read_by_plain_dimod(tmp_path):
    bqm = awkward_bqm()
    write_bqm(bqm, tmp_path / "m.bqm")
    with open(tmp_path / "m.bqm", "rb") as fh:
        plain = dimod.BinaryQuadraticModel.from_file(fh)
    assert plain == bqm and plain.offset == bqm.offset


def test_coo_header_and_text(tmp_path):
    bqm = dimod.BinaryQuadraticModel({0: 1e-7, 1: -2.5, 2: 0.0}, {(0, 1): 1e-5, (1, 2): 3.0}, 0.25, "BINARY")
    write_bqm(bqm, tmp_path / "m.coo")
    lines = (tmp_path / "m.coo").read_text().splitlines()
    assert lines[0] == "# vartype=BINARY"
    assert "# offset=0.25" in lines and "# num_variables=3" in lines and lines[-1] == "# end"
    assert "0 0 1e-07" in lines and "0 1 1e-05" in lines and "2 2 0.0" in lines
    # SPIN models are kept as SPIN in COO
    spin = dimod.BinaryQuadraticModel({0: 0.5, 1: -1.0}, {(0, 1): 2.0}, 1.5, "SPIN")
    write_bqm(spin, tmp_path / "s.coo")
    back = read_bqm(tmp_path / "s.coo")
    assert back.vartype is dimod.SPIN and back == spin


def test_reads_coo_written_by_dimod_and_by_hand(tmp_path):
    bqm = dimod.BinaryQuadraticModel({0: -1.0, 1: 0.5, 3: 2.0}, {(0, 1): 1.5, (1, 3): -4.25, (0, 3): 0.125},
                                     0.0, "BINARY")
    (tmp_path / "d.coo").write_text(dimod_coo.dumps(bqm, vartype_header=True))
    back = read_bqm(tmp_path / "d.coo")
    assert back.num_variables == 4 and back.get_linear(2) == 0.0     # labels 0..3 (2 isolated)
    X = random_samples(4)
    ref = dimod.BinaryQuadraticModel({**dict(bqm.linear), 2: 0.0}, bqm.quadratic, 0.0, "BINARY")
    assert np.array_equal(energies(back, X), ref.energies((X, range(4))))
    (tmp_path / "nohdr.coo").write_text(dimod_coo.dumps(bqm))        # no header: BINARY assumed
    assert read_bqm(tmp_path / "nohdr.coo").vartype is dimod.BINARY
    # exponents (which dimod's own reader silently drops), i > j, repeated pairs summed, tabs, blank lines
    (tmp_path / "hand.coo").write_text("# made by hand\n0 0 1e-05\n1\t0 2.5E+3\n\n0 1 -0.5\n2 2 -3.0e-12\n")
    hand = read_bqm(tmp_path / "hand.coo")
    assert hand.get_linear(0) == 1e-05 and hand.get_quadratic(0, 1) == 2499.5 and hand.get_linear(2) == -3e-12
    assert hand.num_variables == 3 and hand.offset == 0.0


def test_reads_plain_qbsolv_files(tmp_path):
    (tmp_path / "q.qubo").write_text("c a comment\np qubo 0 4 2 2\n0 0 3.4\n2 2 -1e-3\n0 2 2.0\n3 0 -1.0\n")
    bqm = read_bqm(tmp_path / "q.qubo")
    assert bqm.num_variables == 4 and bqm.offset == 0.0
    assert bqm.get_linear(0) == 3.4 and bqm.get_linear(2) == -1e-3 and bqm.get_quadratic(0, 3) == -1.0
    (tmp_path / "bad.qubo").write_text("p qubo 0 4 2 3\n0 0 3.4\n2 2 -1\n0 2 2.0\n")
    with pytest.raises(QuboNNError, match="the 'p' line promises 2 nodes and 3 couplers, the file has 2 and 1"):
        read_bqm(tmp_path / "bad.qubo")
    (tmp_path / "nop.qubo").write_text("0 0 1.0\n")
    with pytest.raises(QuboNNError, match="no 'p qubo 0 maxNodes nNodes nCouplers' line"):
        read_bqm(tmp_path / "nop.qubo")
    # our qbsolv output: header comments, nodes before couplers, i < j, a SPIN model converted
    spin = dimod.BinaryQuadraticModel({0: 0.5, 1: -1.0}, {(0, 1): 2.0}, 1.5, "SPIN")
    write_bqm(spin, tmp_path / "s.qubo")
    text = (tmp_path / "s.qubo").read_text().splitlines()
    assert "p qubo 0 2 2 1" in text and text[-1] == "c end"
    back = read_bqm(tmp_path / "s.qubo")
    X = random_samples(2)
    np.testing.assert_allclose(back.energies((X, [0, 1])),
                               spin.change_vartype("BINARY", inplace=False).energies((X, [0, 1])), rtol=1e-14)


@pytest.mark.parametrize("fmt", ["coo", "qubo", "dimod"])
def test_truncated_or_malformed_files_fail_clearly(tmp_path, fmt):
    path = tmp_path / ("m" + SUFFIXES[fmt])
    write_bqm(awkward_bqm(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QuboNNError, match="truncated"):
        read_bqm(path)
    with pytest.raises(QuboNNError, match="does not exist"):
        read_bqm(tmp_path / ("none" + SUFFIXES[fmt]))


def test_bad_text_and_labels(tmp_path):
    (tmp_path / "a.coo").write_text("0 1\n")
    with pytest.raises(QuboNNError, match="expected 3 columns 'i j bias' per line, got 2"):
        read_bqm(tmp_path / "a.coo")
    (tmp_path / "a2.coo").write_text("0 1 2.0\n1 x 3.0\n")
    with pytest.raises(QuboNNError, match="is not a valid COO file"):
        read_bqm(tmp_path / "a2.coo")
    (tmp_path / "b.coo").write_text("0 1 nan\n")
    with pytest.raises(QuboNNError, match="1 biases are NaN/Inf"):
        read_bqm(tmp_path / "b.coo")
    (tmp_path / "c.coo").write_text("-1 1 2.0\n")
    with pytest.raises(QuboNNError, match="variable labels must be non-negative integers"):
        read_bqm(tmp_path / "c.coo")
    with pytest.raises(QuboNNError, match="cannot tell the format of 'x.txt' from its suffix"):
        read_bqm("x.txt")
    with pytest.raises(QuboNNError, match=r"format must be one of \('dimod', 'coo', 'qubo'\), got 'json'"):
        write_bqm(awkward_bqm(), tmp_path / "x.bqm", fmt="json")
    named = dimod.BinaryQuadraticModel({"a": 1.0}, {}, 0.0, "BINARY")
    with pytest.raises(QuboNNError, match="the coo format needs non-negative integer variable labels, got 'a'"):
        write_bqm(named, tmp_path / "n.coo")
    write_bqm(named, tmp_path / "n.bqm")                                # the native format keeps any label
    assert read_bqm(tmp_path / "n.bqm") == named


# ------------------------------------------------------------------ blocks, sidecars, manifests

def tiny(seed: int = 0, n: int = 50, c: int = 3, d: int = 6) -> tuple[Head, FeatureSet]:
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(n, d, generator=g) + 0.3)
    y = torch.randint(0, c, (n,), generator=g)
    return Head(0.3 * torch.randn(c, d, generator=g), 0.1 * torch.randn(c, generator=g)), FeatureSet(X, y, c)


@pytest.mark.parametrize("fmt", FORMATS)
def test_block_with_sidecar_round_trips(tmp_path, fmt):
    head, feats = tiny()
    cfg = BuildConfig(bits=3, device="cpu", dtype="float64")
    stats = HeadStats(head, feats, device="cpu", dtype="float64")
    blk = make_block_qubo(stats, torch.arange(7, 14), cfg, block_id=3)
    entry = write_block(tmp_path, blk, fmt, "h" * 16, "f" * 16)
    assert entry["file"] == "block_00003" + SUFFIXES[fmt] and entry["sidecar"] == "block_00003.json"
    assert entry["num_variables"] == 21 and entry["block_id"] == 3
    bqm, enc, side = read_block(tmp_path / entry["file"])
    X = random_samples(21)
    assert np.array_equal(energies(bqm, X), energies(blk.bqm, X)) and bqm.offset == blk.bqm.offset
    assert side["mode"] == "optimize" and side["bits"] == 3 and side["damping"] == blk.damping
    assert side["L0"] == blk.model.L0 and side["head_digest"] == "h" * 16
    for x in X[:10]:
        assert torch.equal(enc.decode(x), blk.enc.decode(x))
    assert torch.equal(enc.decode(enc.current_bits()), blk.model.theta0)
    # the sidecar path works too, and digests are checked when given
    assert read_block(tmp_path / entry["sidecar"], head_digest="h" * 16)[2]["block_id"] == 3
    with pytest.raises(QuboNNError, match="was built from head hhhh"):
        read_block(tmp_path / entry["file"], head_digest="0" * 16)
    # a bare copy of the file (no sidecar) reads as a plain BQM
    bare = tmp_path / "bare" / ("x" + SUFFIXES[fmt])
    bare.parent.mkdir()
    shutil.copy(tmp_path / entry["file"], bare)
    b2, e2, s2 = read_block(bare)
    assert e2 is None and s2 == {} and np.array_equal(energies(b2, X), energies(blk.bqm, X))


def test_mismatched_or_damaged_sidecar_pairs_fail_clearly(tmp_path):
    head, feats = tiny()
    cfg = BuildConfig(bits=2, device="cpu", dtype="float64")
    stats = HeadStats(head, feats, device="cpu", dtype="float64")
    a = write_block(tmp_path / "a", make_block_qubo(stats, torch.arange(0, 7), cfg, 0), "dimod", "h", "f")
    b = write_block(tmp_path / "b", make_block_qubo(stats, torch.arange(7, 14), cfg, 0), "dimod", "h", "f")
    # the same size, different content: only the digest tells them apart
    shutil.copy(tmp_path / "b" / b["file"], tmp_path / "a" / a["file"])
    with pytest.raises(QuboNNError, match="does not match its sidecar 'block_00000.json' \\(sha256 differs\\)"):
        read_block(tmp_path / "a" / a["file"])
    # truncated file
    data = (tmp_path / "b" / b["file"]).read_bytes()
    (tmp_path / "b" / b["file"]).write_bytes(data[:-10])
    with pytest.raises(QuboNNError, match=r"has \d+ bytes but its sidecar says \d+ \(truncated"):
        read_block(tmp_path / "b" / b["file"])
    # damaged sidecars
    side = tmp_path / "b" / b["sidecar"]
    side.write_text(side.read_text()[:40])
    with pytest.raises(QuboNNError, match="is not valid JSON"):
        read_block(tmp_path / "b" / b["file"])
    side.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(QuboNNError, match="is not a qubo-nn block sidecar"):
        read_block(side)


def test_build_to_dir_writes_a_complete_manifest(tmp_path):
    head, feats = tiny(1)
    cfg = BuildConfig(blocks="rows", bits=2, device="cpu", dtype="float64", seed=5)
    ref = {"dataset": "synthetic-features", "n_train": 50}
    man_path = build_to_dir(head, feats, cfg, tmp_path / "out", fmt="coo", features_ref=ref)
    assert man_path == tmp_path / "out" / "manifest.json"
    man = read_manifest(tmp_path / "out")
    assert man == read_manifest(man_path)
    assert man["features"] == ref and man["config"]["seed"] == 5 and man["file_format"] == "coo"
    assert man["head"] == "head.pt" and "torch" in man["versions"] and man["dir"] == str((tmp_path / "out").resolve())
    assert [b["block_id"] for b in man["blocks"]] == [0, 1, 2]
    assert man["totals"]["variables"] == 3 * 7 * 2 and man["totals"]["blocks"] == 3
    sd = torch.load(tmp_path / "out" / "head.pt", weights_only=True)
    assert torch.equal(sd["weight"], head.W) and torch.equal(sd["bias"], head.b)
    streamed = list(iter_block_qubos(head, feats, cfg))                   # the same without files
    X = random_samples(14)
    for entry, blk in zip(man["blocks"], streamed):
        assert set(entry["timings"]) == {"hessian_s", "qubo_s", "write_s"}
        bqm, enc, side = read_block(entry["path"], head_digest=man["head_digest"],
                                    features_digest=man["features_digest"])
        assert bqm.num_variables == entry["num_variables"] and bqm.num_interactions == entry["num_interactions"]
        assert np.array_equal(energies(bqm, X), energies(blk.bqm, X))
        assert torch.equal(enc.idx, blk.enc.idx)
    # a rebuild removes the old manifest first: an interrupted build leaves none
    (tmp_path / "out" / man["blocks"][1]["file"]).unlink()
    with pytest.raises(QuboNNError, match="lists files that are missing: \\['block_00001.coo'\\]"):
        read_manifest(tmp_path / "out")

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    orig = write_block
    build_mod.write_block = boom
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            build_to_dir(head, feats, cfg, tmp_path / "out", fmt="coo", overwrite=True)
    finally:
        build_mod.write_block = orig
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(QuboNNError, match="no manifest at .* \\(is the build finished"):
        read_manifest(tmp_path / "out")


def test_build_to_dir_refuses_bad_settings_before_writing(tmp_path):
    head, feats = tiny()
    with pytest.raises(QuboNNError, match=r"bits per weight must be an integer in \[1, 16\], got 0"):
        build_to_dir(head, feats, BuildConfig(bits=0, device="cpu"), tmp_path / "o")
    with pytest.raises(QuboNNError, match="format must be one of"):
        build_to_dir(head, feats, BuildConfig(device="cpu"), tmp_path / "o", fmt="txt")
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(QuboNNError, match="exists and is not a directory"):
        build_to_dir(head, feats, BuildConfig(device="cpu"), tmp_path / "file")
    (tmp_path / "m.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(QuboNNError, match="is not a qubo-nn manifest"):
        read_manifest(tmp_path / "m.json")


# --------------------------------------------------------------------------- issue 11: bad files, stale builds, disk

@pytest.mark.parametrize("name, text, what", [
    ("empty.coo", "", "an empty file"),
    ("end.coo", "# end\n", "only comments"),
    ("hdr.coo", "# vartype=BINARY\n# offset=1.5\n", "only comments"),
    ("empty.qubo", "", "an empty file"),
])
def test_a_text_file_without_any_triplet_is_refused(tmp_path, name, text, what):
    (tmp_path / name).write_text(text)
    with pytest.raises(QuboNNError, match=f"holds no QUBO: expected lines 'i j bias', got {what}"):
        read_bqm(tmp_path / name)


def test_an_explicitly_empty_model_written_here_still_reads(tmp_path):
    write_bqm(dimod.BinaryQuadraticModel({}, {}, 2.5, "BINARY"), tmp_path / "e.coo")
    assert read_bqm(tmp_path / "e.coo").num_variables == 0
    (tmp_path / "p.qubo").write_text("p qubo 0 0 0 0\n")
    assert read_bqm(tmp_path / "p.qubo").num_variables == 0


@pytest.mark.parametrize("linear, quadratic, offset, message", [
    ({0: float("nan"), 1: 1.0}, {}, 0.0, "1 biases are NaN/Inf, expected finite numbers"),
    ({0: 1.0, 1: 1.0}, {(0, 1): float("-inf")}, 0.0, "1 biases are NaN/Inf, expected finite numbers"),
    ({0: 1.0, 1: 1.0}, {(0, 1): 2.0}, float("inf"), "the offset is inf, expected a finite number"),
    ({0: 1.0, 1: 1.0}, {(0, 1): 2.0}, float("nan"), "the offset is nan, expected a finite number"),
])
def test_native_bqm_with_nan_or_inf_is_refused(tmp_path, linear, quadratic, offset, message):
    write_bqm(dimod.BinaryQuadraticModel(linear, quadratic, offset, "BINARY"), tmp_path / "bad.bqm")
    with open(tmp_path / "bad.bqm", "rb") as fh:   # the file itself is valid dimod: the values are the problem
        assert dimod.BinaryQuadraticModel.from_file(fh).num_variables == 2
    with pytest.raises(QuboNNError, match=message):
        read_bqm(tmp_path / "bad.bqm")


def test_coo_with_an_infinite_offset_is_refused(tmp_path):
    (tmp_path / "inf.coo").write_text("# offset=inf\n0 0 1.0\n")
    with pytest.raises(QuboNNError, match="the offset is inf, expected a finite number"):
        read_bqm(tmp_path / "inf.coo")


def test_build_into_a_folder_holding_another_build_is_refused_then_replaced(tmp_path):
    head, feats = tiny(c=4)
    out = tmp_path / "out"
    build_to_dir(head, feats, BuildConfig(bits=1, device="cpu"), out)                       # 4 row blocks
    (out / "notes.txt").write_text("mine")
    small = BuildConfig(blocks="rows", per_block=2, bits=1, device="cpu")                   # 2 blocks
    with pytest.raises(QuboNNError, match=r"already holds a build \(18 files, 4 block files\); expected an empty "
                                          r"or new folder: pass overwrite \(--overwrite\)"):
        build_to_dir(head, feats, small, out)
    assert len(read_manifest(out)["blocks"]) == 4                                           # untouched
    build_to_dir(head, feats, small, out, overwrite=True)
    assert sorted(p.name for p in out.glob("block_*.bqm")) == ["block_00000.bqm", "block_00001.bqm"]
    assert sorted(p.name for p in out.glob("block_*.levels.npz")) == ["block_00000.levels.npz",
                                                                     "block_00001.levels.npz"]
    assert (out / "notes.txt").read_text() == "mine"                                        # not a build's file
    assert len(read_manifest(out)["blocks"]) == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_estimate_build_matches_the_bytes_written(tmp_path, fmt):
    from qubo_nn.workflows.build import estimate_build

    head, feats = tiny(c=3, d=40)
    cfg = BuildConfig(bits=2, device="cpu")
    est = estimate_build(3, 40, cfg, fmt)
    build_to_dir(head, feats, cfg, tmp_path / "o", fmt=fmt)
    man = read_manifest(tmp_path / "o")
    assert est["blocks"] == 3 and est["variables"] == man["totals"]["variables"] == 3 * 41 * 2
    written = sum(p.stat().st_size for p in (tmp_path / "o").iterdir() if p.name not in ("manifest.json", "head.pt"))
    if fmt == "dimod":   # exact for the dense block files
        assert est["interactions"] == man["totals"]["interactions"] == 3 * 82 * 81 // 2
    assert 0.85 * written <= est["bytes"] <= 1.25 * written


def test_build_beyond_max_disk_is_refused_before_writing(tmp_path):
    head, feats = tiny(c=3, d=40)
    with pytest.raises(QuboNNError, match=r"the build would write about 0\.\d MiB, more than the limit of 0\.1 MiB"):
        build_to_dir(head, feats, BuildConfig(bits=2, device="cpu"), tmp_path / "o", max_disk_bytes=2**20 // 10)
    assert not (tmp_path / "o").exists()
