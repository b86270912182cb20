"""Shared fixtures: small and general (each test module keeps its own specific helpers)."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: on a shared 2-core machine, torch's thread pool under
    contention makes small kernels (L-BFGS, tiny matmuls) tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private feature cache ($QUBO_NN_CACHE) so tests never touch the user's cache."""
    path = tmp_path / "feature-cache"
    monkeypatch.setenv("QUBO_NN_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def ray_local(request):
    """A local Ray instance with 2 CPUs for one test module, shut down after it; skipped, with the
    install command as the reason, only when Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'qubo-nn[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(request.module)  # workers cannot import a test module
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def load_script():
    """Load a script of the repository (``benchmarks/…``, ``experiments/…``) as a module, by path."""
    root = Path(__file__).resolve().parents[1]

    def load(relpath: str):
        path = root / relpath
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
