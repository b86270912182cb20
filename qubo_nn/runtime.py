"""Device/dtype resolution, seeds, versions and atomic file writes.

Kept free of any model or QUBO logic so every module can use it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from qubo_nn.errors import QuboNNError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: the CLI's start-up and the solve path of a
# plain QUBO file use this module without loading torch (seconds).
_DTYPE_NAMES = ("float32", "float64")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> CUDA when present, else CPU; anything else is passed to torch."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise QuboNNError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QuboNNError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'float64' | torch dtype -> torch dtype."""
    import torch

    _DTYPES = {name: getattr(torch, name) for name in _DTYPE_NAMES}
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise QuboNNError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise QuboNNError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _torch_version() -> str:
    """torch's version without importing it when it is not loaded yet (package metadata)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a result (written next to every result)."""
    import dimod
    import scipy

    out = {
        "python": platform.python_version(),
        "torch": _torch_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dimod": dimod.__version__,
        "platform": platform.platform(),
    }
    from qubo_nn import __version__

    out["qubo_nn"] = __version__
    from importlib.metadata import PackageNotFoundError, version

    # metadata, not imports: importing torchvision pulls in torch._dynamo (seconds per CLI call)
    for pkg in ("torchvision", "dwave-samplers", "dwave-neal", "dwave-tabu", "simulated-bifurcation"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - optional at runtime
            pass
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves no half-written file that a later run could trust.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results should get the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` through :func:`to_jsonable` (NaN/±Inf as null), indented, keys sorted, written atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


#: seeds are integers in [0, SEED_BOUND) (what every sampler and NumPy/torch generator takes)
SEED_BOUND = 2**31


def child_seed(seed: int, *keys: int) -> int:
    """The one seed derivation of the project: a seed in [0, 2³¹) from ``seed`` and ``keys`` (a row, a
    block, a sweep, an attempt), independent of the others (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0] % SEED_BOUND)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: dict keys as str, tuples/arrays/tensors as lists, NumPy/torch scalars
    as numbers, paths/devices/dtypes as str, and NaN/±Inf as None (JSON has no such numbers; a reader
    must never meet ``NaN`` in our files or ``--json`` output)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    torch = sys.modules.get("torch")  # a torch object can only exist when torch is loaded
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Path) or (torch is not None and isinstance(obj, (torch.device, torch.dtype))):
        return str(obj)
    if callable(obj):
        return getattr(obj, "__name__", type(obj).__name__)
    return str(obj)


#: ``json.dumps(default=...)`` for objects json cannot write (the CLI's ``--json`` output)
_json_default = to_jsonable


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor | np.ndarray) -> str:
    """A short SHA-256 over the bytes (and shapes) of tensors: identifies a head or feature set."""
    h = hashlib.sha256()
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
        h.update(str(arr.shape).encode())
        h.update(str(arr.dtype).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def calibration_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """A seeded random subset of ``min(size, n)`` of the indices 0..n−1, sorted (int64): the one draw
    of calibration images and of sample subsets (the first ``size`` of ``randperm(n)`` by ``seed``)."""
    import torch

    perm = torch.randperm(n, generator=torch_generator(seed))
    return perm[:min(size, n)].sort().values


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, core count, torch threads, device (GPU name) and the 1-minute load average:
    what a benchmark record needs to say where (and how busy) it ran."""
    import torch

    device = torch.device(device)
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": str(device), "platform": platform.platform()}
    if hasattr(os, "getloadavg"):
        info["load_average_1m_start"] = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def portable_path(path: str | os.PathLike | None) -> str | None:
    """``path`` with the user's home directory written as ``~`` (for records shared across machines)."""
    if path is None:
        return None
    p, home = str(path), str(Path.home())
    return "~" + p[len(home):] if home not in ("", "/") and (p == home or p.startswith(home + os.sep)) else p
