from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.data import DATASET_NAMES, load_dataset, load_digits


def test_digits_shapes_types_and_range() -> None:
    features, labels = load_digits()
    assert features.shape == (1797, 64) and features.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert float(features.min()) == 0.0 and float(features.max()) == 1.0
    assert torch.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_equal_sklearn_scaled_by_16() -> None:
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    features, labels = load_digits()
    np.testing.assert_array_equal(features.numpy() * 16.0, bunch.data.astype(np.float32))
    np.testing.assert_array_equal(labels.numpy(), bunch.target)


def test_load_dataset_by_name_and_unknown_name() -> None:
    assert "digits" in DATASET_NAMES
    features, _ = load_dataset("digits")
    assert features.shape == (1797, 64)
    with pytest.raises(
        KeyError, match=r"Unknown dataset 'digit'\. Did you mean 'digits'\? Known: digits, fashion_mnist, mnist\."
    ):
        load_dataset("digit")
