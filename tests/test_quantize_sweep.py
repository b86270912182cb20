"""experiments/quantize_sweep.py: the summary and table are recomputed from the per-run records.

(That the digits feature pipeline is deterministic on one machine is tested in tests/test_records.py.)
"""
from __future__ import annotations

import json

import numpy as np
import pytest

METHODS = ("rtn", "gptq-natural", "gptq", "cd", "qubo")


@pytest.fixture(scope="module")
def sweep(load_script):
    return load_script("experiments/quantize_sweep.py")


def fake_records(seeds=(0, 1, 2, 3, 4), bits_list=(2, 4), rows=3, rng_seed=0) -> list[dict]:
    """Per-run records shaped like the sweep's, with random numbers (no quantization run)."""
    rng = np.random.default_rng(rng_seed)
    recs = []
    for ds in ("digits", "synthetic-features"):
        for bits in bits_list:
            for seed in seeds:
                ref = {"test_acc": float(rng.uniform(50, 99)), "test_loss": float(rng.uniform(0.1, 2)),
                       "train_acc": float(rng.uniform(50, 100)), "train_loss": float(rng.uniform(0.0, 1.5))}
                methods = {}
                for m in METHODS:
                    row_e = rng.uniform(0.0, 0.01, rows).tolist()
                    methods[m] = {"test_acc": float(rng.uniform(30, 99)), "test_loss": float(rng.uniform(0.1, 5)),
                                  "train_acc": float(rng.uniform(30, 100)), "train_loss": float(rng.uniform(0, 5)),
                                  "energy": float(rng.uniform(0, 0.2)), "wall_time_s": float(rng.uniform(0, 9)),
                                  "row_energies": row_e}
                methods["qubo"].update({"rows_improved": int(rng.integers(0, rows + 1)),
                                        "rows_anneal_stage": int(rng.integers(0, rows + 1)),
                                        "energy_classical": float(rng.uniform(0, 0.05)),
                                        "energy_anneal_raw": float(rng.uniform(0, 0.05))})
                recs.append({"dataset": ds, "bits": bits, "seed": seed, "reference": ref, "methods": methods,
                             "head_digest": f"h-{ds}", "features_digest": f"f-{ds}"})
    return recs


def test_summary_matches_numpy_on_the_same_numbers(sweep):
    recs = fake_records()
    S = sweep.summarize(recs)
    assert set(S) == {"digits", "synthetic-features"}
    for ds in S:
        runs = {b: [r for r in recs if r["dataset"] == ds and r["bits"] == b] for b in (2, 4)}
        assert S[ds]["seeds"] == [0, 1, 2, 3, 4]
        fp = np.array([r["reference"]["test_acc"] for b in (2, 4) for r in runs[b]])
        assert S[ds]["fp32"]["test_acc"]["mean"] == pytest.approx(fp.mean(), rel=1e-12)
        for b in (2, 4):
            assert list(S[ds]["bits"][b]) == list(METHODS)   # the methods in the table's order
            for m in METHODS:
                c = S[ds]["bits"][b][m]
                for key in ("test_acc", "test_loss", "train_loss", "energy", "wall_time_s"):
                    x = np.array([r["methods"][m][key] for r in runs[b]])
                    assert c[key]["n"] == 5
                    assert c[key]["mean"] == pytest.approx(x.mean(), rel=1e-12)
                    assert c[key]["std"] == pytest.approx(x.std(ddof=1), rel=1e-12)
                delta = np.array([r["methods"][m]["test_acc"] - r["reference"]["test_acc"] for r in runs[b]])
                assert c["delta_acc"]["mean"] == pytest.approx(delta.mean(), rel=1e-12)
            q = S[ds]["bits"][b]["qubo"]
            gain = [r["methods"]["qubo"]["energy_classical"] - sum(r["methods"]["qubo"]["row_energies"])
                    for r in runs[b]]
            vs_cd = [sum(r["methods"]["cd"]["row_energies"]) - r["methods"]["qubo"]["energy_classical"]
                     for r in runs[b]]
            assert q["anneal_gain"]["mean"] == pytest.approx(np.mean(gain), rel=1e-12)
            assert q["classical_gain_vs_cd"]["std"] == pytest.approx(np.std(vs_cd, ddof=1), rel=1e-12)
            assert q["energy_below_cd"] == sum(r["methods"]["qubo"]["energy"] < r["methods"]["cd"]["energy"]
                                               for r in runs[b])
            assert q["rows"] == 3 and q["runs"] == 5
            paired = [r["methods"]["qubo"]["test_acc"] - r["methods"]["cd"]["test_acc"] for r in runs[b]]
            assert q["acc_minus_cd"]["mean"] == pytest.approx(np.mean(paired), rel=1e-12)
            assert q["acc_minus_cd"]["std"] == pytest.approx(np.std(paired, ddof=1), rel=1e-12)


def test_a_deterministic_method_has_std_zero_and_one_seed_has_no_std(sweep):
    recs = [r for r in fake_records(seeds=(0, 1, 2)) if r["dataset"] == "digits"]
    for r in recs:
        r["methods"]["gptq"]["test_acc"] = 91.25   # the same on every seed, as gptq on digits
    S = sweep.summarize(recs)
    assert S["digits"]["bits"][2]["gptq"]["test_acc"] == {"mean": 91.25, "std": 0.0, "n": 3, "min": 91.25,
                                                          "max": 91.25}
    one = sweep.summarize([r for r in recs if r["seed"] == 0])
    assert one["digits"]["bits"][2]["rtn"]["test_acc"]["std"] == 0.0
    assert "±" not in sweep._pm(one["digits"]["bits"][2]["rtn"]["test_acc"])


def test_table_and_summary_file_are_recomputed_from_the_run_files_on_disk(sweep, tmp_path):
    recs = fake_records(seeds=(0, 1, 2, 3, 4), bits_list=(3,))
    for r in recs:
        path = sweep.run_path(tmp_path, r["dataset"], r["bits"], r["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    # a run record of another seed changes the table: nothing is cached between calls
    sweep.write_summary(tmp_path)
    first = (tmp_path / "table.md").read_text()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    x = np.array([r["methods"]["qubo"]["test_acc"] for r in recs if r["dataset"] == "digits"])
    assert on_disk["summary"]["digits"]["bits"]["3"]["qubo"]["test_acc"]["mean"] == pytest.approx(x.mean())
    assert on_disk["runs"] == len(recs)
    row = next(line for line in first.splitlines() if line.startswith("| 3 | qubo"))
    assert f"{x.mean():.2f} ± {x.std(ddof=1):.2f}" in row
    assert (tmp_path / "accuracy_vs_bits.png").stat().st_size > 0

    extra = dict(recs[0], seed=5, methods={**recs[0]["methods"],
                                           "qubo": {**recs[0]["methods"]["qubo"], "test_acc": 0.0}})
    sweep.run_path(tmp_path, "digits", 3, 5).write_text(json.dumps(extra))
    sweep.write_summary(tmp_path)
    x6 = np.append(x, 0.0)
    row = next(line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| 3 | qubo"))
    assert f"{x6.mean():.2f} ± {x6.std(ddof=1):.2f}" in row
    assert json.loads((tmp_path / "summary.json").read_text())["summary"]["digits"]["seeds"] == [0, 1, 2, 3, 4, 5]
