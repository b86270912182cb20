"""Head files (.pt state dicts, weights only)."""
from __future__ import annotations

import os
import pickle
import re
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
    except IsADirectoryError as exc:
        raise QuboNNError(f"head file {str(path)!r} is a directory, expected a .pt file") from exc
    except pickle.UnpicklingError as exc:   # weights_only refused an object: say so, without torch's advice
        raise QuboNNError(f"head file {str(path)!r} is not a weights file: it holds pickled Python objects "
                          f"beyond tensors, and qubo-nn does not unpickle those (they can run code); expected "
                          f"a torch.save'd state dict {{'weight', 'bias'}}") from None
    except Exception as exc:  # zip/pickle errors of a damaged file
        raise QuboNNError(f"head file {str(path)!r} is not a torch state dict ({type(exc).__name__}: "
                          f"{_plain(str(exc))})") from None
    if not isinstance(sd, dict):
        raise QuboNNError(f"head file {str(path)!r} must hold a dict with 'weight' and 'bias', got {type(sd).__name__}")
    head = Head.from_state_dict(sd)
    big = max(float(head.W.abs().max()), float(head.b.abs().max())) if head.W.numel() else 0.0
    if not big <= MAX_ABS_WEIGHT:
        raise QuboNNError(f"head file {str(path)!r}: the largest |weight| is {big:.3g}, expected finite weights "
                          f"of at most {MAX_ABS_WEIGHT:.0e} in magnitude (beyond it logits, loss and curvature "
                          f"overflow)")
    return head


MAX_ABS_WEIGHT = 1e12
"""The largest |weight| of a head file accepted (a trained head is O(1)); weights near float32's
limit (3e38) make logits, loss and curvature inf/NaN, which then surface as unrelated errors."""


def _plain(text: str) -> str:
    """One line of a library message: no ANSI colour codes, at most 300 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).split("\n")[0]
    return text[:300]
