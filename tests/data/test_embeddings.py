from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.data import EmbeddingDataset, load_embeddings
from dmlkit.errors import CorruptFileError


def _save(folder: Path, features: object, labels: object) -> tuple[Path, Path]:
    x, y = folder / "features.npy", folder / "labels.npy"
    np.save(x, features)
    np.save(y, labels)
    return x, y


def test_round_trip_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((6, 5))
    for label_dtype in (np.int64, np.int32, np.uint8, np.int16):
        labels = np.array([3, 1, 4, 1, 5, 9], dtype=label_dtype)
        x, y = load_embeddings(*_save(tmp_path, features, labels))
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), features.astype(np.float32))
        assert y.tolist() == [3, 1, 4, 1, 5, 9]
    x64, _ = load_embeddings(tmp_path / "features.npy", tmp_path / "labels.npy", dtype=torch.float64)
    np.testing.assert_array_equal(x64.numpy(), features)
    np.save(tmp_path / "half.npy", features.astype(np.float16))
    assert load_embeddings(tmp_path / "half.npy", tmp_path / "labels.npy")[0].dtype == torch.float32
    fortran = np.asfortranarray(features)
    x, _ = load_embeddings(*_save(tmp_path, fortran, np.arange(6)))
    np.testing.assert_array_equal(x.numpy(), features.astype(np.float32))


def test_shape_and_type_errors(tmp_path: Path) -> None:
    x, y = _save(tmp_path, np.zeros((4, 3)), np.arange(5))
    expected = (
        r"^load_embeddings: `labels` must be of the same length as the rows of `features` \(4 in .*features\.npy\), "
        r"got length 5 in .*labels\.npy\.$"
    )
    with pytest.raises(ValueError, match=expected):
        load_embeddings(x, y)
    x, y = _save(tmp_path, np.zeros(4), np.arange(4))
    with pytest.raises(ValueError, match=r"^load_embeddings: `features` must be a 2-D array of shape \(N, D\), got "
                                         r"shape \(4,\) in .*features\.npy\.$"):  # fmt: skip
        load_embeddings(x, y)
    x, y = _save(tmp_path, np.zeros((4, 2)), np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D array of shape \(N,\), got shape \(4, 1\)"):
        load_embeddings(x, y)
    x, y = _save(tmp_path, np.zeros((4, 2), dtype=np.int64), np.arange(4))
    with pytest.raises(TypeError, match=r"`features` must be a floating-point array, got dtype int64 in "):
        load_embeddings(x, y)
    x, y = _save(tmp_path, np.zeros((4, 2)), np.arange(4.0))
    with pytest.raises(TypeError, match=r"`labels` must be an integer array, got dtype float64 in "):
        load_embeddings(x, y)
    bad = np.zeros((4, 2))
    bad[2, 1] = np.nan
    x, y = _save(tmp_path, bad, np.arange(4))
    with pytest.raises(ValueError, match=r"`features` must be finite \(no NaN or Inf\).*got 1 row\(s\) containing NaN"):
        load_embeddings(x, y)
    with pytest.raises(TypeError, match=r"^load_embeddings: `dtype` must be a floating-point torch\.dtype, got "):
        load_embeddings(x, y, dtype=torch.int64)


def test_file_errors(tmp_path: Path) -> None:
    x, y = _save(tmp_path, np.zeros((50, 8)), np.arange(50))
    with pytest.raises(FileNotFoundError, match=r"^load_embeddings: the file .*absent\.npy does not exist\.$"):
        load_embeddings(tmp_path / "absent.npy", y)
    cut = tmp_path / "cut.npy"
    cut.write_bytes(x.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=f"^load_embeddings: cannot read {re.escape(str(cut))} as a .npy array"):
        load_embeddings(cut, y)
    text = tmp_path / "text.npy"
    text.write_text("1,2,3\n")
    with pytest.raises(CorruptFileError, match="cannot read .*text\\.npy as a \\.npy array"):
        load_embeddings(text, y)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}] * 50, dtype=object), allow_pickle=True)
    with pytest.raises(CorruptFileError, match="cannot read .*objects\\.npy as a \\.npy array: .*allow_pickle"):
        load_embeddings(x, objects)
    archive = tmp_path / "both.npz"
    np.savez(archive, x=np.zeros((2, 2)))
    with pytest.raises(CorruptFileError, match=r"both\.npz is an \.npz archive; a \.npy file holding one array"):
        load_embeddings(archive, y)


def test_dataset_items_and_loader(tmp_path: Path) -> None:
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = EmbeddingDataset.from_npy(*_save(tmp_path, features, np.array([2, 0, 2, 1])))
    assert len(data) == 4 and data.features.shape == (4, 3) and data.labels.tolist() == [2, 0, 2, 1]
    x, y = data[2]
    assert x.tolist() == [6.0, 7.0, 8.0] and int(y) == 2
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch_x.shape == (3, 3) and batch_y.tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match=r"^EmbeddingDataset: `labels` must be of the same length as `features` "
                                         r"\(4\), got length 3\.$"):  # fmt: skip
        EmbeddingDataset(torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^EmbeddingDataset: `features` must be a 2-D tensor"):
        EmbeddingDataset(torch.zeros(4), torch.zeros(4, dtype=torch.int64))
