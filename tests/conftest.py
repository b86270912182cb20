"""Shared fixtures: small and general (each test module keeps its own specific helpers)."""
from __future__ import annotations

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
