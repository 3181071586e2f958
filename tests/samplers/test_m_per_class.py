"""MPerClassSampler: batch composition, length parity with pytorch-metric-learning, determinism, errors."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dmlkit.samplers import SAMPLERS, MPerClassSampler

# Class sizes 1..9 plus two large classes: classes smaller than m exist for every m >= 2.
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 50]
LABELS = np.repeat(np.arange(len(SIZES)) * 10 + 3, SIZES)  # non-contiguous label values


def blocks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


@pytest.mark.parametrize(("m", "batch_size"), [(1, 5), (2, 8), (3, 9), (4, 32), (4, 44), (6, 12), (9, 18)])
def test_every_batch_has_batch_size_over_m_classes_with_m_each(m: int, batch_size: int) -> None:
    sampler = MPerClassSampler(LABELS, m, batch_size, length_before_new_iter=1000, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(sampler) % batch_size == 0
    labels = LABELS
    members = {label: set(np.flatnonzero(labels == label).tolist()) for label in set(labels.tolist())}
    for batch in blocks(indices, batch_size):
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == batch_size // m
        assert set(counts.values()) == {m}
        for label in counts:
            drawn = [i for i in batch if LABELS[i] == label]
            assert set(drawn) <= members[label]
            if len(members[label]) >= m:  # without replacement when the class is big enough
                assert len(set(drawn)) == m


def test_classes_smaller_than_m_are_drawn_with_replacement() -> None:
    labels = [0, 1, 1, 2, 2, 2, 2, 2]
    sampler = MPerClassSampler(labels, 4, batch_size=12, length_before_new_iter=120, seed=1)
    for batch in blocks(list(sampler), 12):
        assert sorted(Counter(labels[i] for i in batch).values()) == [4, 4, 4]
        assert [i for i in batch if labels[i] == 0] == [0, 0, 0, 0]
        assert set(i for i in batch if labels[i] == 1) <= {1, 2}
        assert len(set(i for i in batch if labels[i] == 2)) == 4


def test_without_batch_size_each_pass_visits_every_class_once() -> None:
    sampler = MPerClassSampler(LABELS, 3, length_before_new_iter=500, seed=2)
    single_pass = 3 * len(SIZES)
    assert len(sampler) == 500 - 500 % single_pass
    indices = list(sampler)
    assert len(indices) == len(sampler)
    for one_pass in blocks(indices, single_pass):
        assert Counter(LABELS[one_pass].tolist()) == {label: 3 for label in set(LABELS.tolist())}


def test_short_length_without_batch_size_yields_exactly_len() -> None:
    # pytorch-metric-learning yields a whole pass (3 * 11 = 33 indices) although its len() is 20.
    sampler = MPerClassSampler(LABELS, 3, length_before_new_iter=20, seed=3)
    assert len(sampler) == 20
    assert len(list(sampler)) == 20


LEN_SETTINGS = [
    (m, batch_size, length)
    for m in (1, 2, 3, 5)
    for batch_size in (None, 5, 10, 15, 30)
    for length in (30, 31, 64, 100, 999, 100000)
    if batch_size is None or (batch_size % m == 0 and batch_size <= m * len(SIZES) and length >= batch_size)
]


@pytest.mark.parametrize(("m", "batch_size", "length"), LEN_SETTINGS)
def test_len_matches_pml(m: int, batch_size: int | None, length: int) -> None:
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    theirs = samplers.MPerClassSampler(LABELS, m, batch_size, length)
    ours = MPerClassSampler(LABELS, m, batch_size, length, seed=0)
    assert len(ours) == len(theirs)
    assert len(list(ours)) == len(ours)


def test_item_frequencies_within_a_class_are_uniform() -> None:
    # 4000 draws over 40 items: each item ~100 times (std ~9.5). A sampler favouring some items
    # (e.g. always the first m of a class) lands far outside.
    labels = np.repeat(np.arange(4), 10)
    sampler = MPerClassSampler(labels, 2, batch_size=4, length_before_new_iter=4000, seed=4)
    counts = np.bincount(list(sampler), minlength=40)
    assert counts.sum() == 4000
    assert counts.min() > 70 and counts.max() < 130


def test_same_seed_and_epoch_give_the_same_order() -> None:
    a = MPerClassSampler(LABELS, 2, 8, 200, seed=5)
    b = MPerClassSampler(LABELS, 2, 8, 200, seed=5)
    assert list(a) == list(b) == list(a)
    epoch0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != epoch0
    a.set_epoch(0)
    assert list(a) == epoch0
    assert list(MPerClassSampler(LABELS, 2, 8, 200, seed=6)) != epoch0


def test_seed_none_gives_fresh_orders() -> None:
    sampler = MPerClassSampler(LABELS, 2, 8, 200)
    assert list(sampler) != list(sampler)
    assert list(MPerClassSampler(LABELS, 2, 8, 200)) != list(MPerClassSampler(LABELS, 2, 8, 200))


def test_labels_as_list_array_or_tensor() -> None:
    orders = [
        list(MPerClassSampler(labels, 2, 8, 200, seed=7))
        for labels in (LABELS.tolist(), LABELS, torch.from_numpy(LABELS), np.int32(LABELS))
    ]
    assert all(order == orders[0] for order in orders)


def test_dataloader_integration() -> None:
    labels = torch.from_numpy(LABELS)
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    sampler = MPerClassSampler(labels, 4, batch_size=16, length_before_new_iter=160, seed=8)
    loader = DataLoader(dataset, batch_size=16, sampler=sampler)
    batches = list(loader)
    assert len(batches) == 10
    for index, batch_labels in batches:
        assert torch.equal(labels[index], batch_labels)
        assert sorted(Counter(batch_labels.tolist()).values()) == [4, 4, 4, 4]


def test_registry() -> None:
    assert SAMPLERS["m_per_class"] is MPerClassSampler
    assert SAMPLERS.name_of(MPerClassSampler) == "m_per_class"


def test_numpy_integers_are_accepted() -> None:
    assert len(MPerClassSampler(LABELS, np.int64(2), np.int64(8), np.int64(100))) == 96


ERROR_CASES = [
    (lambda: MPerClassSampler(LABELS, 0), ValueError, "MPerClassSampler: `m` must be an integer >= 1, got 0."),
    (lambda: MPerClassSampler(LABELS, 2.5), TypeError, "MPerClassSampler: `m` must be an integer, got 2.5."),
    (
        lambda: MPerClassSampler(LABELS, 3, batch_size=8),
        ValueError,
        "MPerClassSampler: `batch_size` must be a multiple of `m` (3), got 8.",
    ),
    (
        lambda: MPerClassSampler([0, 0, 1, 1, 2], 2, batch_size=8),
        ValueError,
        "MPerClassSampler: `batch_size` must be <= m * number of classes (2 * 3 = 6), got 8.",
    ),
    (
        lambda: MPerClassSampler(LABELS, 2, batch_size=8, length_before_new_iter=6),
        ValueError,
        "MPerClassSampler: `length_before_new_iter` must be >= `batch_size` (8), got 6.",
    ),
    (
        lambda: MPerClassSampler(LABELS, 2, length_before_new_iter=0),
        ValueError,
        "MPerClassSampler: `length_before_new_iter` must be an integer >= 1, got 0.",
    ),
    (
        lambda: MPerClassSampler([4, 4, 4], 2),
        ValueError,
        "MPerClassSampler: `labels` must be of at least 2 distinct classes, got 1.",
    ),
    (
        lambda: MPerClassSampler([], 2),
        ValueError,
        "MPerClassSampler: `labels` must be of at least 2 distinct classes, got 0.",
    ),
    (
        lambda: MPerClassSampler(np.zeros((3, 2)), 2),
        ValueError,
        "MPerClassSampler: `labels` must be a 1-D sequence of class labels, got (3, 2).",
    ),
    (
        lambda: MPerClassSampler(LABELS, 2, seed=-1),
        ValueError,
        "MPerClassSampler: `seed` must be an integer >= 0, got -1.",
    ),
    (
        lambda: MPerClassSampler(LABELS, 2).set_epoch(-1),
        ValueError,
        "MPerClassSampler: `epoch` must be an integer >= 0, got -1.",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text) + "$"):
        call()
