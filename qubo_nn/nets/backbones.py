"""torchvision classifiers split into a frozen feature extractor and the final-Linear :class:`Head`.

``arch`` is any classification model of ``torchvision.models`` by name
(``torchvision.models.list_models(module=torchvision.models)``: the ResNets, MobileNetV2/V3,
EfficientNet, VGG, RegNet, ...). The head is the model's LAST ``nn.Linear`` in module order
(ResNet/RegNet ``fc``, MobileNet/EfficientNet/VGG ``classifier.<i>``), found by
:func:`head_name`; the backbone is the model with that Linear replaced by ``Identity``. A model
without a Linear (SqueezeNet: a conv classifier) is refused.

``weights``:

- ``"none"``: random init (torchvision's), seeded by ``seed``.
- ``"imagenet"``: torchvision's published default ImageNet weights (``get_model_weights(arch).DEFAULT``;
  ResNet-18/34: IMAGENET1K_V1, ResNet-50: IMAGENET1K_V2), read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``) or downloaded there; the file's sha256 prefix (part of its
  published name) is checked.
- a path: a checkpoint holding a state dict of the whole model (with the head, e.g. ``fc.*``) or
  of the backbone only (without), optionally wrapped as ``{"state_dict": ...}`` /
  ``{"model": ...}`` and optionally with DataParallel's ``module.`` prefix; or a packed
  ``.safetensors`` file of ``quantize network`` (:mod:`qubo_nn.io.packed`, digest checked). A
  whole-model checkpoint sets the head's class count from its weight; a backbone-only one keeps
  the seeded random head. Files are read with ``weights_only=True`` (no pickled code runs).
"""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch

from qubo_nn.data.datasets import probe_url
from qubo_nn.errors import OfflineError, QuboNNError
from qubo_nn.core.head import Head
from qubo_nn.runtime import sha256_file

ARCHS = ("resnet18", "resnet34", "resnet50")       # the ResNets of the recorded results (any name works)
TESTED_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                "efficientnet_b0", "vgg11_bn", "regnet_x_400mf", "regnet_y_400mf")
FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def known_archs() -> tuple[str, ...]:
    """Names of torchvision's classification models (``list_models(module=torchvision.models)``)."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def check_arch(arch: str) -> str:
    """``arch`` when it names a torchvision classification model, else :class:`QuboNNError`."""
    if not isinstance(arch, str) or arch not in known_archs():
        raise QuboNNError(f"arch must be a torchvision classification model name "
                          f"(torchvision.models.list_models(module=torchvision.models), e.g. {', '.join(TESTED_ARCHS)}), "
                          f"got {arch!r}")
    return arch


def head_name(model: torch.nn.Module) -> str:
    """Module name of ``model``'s last ``nn.Linear`` (its classification head)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise QuboNNError(f"expected a classifier whose last layer is an nn.Linear, got {type(model).__name__} "
                          "with no nn.Linear (e.g. a convolutional classifier): not supported")
    return names[-1]


def feature_dim(arch: str) -> int:
    """D: the input width of ``arch``'s head."""
    if arch in FEATURE_DIMS:
        return FEATURE_DIMS[arch]
    model = _shape_model(check_arch(arch))
    return int(model.get_submodule(head_name(model)).in_features)


def build_backbone(arch: str = "resnet18", weights: str | os.PathLike = "none", seed: int = 0,
                   progress: bool = False) -> tuple[torch.nn.Module, Head]:
    """(feature extractor, head) of a torchvision classifier, on CPU, in eval mode.

    The extractor is the model with its last Linear (:func:`head_name`) replaced by
    ``Identity``: images N × 3 × S × S -> features N × D (D = 512 for resnet18/34, 2048 for
    resnet50, 1280 for mobilenet_v2, ...), so that ``model(x) == extractor(x) @ head.W.T + head.b``.
    ``seed`` seeds the random init (it matters for ``weights="none"`` and for the head of a
    backbone-only checkpoint).
    """
    check_arch(arch)
    state = _weights_state(arch, weights, progress)
    num_classes = 1000
    hname = _head_name_of(arch)
    if state is not None and f"{hname}.weight" in state:
        num_classes = int(state[f"{hname}.weight"].shape[0])
    model = _make_model(arch, num_classes, seed)
    if state is not None:
        _load_into(model, state, arch, str(weights))
    model.eval()
    head = Head.from_linear(model.get_submodule(hname))
    _set_submodule(model, hname, torch.nn.Identity())
    return model, head


def _weights_state(arch: str, weights: str | os.PathLike, progress: bool) -> dict | None:
    """The state dict that ``weights`` names ('imagenet' or a checkpoint path), None for 'none'."""
    kind = weights_kind(weights)
    if kind == "imagenet":
        return _imagenet_state_dict(arch, progress)
    if kind == "path":
        return load_checkpoint(weights)
    return None


def build_model(arch: str = "resnet18", weights: str | os.PathLike = "none", num_classes: int = 1000,
                seed: int = 0, progress: bool = False) -> torch.nn.Module:
    """The whole torchvision classifier (head: ``num_classes`` outputs), on CPU, in eval mode.

    ``weights`` as in :func:`build_backbone`. When the weights' head has another class count (or
    there is none: ImageNet's 1000 classes for a 10-class dataset, a backbone-only checkpoint),
    the head is the seeded random init: the starting point of fine-tuning on a new dataset.
    """
    check_arch(arch)
    state = _weights_state(arch, weights, progress)
    model = _make_model(arch, num_classes, seed)
    if state is not None:
        hname = head_name(model)
        if f"{hname}.weight" in state and int(state[f"{hname}.weight"].shape[0]) != num_classes:
            state = {k: v for k, v in state.items() if not k.startswith(hname + ".")}
        _load_into(model, state, arch, str(weights))
    return model.eval()


def weights_kind(weights: str | os.PathLike) -> str:
    """'imagenet' | 'none' | 'path' (an existing file); anything else -> QuboNNError."""
    if weights in ("imagenet", "none"):
        return str(weights)
    p = Path(weights).expanduser()
    if not p.is_file():
        raise QuboNNError(f"weights must be 'imagenet', 'none' or a path to a checkpoint file, "
                          f"got {str(weights)!r} (no such file)")
    return "path"


def weights_identity(arch: str, weights: str | os.PathLike, seed: int = 0) -> str:
    """A string that identifies the backbone's parameters (for cache keys and metadata).

    ``none`` -> ``none:seed=S``; ``imagenet`` -> the published file name (it carries a hash
    prefix); a path -> ``sha256:<hex of the file>``.
    """
    check_arch(arch)
    kind = weights_kind(weights)
    if kind == "none":
        return f"none:seed={int(seed)}"
    if kind == "imagenet":
        return f"imagenet:{_imagenet_weights(arch)}:{os.path.basename(_imagenet_url(arch))}"
    return f"sha256:{sha256_file(Path(weights).expanduser())}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file: unwrapped, ``module.`` prefix stripped, tensors only.

    ``.safetensors``: a packed quantized network (:func:`qubo_nn.io.packed.load_packed`: digest
    checked, float weights rebuilt from codes and scales); anything else: ``torch.load`` with
    ``weights_only=True``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise QuboNNError(f"checkpoint {str(path)!r} does not exist")
    if p.suffix == ".safetensors":
        from qubo_nn.io.packed import load_packed

        return load_packed(p)[0]
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QuboNNError(f"could not read checkpoint {str(p)!r} as a torch state dict: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise QuboNNError(f"checkpoint {str(p)!r} must hold a state dict (names -> tensors), "
                          f"got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _make_model(arch: str, num_classes: int, seed: int, seeded: bool = True) -> torch.nn.Module:
    import torchvision.models as tvm

    if not seeded:      # meta device: shapes only
        return tvm.get_model(arch, weights=None, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):   # seeded init without touching the caller's RNG
        torch.manual_seed(int(seed))
        return tvm.get_model(arch, weights=None, num_classes=num_classes)


def _shape_model(arch: str) -> torch.nn.Module:
    """``arch`` for its structure only: on the meta device (no memory, no init) where it builds there."""
    try:
        with torch.device("meta"):
            return _make_model(arch, 1000, 0, seeded=False)
    except (NotImplementedError, RuntimeError):     # builders that compute with tensors (RegNet)
        with torch.random.fork_rng(devices=[]):
            return _make_model(arch, 1000, 0, seeded=False)


def _head_name_of(arch: str) -> str:
    return head_name(_shape_model(arch))


def _set_submodule(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Copy ``state`` into ``model``; whole-model or backbone-only (no head entries) state dicts."""
    expected = model.state_dict()
    hname = head_name(model)
    if not any(k.startswith(hname + ".") for k in state):
        expected = {k: v for k, v in expected.items() if not k.startswith(hname + ".")}
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise QuboNNError(f"checkpoint {source} does not fit {arch}: unexpected keys {_few(unexpected)}")
    # BatchNorm's num_batches_tracked is absent from older checkpoints and unused in eval mode
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise QuboNNError(f"checkpoint {source} does not fit {arch}: missing keys {_few(missing)}")
    for k, v in expected.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise QuboNNError(f"checkpoint {source} does not fit {arch}: key {k!r} has shape "
                              f"{tuple(state[k].shape)}, expected {tuple(v.shape)}")
    model.load_state_dict(state, strict=False)


def _few(keys: list[str], n: int = 5) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _imagenet_weights(arch: str) -> str:
    """``"<Enum>.<member>"`` of torchvision's default published weights of ``arch``."""
    import torchvision.models as tvm

    try:
        return str(tvm.get_model_weights(arch).DEFAULT)
    except (ValueError, AttributeError) as exc:
        raise QuboNNError(f"expected an arch with published ImageNet weights, got {arch!r} ({exc})") from exc


def _imagenet_url(arch: str) -> str:
    import torchvision.models as tvm

    return tvm.get_model_weights(arch).DEFAULT.url


def _imagenet_state_dict(arch: str, progress: bool) -> dict[str, torch.Tensor]:
    """Published weights from the hub cache, downloaded when missing (probe first: no hang)."""
    url = _imagenet_url(arch)
    fname = os.path.basename(url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not cached.is_file():
        try:
            probe_url(url)
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=_hash_prefix(fname), progress=progress)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise OfflineError(
                f"ImageNet weights for {arch} are not in the torch cache ({cached}) and could not be "
                f"downloaded from {url} ({exc}); pass --weights none (random init) or a checkpoint path, "
                f"or copy {fname} into {cached.parent}") from exc
    prefix = _hash_prefix(fname)
    if prefix and not sha256_file(cached).startswith(prefix):
        raise QuboNNError(f"cached ImageNet weights {cached} do not match their published sha256 prefix "
                          f"{prefix}; delete the file and download again")
    return load_checkpoint(cached)


def _hash_prefix(fname: str) -> str | None:
    stem = fname.rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[-1] if "-" in stem else None
