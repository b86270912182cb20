"""Compact export of a quantized network: packed integer codes + per-row scales in safetensors.

A ``.safetensors`` file (Hugging Face's format: a JSON header and raw little-endian tensors, no
pickle, nothing executed on load) holding, for every quantized layer ``L`` (a conv or linear
module name) with b-bit signed levels k ∈ [q_min, q_max] = [−2^(b−1), 2^(b−1) − 1] on its row
view (C_out × D, rows = output channels, as :func:`qubo_nn.core.layout.row_view`):

- ``L.weight.codes``: uint8, the codes u = k − q_min (0 ≤ u < 2^b) of the row view in row-major
  order, b bits each, packed little-endian (bit j of code i is bit (i·b + j) of the stream;
  ``numpy.packbits(bitorder="little")``): ⌈C_out·D·b / 8⌉ bytes;
- ``L.weight.scale``: float32 (C_out,), the row scales s_r;

and every other entry of the state dict (biases, BatchNorm, layers left in float) as it is.
The weight is rebuilt as W[r, :] = s_r · k[r, :] in float32 (the formula of
:func:`~qubo_nn.core.layout.apply_levels`, so the float checkpoint's weights come back bit for
bit when they were written by it). The header's ``__metadata__["qubo_nn"]`` is a small JSON
object: format and version, per layer ``bits``, ``shape``, ``grid`` ("signed") and ``qmin``,
the byte counts and the ``payload_sha256``: sha256 over (name, dtype, shape, bytes) of every
tensor in name order, checked by :func:`load_packed` / :func:`verify_packed` (a bit flipped in
any tensor is refused). Binary/ternary grids (issue 24) would add a per-row α beside the scale.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qubo_nn.errors import QuboNNError
from qubo_nn.runtime import atomic_path, sha256_file

FORMAT = "qubo-nn-packed"
VERSION = 1
META_KEY = "qubo_nn"


def pack_codes(levels: np.ndarray, bits: int) -> np.ndarray:
    """uint8 stream of the b-bit codes ``levels − q_min`` (any shape, row-major), little-endian bits."""
    qmin = -(1 << (bits - 1))
    u = np.asarray(levels, dtype=np.int64).reshape(-1) - qmin
    if u.size and (u.min() < 0 or u.max() >= (1 << bits)):
        raise QuboNNError(f"expected levels in [{qmin}, {-qmin - 1}] for {bits} bits, "
                          f"got [{int(u.min()) + qmin}, {int(u.max()) + qmin}]")
    bitmat = ((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8)       # n × b, bit j of code i
    return np.packbits(bitmat.reshape(-1), bitorder="little")


def unpack_codes(stream: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` signed levels (int64) from the uint8 ``stream``."""
    need = (count * bits + 7) // 8
    if stream.size != need:
        raise QuboNNError(f"expected {need} bytes of {bits}-bit codes for {count} weights, got {stream.size}")
    bitmat = np.unpackbits(stream, count=count * bits, bitorder="little").reshape(count, bits).astype(np.int64)
    return (bitmat << np.arange(bits)).sum(1) - (1 << (bits - 1))


def payload_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}\t{t.dtype}\t{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def float_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``state``'s tensors as stored (float32 weights: 4 per weight)."""
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def save_packed(path: str | os.PathLike, state: dict[str, torch.Tensor], levels: dict[str, torch.Tensor],
                scales: dict[str, torch.Tensor], bits: dict[str, int], extra: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Write ``state`` with the weights of the layers in ``levels`` as packed codes (atomic).

    ``levels[L]``: C_out × D integer levels of layer L's row view; ``scales[L]``: (C_out,);
    ``bits[L]``: b. ``extra``: JSON-able facts stored in the header. Returns the export record:
    ``bytes`` (the file), ``float_bytes`` (``state`` as float tensors), ``quantized_weights``,
    ``code_bits_per_weight`` (code bytes · 8 / quantized weights) and ``stored_bits_per_weight``
    (codes and scales), ``max_abs_weight_diff`` (rebuilt vs ``state``: 0 when written by
    ``apply_levels``) and ``payload_sha256``.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    code_bytes = scale_bytes = n_quant = 0
    max_diff = 0.0
    for name, k in levels.items():
        key = f"{name}.weight"
        if key not in state:
            raise QuboNNError(f"expected {key!r} in the state dict for the levels of layer {name!r}, got no such entry")
        w = state[key]
        b = int(bits[name])
        k = torch.as_tensor(k).to(torch.int64)
        s = torch.as_tensor(scales[name]).to(torch.float32).reshape(-1)
        if k.ndim != 2 or k.shape[0] != w.shape[0] or k.numel() != w.numel() or s.numel() != w.shape[0]:
            raise QuboNNError(f"expected levels {tuple(w.shape[:1]) + (w[0].numel(),)} and {w.shape[0]} scales for "
                              f"{key} of shape {tuple(w.shape)}, got {tuple(k.shape)} and {s.numel()}")
        codes = torch.from_numpy(pack_codes(k.numpy(), b))
        tensors[f"{key}.codes"] = codes
        tensors[f"{key}.scale"] = s.contiguous()
        rebuilt = _rebuild(k, s, tuple(w.shape), w.dtype)
        max_diff = max(max_diff, float((rebuilt.double() - w.double()).abs().max()) if w.numel() else 0.0)
        layers[name] = {"bits": b, "shape": list(w.shape), "grid": "signed", "qmin": -(1 << (b - 1)),
                        "dtype": str(w.dtype).removeprefix("torch.")}
        code_bytes += codes.numel()
        scale_bytes += s.numel() * 4
        n_quant += w.numel()
    for key, t in state.items():
        name = key[:-len(".weight")] if key.endswith(".weight") else None
        if name not in levels:
            tensors[key] = t.detach().contiguous().cpu()
    digest = payload_digest(tensors)
    header = {"format": FORMAT, "version": VERSION, "layers": layers, "payload_sha256": digest,
              "float_bytes": float_bytes(state), "code_bytes": code_bytes, "scale_bytes": scale_bytes,
              "quantized_weights": n_quant, **({"extra": extra} if extra else {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(header, sort_keys=True)})
        size = tmp.stat().st_size
    return {"path": str(path), "bytes": size, "float_bytes": header["float_bytes"], "quantized_weights": n_quant,
            "code_bytes": code_bytes, "scale_bytes": scale_bytes,
            "code_bits_per_weight": 8.0 * code_bytes / max(n_quant, 1),
            "stored_bits_per_weight": 8.0 * (code_bytes + scale_bytes) / max(n_quant, 1),
            "compression": header["float_bytes"] / size, "max_abs_weight_diff": max_diff,
            "payload_sha256": digest, "file_sha256": sha256_file(path)}


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The ``qubo_nn`` JSON header of a packed file (QuboNNError when it is not one)."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:    # safetensors raises its own error types on a damaged header
        raise QuboNNError(f"expected a safetensors file, got {str(p)!r} ({type(exc).__name__}: {exc})") from exc
    try:
        header = json.loads(meta[META_KEY])
    except (KeyError, ValueError) as exc:
        raise QuboNNError(f"expected a qubo-nn packed network in {str(p)!r}, got a safetensors file without "
                          f"a {META_KEY!r} header") from exc
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise QuboNNError(f"expected format {FORMAT} version {VERSION} in {str(p)!r}, got "
                          f"{header.get('format')!r} version {header.get('version')!r}")
    return header


def verify_packed(path: str | os.PathLike, sha256: str | None = None) -> dict[str, Any]:
    """Check a packed file: the header's payload digest against its tensors and, when given,
    the whole file's ``sha256``. Returns the header; QuboNNError names what does not match."""
    return _read(path, sha256)[1]


def load_packed(path: str | os.PathLike, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(float state dict, header) of a packed file, digest checked; quantized weights rebuilt as s_r · k."""
    tensors, header = _read(path, sha256)
    state: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith(".weight.codes") or key.endswith(".weight.scale"):
            continue
        state[key] = t
    for name, L in header["layers"].items():
        key = f"{name}.weight"
        shape = tuple(L["shape"])
        count = int(np.prod(shape))
        k = torch.from_numpy(unpack_codes(tensors[f"{key}.codes"].numpy(), int(L["bits"]), count))
        state[key] = _rebuild(k.reshape(shape[0], -1), tensors[f"{key}.scale"], shape,
                              getattr(torch, L.get("dtype", "float32")))
    return state, header


def load_levels(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Layer -> C_out × D int64 levels stored in a packed file (digest checked)."""
    tensors, header = _read(path, None)
    out = {}
    for name, L in header["layers"].items():
        shape = tuple(L["shape"])
        k = unpack_codes(tensors[f"{name}.weight.codes"].numpy(), int(L["bits"]), int(np.prod(shape)))
        out[name] = torch.from_numpy(k).reshape(shape[0], -1)
    return out


def _rebuild(k: torch.Tensor, s: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return (s.to(dtype)[:, None] * k.to(dtype)).reshape(shape)


def _read(path, sha256: str | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise QuboNNError(f"expected a packed network file, got {str(path)!r} (no such file)")
    header = read_header(p)
    if sha256 is not None:
        got = sha256_file(p)
        if got != sha256:
            raise QuboNNError(f"expected file sha256 {sha256} for {str(p)!r}, got {got}")
    try:
        tensors = load_file(str(p))
    except Exception as exc:
        raise QuboNNError(f"could not read the tensors of {str(p)!r} ({type(exc).__name__}: {exc})") from exc
    got = payload_digest(tensors)
    if got != header["payload_sha256"]:
        raise QuboNNError(f"expected payload sha256 {header['payload_sha256']} in {str(p)!r}, got {got} "
                          "(the file was altered or damaged)")
    for name in header["layers"]:
        for part in ("codes", "scale"):
            if f"{name}.weight.{part}" not in tensors:
                raise QuboNNError(f"expected tensor {name}.weight.{part} in {str(p)!r}, got none")
    return tensors, header
