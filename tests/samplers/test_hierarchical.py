"""HierarchicalSampler: batch structure against a naive oracle, greedy filling, uniformity, PML parity, errors."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dmlkit.samplers import SAMPLERS, HierarchicalSampler
from tests.reference.samplers import hierarchical_batch_count, hierarchical_batch_lengths

# (super class, class, size): super 7 has 6 classes, 11 has 3 (one of a single sample), 13 reuses class 100,
# 17 has a single class; rows are shuffled so that no group is contiguous in the dataset
LAYOUT = [
    (7, 100, 5), (7, 101, 3), (7, 102, 8), (7, 103, 2), (7, 104, 6), (7, 105, 4),
    (11, 200, 4), (11, 201, 4), (11, 202, 1),
    (13, 300, 7), (13, 301, 2), (13, 100, 3),
    (17, 400, 10),
]  # fmt: skip
ROWS = np.array([[cls, sup] for sup, cls, size in LAYOUT for _ in range(size)])
LABELS = ROWS[np.random.default_rng(0).permutation(len(ROWS))]
GROUP_SIZE = {(sup, cls): size for sup, cls, size in LAYOUT}
SUPER_CLASSES = {7: 6, 11: 3, 13: 3, 17: 1}


def members(sup: int, cls: int) -> set[int]:
    return set(np.flatnonzero((LABELS[:, 1] == sup) & (LABELS[:, 0] == cls)).tolist())


def groups_of(batch: list[int]) -> Counter[tuple[int, int]]:
    return Counter((int(LABELS[i, 1]), int(LABELS[i, 0])) for i in batch)


@pytest.mark.parametrize(
    ("batch_size", "samples_per_class", "per_tuple", "supers"),
    [(8, 2, 4, 2), (12, 2, 3, 2), (12, 1, 2, 3), (12, 4, 1, 3), (6, 3, 5, 1), (16, 4, 2, 4)],
)
def test_batches_match_the_oracle(batch_size: int, samples_per_class: int, per_tuple: int, supers: int) -> None:
    sampler = HierarchicalSampler(LABELS, batch_size, samples_per_class, per_tuple, supers, seed=1)
    expected = hierarchical_batch_lengths(LABELS.tolist(), batch_size, samples_per_class, per_tuple, supers)
    batches = list(sampler)
    assert len(batches) == len(sampler) == hierarchical_batch_count(LABELS.tolist(), per_tuple, supers)
    seen: Counter[tuple[int, ...]] = Counter()
    share = batch_size // supers
    for batch in batches:
        groups = groups_of(batch)
        combo = tuple(sorted({sup for sup, _ in groups}))
        seen[combo] += 1
        assert len(batch) == expected[combo] <= batch_size
        assert set(groups.values()) == {samples_per_class}
        for sup in combo:
            classes = [cls for s, cls in groups if s == sup]
            assert len(classes) == min(SUPER_CLASSES[sup], share // samples_per_class)
        for (sup, cls), _ in groups.items():
            drawn = [i for i in batch if (LABELS[i, 1], LABELS[i, 0]) == (sup, cls)]
            assert set(drawn) <= members(sup, cls)
            if GROUP_SIZE[(sup, cls)] >= samples_per_class:
                assert len(set(drawn)) == samples_per_class
    assert seen == Counter({combo: per_tuple for combo in expected})
    assert sorted(sampler.super_pairs) == sorted(expected)


@pytest.mark.parametrize(("batch_size", "supers"), [(20, 2), (30, 3), (10, 1)])
def test_all_takes_whole_classes_and_fills_greedily(batch_size: int, supers: int) -> None:
    sampler = HierarchicalSampler(LABELS, batch_size, "all", 6, supers, seed=2)
    share = batch_size // supers
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == len(set(batch)) <= batch_size
            groups = groups_of(batch)
            combo = {sup for sup, _ in groups}
            assert len(combo) == supers
            for group, count in groups.items():
                assert count == GROUP_SIZE[group]  # every sample of a chosen class
            for sup in combo:
                used = sum(count for (s, _), count in groups.items() if s == sup)
                assert used <= share
                # greedy: any class left out no longer fits in its super class's share
                left_out = [size for s, c, size in LAYOUT if s == sup and (s, c) not in groups]
                assert all(size > share - used for size in left_out)


def test_class_choice_within_a_super_class_is_uniform() -> None:
    # super 7 has 6 classes and a share of 2 classes: each class is chosen with probability 1/3 per batch.
    scipy_stats = pytest.importorskip("scipy.stats")
    sampler = HierarchicalSampler(LABELS, 4, 1, 200, 2, seed=4)
    counts: Counter[int] = Counter()
    for batch in sampler:
        counts.update(cls for (sup, cls) in groups_of(batch) if sup == 7)
    observed = [counts[cls] for sup, cls, _ in LAYOUT if sup == 7]
    assert sum(observed) == 3 * 200 * 2  # 3 combinations hold super 7, 200 batches each, 2 classes per share
    assert scipy_stats.chisquare(observed).pvalue > 1e-4


def test_items_and_batches_are_shuffled() -> None:
    sampler = HierarchicalSampler(LABELS, 8, 2, 4, 2, seed=5)
    batches = list(sampler)
    combos = [tuple(sorted({sup for sup, _ in groups_of(batch)})) for batch in batches]
    assert combos != sorted(combos)  # batches of one combination are not kept together
    # within a batch, the two super classes' shares are interleaved in some batch
    halves = [{int(LABELS[i, 1]) for i in batch[: len(batch) // 2]} for batch in batches]
    assert any(len(half) == 2 for half in halves)


def test_determinism_per_seed_and_epoch() -> None:
    a = HierarchicalSampler(LABELS, 8, 2, seed=7)
    b = HierarchicalSampler(torch.from_numpy(LABELS), 8, 2, seed=7)
    assert list(a) == list(b) == list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(HierarchicalSampler(LABELS.tolist(), 8, 2, seed=8)) != first


def test_dataloader_batch_sampler() -> None:
    labels = torch.from_numpy(LABELS)
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    sampler = HierarchicalSampler(labels, 8, 2, batches_per_super_tuple=2, seed=9)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == 12
    for (index, batch_labels), batch in zip(loader, sampler, strict=True):
        assert index.tolist() == batch
        assert torch.equal(batch_labels, labels[index])
        assert len(torch.unique(batch_labels[:, 1])) == 2


def test_other_columns_and_extra_levels() -> None:
    # super class in column 0, class in column 2, an unrelated column in between
    table = np.stack([LABELS[:, 1], np.zeros(len(LABELS), dtype=np.int64), LABELS[:, 0]], axis=1)
    ours = HierarchicalSampler(table, 8, 2, inner_label=2, outer_label=0, seed=3)
    reference = HierarchicalSampler(LABELS, 8, 2, seed=3)
    assert list(ours) == list(reference)


@pytest.fixture
def global_numpy_seed() -> Iterator[None]:
    """pytorch-metric-learning samples from numpy's global generator: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(0)
    yield
    np.random.set_state(state)


@pytest.mark.usefixtures("global_numpy_seed")
@pytest.mark.parametrize(
    ("batch_size", "samples_per_class", "per_tuple", "supers"), [(8, 2, 4, 2), (12, 1, 2, 3), (16, 4, 2, 4)]
)
def test_structure_matches_pml(batch_size: int, samples_per_class: int, per_tuple: int, supers: int) -> None:
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    theirs = samplers.HierarchicalSampler(LABELS, batch_size, samples_per_class, per_tuple, supers)
    ours = HierarchicalSampler(LABELS, batch_size, samples_per_class, per_tuple, supers, seed=0)
    assert len(ours) == len(theirs)

    def signature(batches: list[list[int]]) -> Counter[tuple[object, ...]]:
        # per batch: its super classes, and per super class the number of classes and the samples per class
        result: Counter[tuple[object, ...]] = Counter()
        for batch in batches:
            groups = groups_of(batch)
            shape = tuple(
                (
                    sup,
                    sum(1 for s, _ in groups if s == sup),
                    tuple(sorted(c for (s, _), c in groups.items() if s == sup)),
                )
                for sup in sorted({s for s, _ in groups})
            )
            result[(len(batch), *shape)] += 1
        return result

    assert signature(list(ours)) == signature([list(map(int, batch)) for batch in theirs])


@pytest.mark.usefixtures("global_numpy_seed")
def test_all_mode_batch_lengths_match_pml_in_distribution() -> None:
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    theirs = samplers.HierarchicalSampler(LABELS, 20, "all", 100, 2)
    ours = HierarchicalSampler(LABELS, 20, "all", 100, 2, seed=0)
    our_lengths = np.array([len(batch) for batch in ours], dtype=float)
    their_lengths = np.array([len(batch) for batch in theirs], dtype=float)
    assert len(our_lengths) == len(their_lengths) == 600
    standard_error = np.sqrt(our_lengths.var() / 600 + their_lengths.var() / 600)
    assert abs(our_lengths.mean() - their_lengths.mean()) < 4 * standard_error
    assert set(our_lengths) <= set(range(1, 21)) and set(their_lengths) <= set(range(1, 21))


def test_registry() -> None:
    assert SAMPLERS["hierarchical"] is HierarchicalSampler
    assert SAMPLERS.name_of(HierarchicalSampler) == "hierarchical"


ERROR_CASES = [
    (
        lambda: HierarchicalSampler(LABELS[:, 0], 8, 2),
        ValueError,
        f"HierarchicalSampler: `labels` must be a 2-D array of shape (num_samples, num_levels), got {(len(LABELS),)}.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 9, 2),
        ValueError,
        "HierarchicalSampler: `batch_size` must be a multiple of `super_classes_per_batch` (2), got 9.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 10, 2),
        ValueError,
        "HierarchicalSampler: `batch_size` must be a multiple of `super_classes_per_batch` * `samples_per_class` "
        "(2 * 2 = 4), got 10.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 0, 2),
        ValueError,
        "HierarchicalSampler: `batch_size` must be an integer >= 1, got 0.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 0),
        ValueError,
        "HierarchicalSampler: `samples_per_class` must be an integer >= 1 or 'all', got 0.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, "al"),
        TypeError,
        "HierarchicalSampler: `samples_per_class` must be an integer >= 1 or 'all', got 'al'.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 2.0),  # type: ignore[arg-type]
        TypeError,
        "HierarchicalSampler: `samples_per_class` must be an integer >= 1 or 'all', got 2.0.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 2, batches_per_super_tuple=0),
        ValueError,
        "HierarchicalSampler: `batches_per_super_tuple` must be an integer >= 1, got 0.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 10, 1, super_classes_per_batch=5),
        ValueError,
        "HierarchicalSampler: `super_classes_per_batch` must be <= the number of super classes (4), got 5.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 2, super_classes_per_batch=0),
        ValueError,
        "HierarchicalSampler: `super_classes_per_batch` must be an integer >= 1, got 0.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 2, inner_label=2),
        ValueError,
        "HierarchicalSampler: `inner_label` must be an integer >= 0 and <= 1, got 2.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 2, outer_label=0),
        ValueError,
        "HierarchicalSampler: `outer_label` must be a column other than `inner_label` (0), got 0.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 14, "all"),
        ValueError,
        "HierarchicalSampler: `batch_size` must be at least the largest class (10 samples) times "
        "`super_classes_per_batch` (2) when `samples_per_class` is 'all', so that every class fits, got 14.",
    ),
    (
        lambda: HierarchicalSampler(LABELS, 8, 2, seed=-1),
        ValueError,
        "HierarchicalSampler: `seed` must be an integer >= 0, got -1.",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text) + "$"):
        call()
