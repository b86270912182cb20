"""Image datasets the frozen backbone reads: ``cifar100``, ``digits`` and ``synthetic``.

Every dataset yields ``(image, label)`` with ``image`` a float32 tensor 3 × S × S
(S = ``image_size``), normalized with the ImageNet mean/std the torchvision ResNets were
trained with, and ``label`` an int in [0, C).

- ``cifar100``: torchvision's CIFAR100 (the official ``cifar-100-python`` pickles, md5-checked
  by torchvision), bilinearly resized from 32 × 32 to S × S.
- ``digits``: scikit-learn's bundled 8 × 8 digit images (1,797 real images, 10 classes, no
  download), scaled to [0, 1] (pixel / 16), bilinearly upscaled to S × S, grey copied to RGB.
  Split: stratified 80/20 with a fixed ``random_state`` (the same split on every machine).
- ``synthetic``: seeded, class-dependent random patterns (10 classes) for tests; a
  classifier can learn them, nothing else should be read into them.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from qubo_nn.errors import OfflineError, QuboNNError

DATASETS = ("digits", "cifar100", "synthetic")
SPLITS = ("train", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NUM_CLASSES = {"digits": 10, "cifar100": 100, "synthetic": 10}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_STATE = 0          # random_state of the digits split: fixed, not the run's seed
SYNTHETIC_SIZES = {"train": 500, "test": 100}
_SYNTHETIC_LOWRES = 8           # synthetic patterns are drawn at 8 × 8, then upscaled


def num_classes(name: str) -> int:
    """Number of classes C of dataset ``name``."""
    _check_name(name)
    return _NUM_CLASSES[name]


def default_data_root() -> Path:
    """``$QUBO_NN_DATA`` or ``~/.cache/qubo-nn/data``: where ``cifar-100-python`` is looked for."""
    env = os.environ.get("QUBO_NN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qubo-nn" / "data"


def load_dataset(name: str, split: str, image_size: int = 64, data_root: str | os.PathLike | None = None,
                 download: bool = False, seed: int = 0) -> Dataset:
    """Dataset ``name`` ('digits' | 'cifar100' | 'synthetic'), split 'train' | 'test'.

    Items are ``(image 3 × S × S float32, ImageNet-normalized; int label)``. ``data_root`` and
    ``download`` matter for cifar100 only; ``seed`` for synthetic only (the digits split is
    fixed). Raises :class:`OfflineError` when CIFAR-100 is neither on disk nor downloadable.
    """
    _check_name(name)
    if split not in SPLITS:
        raise QuboNNError(f"split must be one of {SPLITS}, got {split!r}")
    check_image_size(image_size)
    if name == "cifar100":
        return _cifar100(split, image_size, data_root, download)
    if name == "digits":
        images, labels = _digits(split)
    else:
        images, labels = _synthetic(split, seed)
    return LowResImages(images, labels, image_size, _NUM_CLASSES[name])


def check_image_size(image_size: int) -> None:
    """Raise :class:`QuboNNError` unless ``image_size`` is an integer in [8, 1024]."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 8 <= image_size <= 1024:
        raise QuboNNError(f"image_size must be an integer in [8, 1024], got {image_size!r}")


def dataset_identity(name: str, seed: int = 0) -> dict:
    """What identifies the images of ``name`` (for cache keys): never a local path."""
    _check_name(name)
    if name == "cifar100":
        from torchvision.datasets import CIFAR100

        files = CIFAR100.train_list + CIFAR100.test_list + [[CIFAR100.meta["filename"], CIFAR100.meta["md5"]]]
        return {"name": name, "md5": {f: md5 for f, md5 in files}}
    if name == "digits":
        return {"name": name, "test_fraction": DIGITS_TEST_FRACTION, "random_state": DIGITS_SPLIT_STATE}
    return {"name": name, "seed": int(seed), "sizes": SYNTHETIC_SIZES, "lowres": _SYNTHETIC_LOWRES}


def image_transform(image_size: int):
    """PIL / uint8 image -> resized (bilinear), ImageNet-normalized float tensor (torchvision)."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class LowResImages(Dataset):
    """Images held at low resolution in [0, 1] (N × c × h × w, c = 1 or 3), served upscaled.

    Item i: bilinear resize to S × S (torchvision ``Resize``), grey copied to 3 channels,
    ImageNet normalization (torchvision ``Normalize``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int, num_classes: int):
        from torchvision import transforms as T

        self.images = images.float()
        self.targets = labels.long()
        self.num_classes = num_classes
        self.image_size = image_size
        self._resize = T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR,
                                antialias=True)
        self._normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if img.shape[-1] != self.image_size or img.shape[-2] != self.image_size:
            img = self._resize(img)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return self._normalize(img), int(self.targets[i])


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise QuboNNError(f"dataset must be one of {DATASETS}, got {name!r}")


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
                                           random_state=DIGITS_SPLIT_STATE)
    sel = train_idx if split == "train" else test_idx
    images = torch.from_numpy(digits.images[sel] / 16.0).float().unsqueeze(1)   # N × 1 × 8 × 8 in [0, 1]
    return images, torch.from_numpy(digits.target[sel]).long()


def _synthetic(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c's images = clamp(pattern_c + 0.25·noise, 0, 1); patterns uniform in [0, 1]."""
    g = torch.Generator().manual_seed(int(seed))
    C, h = _NUM_CLASSES["synthetic"], _SYNTHETIC_LOWRES
    patterns = torch.rand(C, 3, h, h, generator=g)
    n_train, n_test = SYNTHETIC_SIZES["train"], SYNTHETIC_SIZES["test"]
    n = n_train + n_test
    labels = torch.arange(n) % C
    labels = labels[torch.randperm(n, generator=g)]
    images = (patterns[labels] + 0.25 * torch.randn(n, 3, h, h, generator=g)).clamp(0.0, 1.0)
    sel = slice(0, n_train) if split == "train" else slice(n_train, n)
    return images[sel], labels[sel]


def _cifar100(split: str, image_size: int, data_root, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import calculate_md5

    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if root.name == CIFAR100.base_folder and (root / CIFAR100.meta["filename"]).is_file():
        root = root.parent              # the user pointed at cifar-100-python itself
    folder = root / CIFAR100.base_folder
    files = CIFAR100.train_list + CIFAR100.test_list + [[CIFAR100.meta["filename"], CIFAR100.meta["md5"]]]
    missing = [f for f, _ in files if not (folder / f).is_file()]
    remedy = ("download it on a connected machine (qubo-nn features --dataset cifar100 --download, "
              f"or fetch {CIFAR100.url} and extract it), then pass --data-root pointing at the folder "
              "containing the extracted 'cifar-100-python'")
    if missing and not download:
        raise OfflineError(f"CIFAR-100 not found: {folder} lacks {missing}; {remedy}")
    if missing:
        try:
            probe_url(CIFAR100.url)
            CIFAR100(str(root), train=True, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise OfflineError(f"CIFAR-100 could not be downloaded to {root} ({exc}); {remedy}") from exc
    try:
        return CIFAR100(str(root), train=(split == "train"), transform=image_transform(image_size), download=False)
    except RuntimeError as exc:         # torchvision: "Dataset not found or corrupted"
        for f, md5 in files:
            got = calculate_md5(str(folder / f))
            if got != md5:
                raise QuboNNError(f"CIFAR-100 file {folder / f} is corrupted: expected md5 {md5}, got {got}; "
                                  "delete it and download again") from exc
        raise QuboNNError(f"CIFAR-100 at {folder} could not be read: {exc}") from exc


def probe_url(url: str, timeout: float = 10.0) -> None:
    """Raise ``urllib.error.URLError`` (or OSError) within ``timeout`` s unless ``url`` answers.

    Downloads in torch/torchvision have no timeout; probing first keeps an offline machine
    from hanging.
    """
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=timeout):
        pass
