"""Reproducible records: the digits features are deterministic on one machine, and a run's
summary is what its per-seed files say."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qubo_nn.study.experiment import RESULTS_SUBDIR, ExperimentConfig, run_experiment, summarize
from qubo_nn.data.features import FeatureConfig, get_features
from qubo_nn.workflows.head_optimize import HybridConfig
from qubo_nn.workflows.build import BuildConfig
from qubo_nn.runtime import tensor_digest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_features_are_deterministic_with_a_fresh_cache(tmp_path):
    """Two extractions into two empty caches (no cache hit possible) give the same bytes."""
    digests = []
    for name in ("a", "b"):
        cfg = FeatureConfig(dataset="digits", image_size=16, limit=24, batch_size=8, device="cpu",
                            cache_dir=str(tmp_path / name))
        res = get_features(cfg)
        assert not res.hit
        digests.append(tensor_digest(res.train.X, res.train.y, res.test.X, res.test.y))
    assert digests[0] == digests[1]


def test_summary_is_recomputed_from_the_per_seed_files(tmp_path):
    hybrid = HybridConfig(build=BuildConfig(bits=3), sampler_params={"num_reads": 1, "num_sweeps": 30})
    cfg = ExperimentConfig(dataset="synthetic-features", n_train=200, n_test=50, feature_dim=8, num_classes=3,
                           epochs=2, warmup_epochs=1, seeds=(0, 1), hybrid=hybrid, lbfgs_max_iter=50,
                           out=str(tmp_path / "run"))
    recorded = run_experiment(cfg)
    per_seed: dict[str, list[dict]] = {}
    for path in sorted(Path(cfg.out, RESULTS_SUBDIR).glob("*.json")):
        res = json.loads(path.read_text())
        assert {"features_digest", "machine", "config_digest"} <= set(res)
        per_seed.setdefault(res["method"], []).append(res)
    for runs in per_seed.values():
        runs.sort(key=lambda r: r["seed"])
    again = summarize(per_seed)["methods"]
    on_disk = json.loads(Path(cfg.out, "summary.json").read_text())["methods"]
    assert set(again) == set(on_disk) == set(recorded["methods"])
    for m in again:
        assert json.loads(json.dumps(again[m])) == on_disk[m]
