"""Image datasets: shapes, normalization against the raw pixels, splits, CIFAR-100 files."""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.datasets import CIFAR100

from qubo_nn.data import datasets as data
from qubo_nn.errors import OfflineError, QuboNNError

MEAN = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(data.IMAGENET_STD).view(3, 1, 1)


def unnormalize(img: torch.Tensor) -> torch.Tensor:
    return img * STD + MEAN


def stack(ds, n=None):
    n = len(ds) if n is None else n
    items = [ds[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# --- digits -------------------------------------------------------------------------------

def test_digits_shapes_labels_and_stratified_split():
    train = data.load_dataset("digits", "train", image_size=16)
    test = data.load_dataset("digits", "test", image_size=16)
    assert (len(train), len(test)) == (1437, 360)           # 1,797 images, 20 % test
    img, label = train[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and isinstance(label, int)
    assert data.num_classes("digits") == 10
    full = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(test.targets.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * full) <= 1)    # stratified: 20 % of every class, ±1
    assert int(train.targets.min()) == 0 and int(train.targets.max()) == 9


def test_digits_split_is_fixed_disjoint_and_complete():
    a = data.load_dataset("digits", "train", image_size=8, seed=0)
    b = data.load_dataset("digits", "train", image_size=8, seed=123)   # seed does not move the split
    assert torch.equal(a.targets, b.targets) and torch.equal(a.images, b.images)
    test = data.load_dataset("digits", "test", image_size=8)
    raw = load_digits()
    rows = {img.tobytes(): 0 for img in (raw.images / 16.0).astype(np.float32)}
    got = [x.numpy().astype(np.float32).tobytes() for x in torch.cat([a.images, test.images])]
    assert len(got) == 1797 and set(got) == set(rows)      # train ∪ test is the whole data set


def test_digits_pixels_match_bilinear_upscale_of_raw_images():
    """Reference: the documented split (sklearn, test 20 %, stratified, random_state 0), raw/16,
    upscaled with torch's bilinear interpolation (half-pixel centres), grey copied to RGB."""
    raw = load_digits()
    train_idx, _ = train_test_split(np.arange(1797), test_size=0.2, stratify=raw.target, random_state=0)
    ds = data.load_dataset("digits", "train", image_size=64)
    for i in (0, 1, 500):
        img, label = ds[i]
        ref = torch.from_numpy(raw.images[train_idx[i]] / 16.0).float()[None, None]
        ref = F.interpolate(ref, size=(64, 64), mode="bilinear", align_corners=False)[0].expand(3, -1, -1)
        assert label == raw.target[train_idx[i]]
        torch.testing.assert_close(unnormalize(img), ref, atol=1e-5, rtol=0)
    small, _ = data.load_dataset("digits", "train", image_size=8)[0]        # no resize: exact pixels
    torch.testing.assert_close(unnormalize(small)[0], torch.from_numpy(raw.images[train_idx[0]] / 16.0).float(),
                               atol=1e-6, rtol=0)


# --- synthetic ----------------------------------------------------------------------------

def test_synthetic_is_seeded_in_range_and_learnable():
    train = data.load_dataset("synthetic", "train", image_size=8, seed=1)
    again = data.load_dataset("synthetic", "train", image_size=8, seed=1)
    other = data.load_dataset("synthetic", "train", image_size=8, seed=2)
    test = data.load_dataset("synthetic", "test", image_size=8, seed=1)
    assert (len(train), len(test)) == (data.SYNTHETIC_SIZES["train"], data.SYNTHETIC_SIZES["test"])
    Xtr, ytr = stack(train)
    Xte, yte = stack(test)
    assert torch.equal(Xtr, stack(again)[0]) and not torch.equal(Xtr, stack(other)[0])
    raw = unnormalize(Xtr)
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert set(ytr.tolist()) == set(range(10))
    means = torch.stack([Xtr[ytr == c].mean(0) for c in range(10)]).flatten(1)
    pred = torch.cdist(Xte.flatten(1), means).argmin(1)      # nearest class mean
    assert (pred == yte).float().mean() >= 0.9


# --- CIFAR-100 in the official layout -----------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING opcodes), as the official CIFAR files were
    written by Python 2's cPickle: read with encoding='bytes' the keys are b'data', ...; read
    with encoding='latin1' (torchvision) they are 'data', ..."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_cifar100(root, n_train=12, n_test=6, seed=0):
    """Tiny files in the official cifar-100-python layout; returns (entries, {file: md5})."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n).tolist()
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine], b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                 b"batch_label": f"{name} batch".encode()}
        (folder / name).write_bytes(py2_pickle(entry))
        out[name] = entry
    meta = {b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    md5 = {f: hashlib.md5((folder / f).read_bytes()).hexdigest() for f in ("train", "test", "meta")}
    return out, md5


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """Fixture files, with torchvision's expected md5s set to theirs: torchvision still checks
    every file's md5 on the real code path, only against the fixture's checksums."""
    entries, md5 = write_cifar100(tmp_path)
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5["meta"]})
    return tmp_path, entries


def test_fixture_files_have_the_official_layout(tmp_path):
    entries, _ = write_cifar100(tmp_path)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")            # how the CIFAR page says to read them
    assert {b"data", b"fine_labels", b"coarse_labels", b"filenames"} <= set(entry)
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (12, 3072)
    np.testing.assert_array_equal(entry[b"data"], entries["train"][b"data"])
    with open(tmp_path / "cifar-100-python" / "meta", "rb") as fh:
        assert len(pickle.load(fh, encoding="bytes")[b"fine_label_names"]) == 100


def test_cifar100_official_files_read_through_torchvision(cifar_root):
    root, entries = cifar_root
    for split, n in (("train", 12), ("test", 6)):
        ds = data.load_dataset("cifar100", split, image_size=32, data_root=root)
        assert isinstance(ds, CIFAR100) and len(ds) == n
        X, y = stack(ds)
        assert X.shape == (n, 3, 32, 32) and X.dtype == torch.float32
        assert y.tolist() == entries[split][b"fine_labels"]
        raw = torch.from_numpy(entries[split][b"data"].reshape(n, 3, 32, 32)).float() / 255
        torch.testing.assert_close(unnormalize(X), raw, atol=1e-6, rtol=0)   # 32 -> 32: pixels exact
    big, _ = data.load_dataset("cifar100", "train", image_size=64, data_root=root)[0]
    assert big.shape == (3, 64, 64)
    # --data-root may also name the cifar-100-python folder itself
    assert len(data.load_dataset("cifar100", "test", image_size=32, data_root=root / "cifar-100-python")) == 6


def test_cifar100_corrupted_file_is_refused_by_name(cifar_root):
    root, _ = cifar_root
    path = root / "cifar-100-python" / "test"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(QuboNNError, match=r"cifar-100-python/test is corrupted: expected md5 [0-9a-f]{32}, got"):
        data.load_dataset("cifar100", "train", image_size=32, data_root=root)


def test_cifar100_real_checksums_still_apply(tmp_path):
    """Without the fixture's checksums, files that are not the official ones are refused."""
    write_cifar100(tmp_path)
    with pytest.raises(QuboNNError, match=r"cifar-100-python/train is corrupted: expected md5 16019d7e"):
        data.load_dataset("cifar100", "train", image_size=32, data_root=tmp_path)


def test_cifar100_offline_without_files_names_the_remedy(tmp_path, monkeypatch):
    with pytest.raises(OfflineError, match=r"CIFAR-100 not found: .*lacks \['train', 'test', 'meta'\]; "
                                           r"download it on a connected machine.*--data-root pointing at the "
                                           r"folder containing the extracted 'cifar-100-python'"):
        data.load_dataset("cifar100", "train", data_root=tmp_path)

    def no_network(url, timeout=10.0):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(data, "probe_url", no_network)
    with pytest.raises(OfflineError, match=r"could not be downloaded .*Name or service not known.*--data-root"):
        data.load_dataset("cifar100", "train", data_root=tmp_path, download=True)


def test_default_data_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QUBO_NN_DATA", str(tmp_path))
    assert data.default_data_root() == tmp_path
    with pytest.raises(OfflineError, match=str(tmp_path)):
        data.load_dataset("cifar100", "test")


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "mnist", "split": "train"}, r"dataset must be one of \('digits', 'cifar100', 'synthetic', 'imagefolder'\), got 'mnist'"),
    ({"name": "digits", "split": "val"}, r"split must be one of \('train', 'test'\), got 'val'"),
    ({"name": "digits", "split": "train", "image_size": 4}, r"image_size must be an integer in \[8, 1024\], got 4"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(QuboNNError, match=message):
        data.load_dataset(**kwargs)
