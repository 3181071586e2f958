from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.data import (
    DATA_ENV_VAR,
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    resolve_data_root,
)
from dmlkit.errors import CorruptFileError

from ._shared import shared_folder

# type code -> (struct format character, numpy dtype), written independently of the reader's table
CODES = {0x08: ("B", np.uint8), 0x09: ("b", np.int8), 0x0B: ("h", np.int16), 0x0C: ("i", np.int32),
         0x0D: ("f", np.float32), 0x0E: ("d", np.float64)}  # fmt: skip


def _idx_bytes(values: np.ndarray, code: int) -> bytes:
    """IDX bytes written value by value with struct, big-endian."""
    fmt = CODES[code][0]
    header = bytes([0, 0, code, values.ndim]) + b"".join(struct.pack(">I", d) for d in values.shape)
    return header + b"".join(struct.pack(">" + fmt, v) for v in values.flatten().tolist())


def _write(path: Path, data: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code", sorted(CODES))
def test_every_type_code_round_trips(tmp_path: Path, code: int, compress: bool) -> None:
    rng = np.random.default_rng(code)
    dtype = CODES[code][1]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=(3, 4, 2), endpoint=True).astype(dtype)
    else:
        values = rng.standard_normal((3, 4, 2)).astype(dtype)
    # the file name says nothing about compression: it is recognised from the content
    out = read_idx(_write(tmp_path / "values-idx3", _idx_bytes(values, code), compress))
    assert out.shape == (3, 4, 2) and out.dtype == torch.from_numpy(values).dtype
    np.testing.assert_array_equal(out.numpy(), values)


def test_values_are_big_endian(tmp_path: Path) -> None:
    raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    assert read_idx(_write(tmp_path / "a", raw)).tolist() == [258, -2]
    one = bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes.fromhex("3FC00000")
    assert read_idx(_write(tmp_path / "b", one)).tolist() == [1.5]


def test_one_and_four_dimensions_and_empty(tmp_path: Path) -> None:
    vec = np.arange(5, dtype=np.uint8)
    assert read_idx(_write(tmp_path / "v", _idx_bytes(vec, 0x08))).tolist() == [0, 1, 2, 3, 4]
    cube = np.arange(24, dtype=np.int32).reshape(1, 2, 3, 4)
    assert torch.equal(read_idx(_write(tmp_path / "c", _idx_bytes(cube, 0x0C))), torch.from_numpy(cube))
    empty = read_idx(_write(tmp_path / "e", bytes([0, 0, 0x08, 2, 0, 0, 0, 0, 0, 0, 0, 28])))
    assert empty.shape == (0, 28)


def test_corrupt_files_raise_with_the_file_name(tmp_path: Path) -> None:
    good = _idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4), 0x08)
    cases = {
        "short": (good[:3], r"is truncated: 3 byte\(s\), shorter than the 4-byte magic number\."),
        "header": (good[:9], r"is truncated: its header needs 12 bytes for 2 dimension\(s\), the file holds 9\."),
        "data": (good[:-1], r"is truncated: dimensions \(3, 4\) of 1-byte values need 12 bytes of data, "
                            r"the file holds 11\."),
        "trailing": (good + b"\x00", r"has a size mismatch: dimensions \(3, 4\) of 1-byte values need 12 bytes of "
                                     r"data, the file holds 13\."),
        "magic": (b"\x89PNG" + good[4:], r"has the wrong magic number 0x89504E47: an IDX file starts with two zero "
                                         r"bytes"),
        "code": (bytes([0, 0, 0x0A]) + good[3:], r"has the unknown IDX type code 0x0A \(known: 0x08, 0x09, 0x0B, "
                                                 r"0x0C, 0x0D, 0x0E\)\."),
        "nodims": (bytes([0, 0, 0x08, 0]), r"declares 0 dimensions; an IDX file has at least one\."),
    }  # fmt: skip
    for name, (data, expected) in cases.items():
        path = _write(tmp_path / name, data)
        with pytest.raises(CorruptFileError, match="^read_idx: " + re.escape(str(path)) + " " + expected):
            read_idx(path)
    wide = _idx_bytes(np.arange(6, dtype=np.int16), 0x0B)[:-3]
    with pytest.raises(CorruptFileError, match=r"dimensions \(6,\) of 2-byte values need 12 bytes of data, .* 9\."):
        read_idx(_write(tmp_path / "wide", wide))


def test_corrupt_gzip_streams(tmp_path: Path) -> None:
    packed = gzip.compress(_idx_bytes(np.zeros((50, 28, 28), np.uint8), 0x08))
    for name, data in {"cut": packed[: len(packed) // 2], "crc": packed[:-8] + b"\0" * 8}.items():
        path = _write(tmp_path / f"{name}.gz", data)
        with pytest.raises(CorruptFileError, match="^read_idx: " + re.escape(str(path)) + " is not a valid gzip"):
            read_idx(path)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


def _tiny_set(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, compress: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    _write(folder / f"{prefix}-images-idx3-ubyte{suffix}", _idx_bytes(images, 0x08), compress)
    _write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", _idx_bytes(labels, 0x08), compress)


def test_load_mnist_on_synthetic_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 0, 9, 3, 1], dtype=np.uint8)
    _tiny_set(tmp_path / "mnist", "t10k", images, labels, compress=False)
    _tiny_set(tmp_path / "fashion-mnist", "train", images[:2], labels[:2])
    features, out = load_mnist(tmp_path, split="test")  # found in root/mnist, uncompressed
    assert features.shape == (5, 1, 28, 28) and features.dtype == torch.float32
    assert out.dtype == torch.int64 and out.tolist() == [3, 0, 9, 3, 1]
    np.testing.assert_array_equal(features[:, 0].numpy(), images.astype(np.float32) / np.float32(255))
    f2, l2 = load_fashion_mnist(tmp_path / "fashion-mnist", "train")  # the folder itself
    assert f2.shape == (2, 1, 28, 28) and l2.tolist() == [3, 0]
    f3, _ = load_dataset("fashion_mnist", root=tmp_path)  # split None means train
    assert torch.equal(f3, f2)
    _tiny_set(tmp_path / "FashionMNIST" / "raw", "t10k", images[:1], labels[:1])  # torchvision's layout
    assert load_fashion_mnist(tmp_path, "test")[1].tolist() == [3]


def test_load_mnist_missing_and_inconsistent_files(tmp_path: Path) -> None:
    expected = (
        r"^load_mnist: no file train-images-idx3-ubyte\[\.gz\] found; tried .*train-images-idx3-ubyte\.gz, .*"
        r"mnist/train-images-idx3-ubyte, .* Pass `root` or set the environment variable DMLKIT_DATA"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"^load_mnist: `split` must be one of 'train', 'test', got 'tset'\."):
        load_mnist(tmp_path, "tset")
    images = np.zeros((4, 28, 28), np.uint8)
    _tiny_set(tmp_path / "a", "train", images, np.zeros(3, np.uint8))
    with pytest.raises(CorruptFileError, match=r"holds 3 labels but .*train-images-idx3-ubyte\.gz holds 4 images\."):
        load_mnist(tmp_path / "a")
    _tiny_set(tmp_path / "b", "train", np.zeros((4, 28, 27), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(CorruptFileError, match=r"must hold uint8 images of shape \(N, 28, 28\), got torch\.uint8 of "
                                               r"shape \(4, 28, 27\)\."):  # fmt: skip
        load_mnist(tmp_path / "b")
    _tiny_set(tmp_path / "c", "train", images, np.array([0, 1, 10, 2], np.uint8))
    with pytest.raises(CorruptFileError, match=r"holds the label 10; labels run from 0 to 9\."):
        load_mnist(tmp_path / "c")
    folder = tmp_path / "d"
    _tiny_set(folder, "train", images, np.zeros(4, np.uint8))
    _write(folder / "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(4, np.int32), 0x0C), compress=True)
    with pytest.raises(CorruptFileError, match=r"must hold 1-D uint8 labels, got torch\.int32 of shape \(4,\)\."):
        load_mnist(folder)


def test_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root("elsewhere") == Path("elsewhere")
    _tiny_set(tmp_path / "mnist", "train", np.zeros((2, 28, 28), np.uint8), np.array([4, 2], np.uint8))
    assert load_mnist()[1].tolist() == [4, 2]
    assert load_dataset("mnist")[1].tolist() == [4, 2]
    monkeypatch.setenv(DATA_ENV_VAR, "")
    assert resolve_data_root() == Path("../shared/data")
    monkeypatch.delenv(DATA_ENV_VAR)
    assert resolve_data_root() == Path("../shared/data")


def test_load_dataset_names_and_split_rules(tmp_path: Path) -> None:
    assert DATASET_NAMES == ("digits", "mnist", "fashion_mnist")
    with pytest.raises(KeyError, match=r"Unknown dataset 'mnits'\. Did you mean 'mnist'.*Known: digits, "
                                       r"fashion_mnist, mnist\."):  # fmt: skip
        load_dataset("mnits")
    with pytest.raises(ValueError, match=r"^load_dataset: `split` must be None for 'digits' \(it has no official "
                                         r"splits\), got 'test'\.$"):  # fmt: skip
        load_dataset("digits", split="test")
    assert load_dataset("digits", root=tmp_path)[0].shape == (1797, 64)  # root is ignored


# Reference numbers from the data folder's README (parsed independently; rounded to 4 decimals).
REAL = {
    ("mnist", "train"): (60000, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], 0.1307, 0.3081),
    ("mnist", "test"): (10000, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], 0.1325, 0.3105),
    ("fashion_mnist", "train"): (60000, [6000] * 10, 0.2860, 0.3530),
    ("fashion_mnist", "test"): (10000, [1000] * 10, 0.2868, 0.3524),
}


@pytest.mark.parametrize(("name", "split"), sorted(REAL))
def test_real_files_shapes_counts_and_pixel_statistics(name: str, split: str) -> None:
    folder = shared_folder(name.replace("_", "-"))
    count, per_class, mean, std = REAL[(name, split)]
    features, labels = load_dataset(name, root=folder.parent, split=split)
    assert features.shape == (count, 1, 28, 28) and features.dtype == torch.float32
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == per_class
    assert float(features.min()) == 0.0 and float(features.max()) == 1.0
    assert abs(float(features.double().mean()) - mean) <= 5e-5
    assert abs(float(features.double().std()) - std) <= 5e-5


def test_fashion_class_names() -> None:
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"
