"""Head files (.pt state dicts, weights only)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qubo_nn.errors import QuboNNError

if TYPE_CHECKING:
    from qubo_nn.core.head import Head


def load_head_file(path: str | os.PathLike) -> Head:
    """A head from a ``torch.save``'d ``{"weight", "bias"}`` state dict."""
    import torch

    from qubo_nn.core.head import Head

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise QuboNNError(f"head file {str(path)!r} does not exist") from exc
    except Exception as exc:  # zip/pickle errors of a damaged file
        raise QuboNNError(f"head file {str(path)!r} is not a torch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(sd, dict):
        raise QuboNNError(f"head file {str(path)!r} must hold a dict with 'weight' and 'bias', got {type(sd).__name__}")
    return Head.from_state_dict(sd)
