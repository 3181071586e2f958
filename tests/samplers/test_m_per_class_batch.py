"""MPerClassBatchSampler: batches for DataLoader(batch_sampler=...), identical to MPerClassSampler's blocks."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dmlkit.samplers import SAMPLERS, MPerClassBatchSampler, MPerClassSampler

SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 50]
LABELS = np.repeat(np.arange(len(SIZES)) * 10 + 3, SIZES)


@pytest.mark.parametrize(("m", "batch_size", "length"), [(1, 5, 100), (2, 8, 100), (3, 9, 95), (4, 44, 1000)])
def test_batches_are_the_blocks_of_mper_class_sampler(m: int, batch_size: int, length: int) -> None:
    batches = MPerClassBatchSampler(LABELS, m, batch_size, length, seed=3)
    flat = MPerClassSampler(LABELS, m, batch_size, length, seed=3)
    for epoch in (0, 5):
        batches.set_epoch(epoch)
        flat.set_epoch(epoch)
        got = list(batches)
        assert len(got) == len(batches) == length // batch_size
        assert all(len(batch) == batch_size for batch in got)
        assert [i for batch in got for i in batch] == list(flat)


def test_dataloader_batch_sampler_gives_m_per_class() -> None:
    labels = torch.from_numpy(LABELS)
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    sampler = MPerClassBatchSampler(labels, 4, batch_size=16, length_before_new_iter=170, seed=8)
    loader = DataLoader(dataset, batch_sampler=sampler)
    batches = list(loader)
    assert len(loader) == len(batches) == 10
    for index, batch_labels in batches:
        assert index.shape == (16,)
        assert torch.equal(labels[index], batch_labels)
        assert sorted(Counter(batch_labels.tolist()).values()) == [4, 4, 4, 4]


def test_dataloader_with_workers_and_set_epoch() -> None:
    labels = torch.from_numpy(LABELS)
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    sampler = MPerClassBatchSampler(labels, 2, batch_size=6, length_before_new_iter=60, seed=1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=1)
    first = [index.tolist() for index, _ in loader]
    again = [index.tolist() for index, _ in loader]
    sampler.set_epoch(1)
    second = [index.tolist() for index, _ in loader]
    assert first == again != second
    assert first == list(MPerClassBatchSampler(labels, 2, 6, 60, seed=1))


def test_len_equals_pml_mper_class_sampler_in_batches() -> None:
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    for m, batch_size, length in [(2, 8, 100), (3, 9, 95), (5, 10, 100000), (1, 11, 11)]:
        theirs = samplers.MPerClassSampler(LABELS, m, batch_size, length)
        assert len(MPerClassBatchSampler(LABELS, m, batch_size, length)) * batch_size == len(theirs)


def test_registry() -> None:
    assert SAMPLERS["m_per_class_batch"] is MPerClassBatchSampler
    assert SAMPLERS.name_of(MPerClassBatchSampler) == "m_per_class_batch"


ERROR_CASES = [
    (
        lambda: MPerClassBatchSampler(LABELS, 2, None),  # type: ignore[arg-type]
        TypeError,
        "MPerClassBatchSampler: `batch_size` must be an integer, got None.",
    ),
    (
        lambda: MPerClassBatchSampler(LABELS, 2, 0),
        ValueError,
        "MPerClassBatchSampler: `batch_size` must be an integer >= 1, got 0.",
    ),
    (
        lambda: MPerClassBatchSampler(LABELS, 3, 8),
        ValueError,
        "MPerClassBatchSampler: `batch_size` must be a multiple of `m` (3), got 8.",
    ),
    (
        lambda: MPerClassBatchSampler([0, 0, 1, 1, 2], 2, 8),
        ValueError,
        "MPerClassBatchSampler: `batch_size` must be <= m * number of classes (2 * 3 = 6), got 8.",
    ),
    (
        lambda: MPerClassBatchSampler(LABELS, 2, 8, length_before_new_iter=6),
        ValueError,
        "MPerClassBatchSampler: `length_before_new_iter` must be >= `batch_size` (8), got 6.",
    ),
    (
        lambda: MPerClassBatchSampler([1, 1], 2, 2),
        ValueError,
        "MPerClassBatchSampler: `labels` must be of at least 2 distinct classes, got 1.",
    ),
    (
        lambda: MPerClassBatchSampler(LABELS, 2, 8, seed=-2),
        ValueError,
        "MPerClassBatchSampler: `seed` must be an integer >= 0, got -2.",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text) + "$"):
        call()
