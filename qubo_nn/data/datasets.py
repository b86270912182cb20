"""Image datasets the frozen backbone reads: ``cifar100``, ``digits``, ``synthetic``, ``imagefolder``.

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
- ``imagefolder``: your own images, read by torchvision's ``ImageFolder`` from ``data_root``:
  ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*`` (or ``DIR/test/``). With only one
  folder (``DIR/train/`` alone, or class folders directly in ``DIR``) the test split is a
  stratified 20 % drawn with the fixed ``random_state`` 0 (recorded in :func:`dataset_identity`).
  Items come in a fixed shuffled order (``random_state`` 0), so ``--limit N`` keeps a mix of
  classes. Each image is read as RGB, converted to a tensor in [0, 1], then resized (bilinear, antialias)
  and normalized exactly as the ``digits`` images are, so a digits ImageFolder gives the digits
  features up to the 8-bit rounding of the PNG files.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from qubo_nn.errors import OfflineError, QuboNNError

DATASETS = ("digits", "cifar100", "synthetic", "imagefolder")
SPLITS = ("train", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NUM_CLASSES = {"digits": 10, "cifar100": 100, "synthetic": 10}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_STATE = 0          # random_state of the digits split: fixed, not the run's seed
SYNTHETIC_SIZES = {"train": 500, "test": 100}
IMAGEFOLDER_TEST_FRACTION = 0.2  # held out when DIR has one folder only
IMAGEFOLDER_SPLIT_STATE = 0      # random_state of that split: fixed, not the run's seed
IMAGEFOLDER_TEST_NAMES = ("val", "test")
_SYNTHETIC_LOWRES = 8           # synthetic patterns are drawn at 8 × 8, then upscaled


def num_classes(name: str, data_root: str | os.PathLike | None = None) -> int:
    """Number of classes C of dataset ``name`` (``imagefolder``: the class folders under ``data_root``)."""
    _check_name(name)
    if name == "imagefolder":
        return len(_imagefolder_layout(data_root)["classes"])
    return _NUM_CLASSES[name]


def default_data_root() -> Path:
    """``$QUBO_NN_DATA`` or ``~/.cache/qubo-nn/data``: where ``cifar-100-python`` is looked for."""
    env = os.environ.get("QUBO_NN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qubo-nn" / "data"


def load_dataset(name: str, split: str, image_size: int = 64, data_root: str | os.PathLike | None = None,
                 download: bool = False, seed: int = 0) -> Dataset:
    """Dataset ``name`` ('digits' | 'cifar100' | 'synthetic'), split 'train' | 'test'.

    Items are ``(image 3 × S × S float32, ImageNet-normalized; int label)``. ``data_root`` and
    ``download`` matter for cifar100 only (``data_root`` also for imagefolder); ``seed`` for
    synthetic only (the digits and imagefolder splits are fixed). Raises :class:`OfflineError` when CIFAR-100 is neither on disk nor downloadable.
    """
    _check_name(name)
    if split not in SPLITS:
        raise QuboNNError(f"split must be one of {SPLITS}, got {split!r}")
    check_image_size(image_size)
    if name == "cifar100":
        return _cifar100(split, image_size, data_root, download)
    if name == "imagefolder":
        return _imagefolder(split, image_size, data_root)
    if name == "digits":
        images, labels = _digits(split)
    else:
        images, labels = _synthetic(split, seed)
    return LowResImages(images, labels, image_size, _NUM_CLASSES[name])


def check_image_size(image_size: int) -> None:
    """Raise :class:`QuboNNError` unless ``image_size`` is an integer in [8, 1024]."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 8 <= image_size <= 1024:
        raise QuboNNError(f"image_size must be an integer in [8, 1024], got {image_size!r}")


def dataset_identity(name: str, seed: int = 0, data_root: str | os.PathLike | None = None) -> dict:
    """What identifies the images of ``name`` (for cache keys): never a local path.

    ``imagefolder``: the sha256 of the sorted list of (split, relative path, size in bytes) of
    every image file, the class names and the split rule.
    """
    _check_name(name)
    if name == "imagefolder":
        lay = _imagefolder_layout(data_root)
        h = hashlib.sha256()
        for split in SPLITS:
            for rel, size in lay["files"][split]:
                h.update(f"{split}\t{rel}\t{size}\n".encode())
        return {"name": name, "files_sha256": h.hexdigest(), "classes": lay["classes"],
                "n_files": {s: len(lay["files"][s]) for s in SPLITS}, "split": lay["split"]}
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


class _RecordingLoader:
    """PIL loader of ``ImageFolder`` that names the file when it cannot be read (picklable)."""

    def __call__(self, path: str):
        from PIL import Image, UnidentifiedImageError

        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise QuboNNError(f"expected a readable image file, got {path} ({type(exc).__name__}: {exc})") from exc


def _is_image(path: str) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return path.lower().endswith(IMG_EXTENSIONS)


def _imagefolder_layout(data_root) -> dict:
    """Folders, classes, files and split of an imagefolder ``data_root`` (checked; cached per call).

    Returns {"classes": [...], "split": {...}, "files": {split: [(rel path, bytes), ...]},
    "samples": {split: [(abs path, class index), ...]}}.
    """
    if data_root is None:
        raise QuboNNError("dataset 'imagefolder' needs --data-root DIR (DIR/train/<class>/*.png and "
                          "DIR/val/ or DIR/test/, or DIR/<class>/*), got none")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise QuboNNError(f"expected an image folder at --data-root, got {str(root)!r} (no such directory)")
    test_dir = next((root / n for n in IMAGEFOLDER_TEST_NAMES if (root / n).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() else None
    if train_dir is None and test_dir is not None:
        raise QuboNNError(f"expected {root / 'train'} beside {test_dir}, got no train folder")
    one = train_dir if train_dir is not None else root
    scanned = {"train": _scan(one)}
    if test_dir is not None:
        scanned["test"] = _scan(test_dir)
        if scanned["test"][0] != scanned["train"][0]:
            raise QuboNNError(f"expected the same class folders in {one} and {test_dir}, got "
                              f"{scanned['train'][0]} and {scanned['test'][0]}")
        classes = scanned["train"][0]
        samples = {s: scanned[s][1] for s in SPLITS}
        split = {"rule": "folders", "test_folder": test_dir.name}
    else:
        from sklearn.model_selection import train_test_split

        classes, allsamples = scanned["train"]
        labels = [c for _, c in allsamples]
        try:
            tr, te = train_test_split(np.arange(len(allsamples)), test_size=IMAGEFOLDER_TEST_FRACTION,
                                      stratify=labels, random_state=IMAGEFOLDER_SPLIT_STATE)
        except ValueError as exc:
            raise QuboNNError(f"expected at least 2 images per class in {one} to hold out "
                              f"{IMAGEFOLDER_TEST_FRACTION:.0%} for testing, got: {exc}") from exc
        samples = {"train": [allsamples[i] for i in sorted(tr)], "test": [allsamples[i] for i in sorted(te)]}
        split = {"rule": "stratified", "test_fraction": IMAGEFOLDER_TEST_FRACTION,
                 "random_state": IMAGEFOLDER_SPLIT_STATE, "folder": "train" if train_dir is not None else "."}
    files = {s: [(os.path.relpath(p, root).replace(os.sep, "/"), os.path.getsize(p)) for p, _ in samples[s]]
             for s in SPLITS}
    # serve each split in a fixed shuffled order (not class by class), so that --limit N keeps a mix of classes
    rng = np.random.default_rng(IMAGEFOLDER_SPLIT_STATE)
    samples = {s: [samples[s][i] for i in rng.permutation(len(samples[s]))] for s in SPLITS}
    return {"classes": classes, "split": split, "files": files, "samples": samples}


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file, class index)]) of ``folder``/<class>/… by torchvision's rules; checked."""
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, to_idx = find_classes(str(folder))
    except FileNotFoundError:
        raise QuboNNError(f"expected class folders (one per class) in {folder}, got none") from None
    if len(classes) < 2:
        raise QuboNNError(f"expected at least 2 class folders in {folder}, got {len(classes)} ({classes})")
    try:
        samples = make_dataset(str(folder), to_idx, is_valid_file=_is_image, allow_empty=True)
    except FileNotFoundError as exc:
        raise QuboNNError(f"expected image files in {folder}: {exc}") from None
    counts = np.bincount([c for _, c in samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise QuboNNError(f"expected image files in every class folder of {folder}, got none in {empty}")
    return classes, samples


def _imagefolder(split: str, image_size: int, data_root) -> Dataset:
    from torchvision import transforms as T

    lay = _imagefolder_layout(data_root)
    transform = T.Compose([T.ToTensor(), T.Resize((image_size, image_size),
                           interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return _CheckedImageFolder(str(Path(data_root).expanduser()), lay["classes"], lay["samples"][split], transform)


class _CheckedImageFolder(ImageFolder):
    """torchvision's ``ImageFolder`` over an already checked file list (no second directory walk);
    an unreadable file raises :class:`QuboNNError` naming it."""

    def __init__(self, root: str, classes: list[str], samples: list[tuple[str, int]], transform):
        self._given = (list(classes), list(samples))
        super().__init__(root, transform=transform, loader=_RecordingLoader())
        self.num_classes = len(classes)

    def find_classes(self, directory):
        classes = self._given[0]
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return list(self._given[1])
