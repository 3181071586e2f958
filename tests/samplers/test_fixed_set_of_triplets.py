"""FixedSetOfTriplets: triplet validity, a fixed set per seed, distribution against the oracle, PML parity."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dmlkit.samplers import SAMPLERS, FixedSetOfTriplets
from tests.reference.samplers import anchor_class_probabilities, negative_class_probabilities

# class sizes 1 (never an anchor), 2 (a and p are its two samples), 3, 6, 12; non-contiguous labels, shuffled
SIZES = {5: 1, 9: 2, 14: 3, 20: 6, 31: 12}
LABELS = np.random.default_rng(0).permutation(np.repeat(list(SIZES), list(SIZES.values())))


def triplets_of(indices: list[int]) -> list[tuple[int, int, int]]:
    assert len(indices) % 3 == 0
    return [(indices[k], indices[k + 1], indices[k + 2]) for k in range(0, len(indices), 3)]


def test_every_triplet_is_valid() -> None:
    sampler = FixedSetOfTriplets(LABELS, 2000, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 6000
    for a, p, n in triplets_of(indices):
        assert a != p
        assert LABELS[a] == LABELS[p] != LABELS[n]
        assert LABELS[a] != 5  # a class of one sample has no positive


def test_the_set_is_fixed_and_only_its_order_changes() -> None:
    sampler = FixedSetOfTriplets(LABELS, 50, seed=1)
    rows = sorted(map(tuple, sampler.fixed_set_of_triplets.tolist()))
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    assert sorted(triplets_of(epoch0)) == sorted(triplets_of(epoch1)) == rows
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    same = FixedSetOfTriplets(torch.from_numpy(LABELS), 50, seed=1)
    assert list(same) == epoch0
    other = FixedSetOfTriplets(LABELS.tolist(), 50, seed=2)
    assert sorted(map(tuple, other.fixed_set_of_triplets.tolist())) != rows


def test_seed_none_draws_a_fresh_set_and_fresh_orders() -> None:
    sampler = FixedSetOfTriplets(LABELS, 50)
    assert list(sampler) != list(sampler)
    assert sorted(triplets_of(list(sampler))) == sorted(triplets_of(list(sampler)))
    other = FixedSetOfTriplets(LABELS, 50)
    assert not np.array_equal(sampler.fixed_set_of_triplets, other.fixed_set_of_triplets)


def test_class_frequencies_match_the_oracle() -> None:
    stats = pytest.importorskip("scipy.stats")
    count = 6000
    triplets = FixedSetOfTriplets(LABELS, count, seed=3).fixed_set_of_triplets
    for column, oracle in ((0, anchor_class_probabilities), (2, negative_class_probabilities)):
        probabilities = oracle(LABELS.tolist())
        observed = Counter(LABELS[triplets[:, column]].tolist())
        classes = [c for c in SIZES if probabilities[c] > 0]
        assert set(observed) == set(classes)
        expected = [float(probabilities[c]) * count for c in classes]
        assert stats.chisquare([observed[c] for c in classes], expected).pvalue > 1e-4


def test_samples_within_a_class_are_uniform() -> None:
    stats = pytest.importorskip("scipy.stats")
    triplets = FixedSetOfTriplets(LABELS, 6000, seed=4).fixed_set_of_triplets
    big = np.flatnonzero(LABELS == 31)
    for column in range(3):
        picked = triplets[:, column][np.isin(triplets[:, column], big)]
        counts = [int((picked == i).sum()) for i in big]
        assert stats.chisquare(counts).pvalue > 1e-4
    # (anchor, positive) is a uniformly random ordered pair of distinct samples: each of the 12 * 11 ordered pairs
    pairs = Counter(map(tuple, triplets[np.isin(triplets[:, 0], big)][:, :2].tolist()))
    assert len(pairs) == 12 * 11
    assert stats.chisquare(list(pairs.values())).pvalue > 1e-4


@pytest.fixture
def global_numpy_seed() -> Iterator[None]:
    """pytorch-metric-learning samples from numpy's global generator: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(0)
    yield
    np.random.set_state(state)


@pytest.mark.usefixtures("global_numpy_seed")
def test_len_and_distribution_match_pml_when_every_class_has_two_samples() -> None:
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    stats = pytest.importorskip("scipy.stats")
    labels = LABELS[LABELS != 5]  # PML pairs a one-sample class's only sample with itself
    theirs = samplers.FixedSetOfTriplets(labels, 3000)
    ours = FixedSetOfTriplets(labels, 3000, seed=5)
    assert len(ours) == len(theirs) == 9000
    their_triplets = triplets_of(list(map(int, theirs)))
    our_triplets = triplets_of(list(ours))
    for position in range(3):
        table = [
            [sum(1 for t in found if labels[t[position]] == c) for c in SIZES if c != 5]
            for found in (our_triplets, their_triplets)
        ]
        assert stats.chi2_contingency(table).pvalue > 1e-4


def test_dataloader_batches_hold_whole_triplets() -> None:
    labels = torch.from_numpy(LABELS)
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    loader = DataLoader(dataset, batch_size=6, sampler=FixedSetOfTriplets(labels, 10, seed=6))
    batches = list(loader)
    assert len(batches) == 5
    for _, batch_labels in batches:
        a, p, n = batch_labels.view(-1, 3).T
        assert torch.equal(a, p) and not (a == n).any()


def test_registry() -> None:
    assert SAMPLERS["fixed_set_of_triplets"] is FixedSetOfTriplets
    assert SAMPLERS.name_of(FixedSetOfTriplets) == "fixed_set_of_triplets"


ERROR_CASES = [
    (
        lambda: FixedSetOfTriplets(LABELS, 0),
        ValueError,
        "FixedSetOfTriplets: `num_triplets` must be an integer >= 1, got 0.",
    ),
    (
        lambda: FixedSetOfTriplets(LABELS, 2.5),  # type: ignore[arg-type]
        TypeError,
        "FixedSetOfTriplets: `num_triplets` must be an integer, got 2.5.",
    ),
    (
        lambda: FixedSetOfTriplets([3, 3, 3], 4),
        ValueError,
        "FixedSetOfTriplets: `labels` must be of at least 2 distinct classes, got 1.",
    ),
    (
        lambda: FixedSetOfTriplets([0, 1, 2], 4),
        ValueError,
        "FixedSetOfTriplets: `labels` must be of at least one class with 2 or more samples "
        "(an anchor and its positive), got 3 classes of 1 sample.",
    ),
    (
        lambda: FixedSetOfTriplets(np.zeros((4, 2)), 4),
        ValueError,
        "FixedSetOfTriplets: `labels` must be a 1-D sequence of class labels, got (4, 2).",
    ),
    (
        lambda: FixedSetOfTriplets(LABELS, 4, seed=-1),
        ValueError,
        "FixedSetOfTriplets: `seed` must be an integer >= 0, got -1.",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text) + "$"):
        call()
