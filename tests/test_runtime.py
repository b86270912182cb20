"""runtime helpers: atomic writes, portable paths, device/dtype resolution."""
import os
from pathlib import Path

import pytest
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import atomic_path, atomic_write_json, portable_path, resolve_device, resolve_dtype


def test_portable_path_hides_the_home_directory_only():
    home = str(Path.home())
    assert portable_path(os.path.join(home, ".cache", "f.pt")) == os.path.join("~", ".cache", "f.pt")
    assert portable_path("/elsewhere/f.pt") == "/elsewhere/f.pt"
    assert portable_path(home + "x/f.pt") == home + "x/f.pt"   # a sibling sharing the prefix is not home
    assert portable_path(None) is None


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{")          # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_device_and_dtype_errors_are_clear():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(QuboNNError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(QuboNNError, match="dtype must be one of"):
        resolve_dtype("float16")
