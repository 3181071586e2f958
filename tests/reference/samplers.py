"""Naive oracles for the samplers, written with plain Python loops from their definitions.

Every function takes plain lists and returns plain Python values, so the oracles share no code path with
the library.

* Hierarchical sampling (Cakir et al., 2019, "Deep Metric Learning to Rank", CVPR): a batch per
  combination of super classes and repeat; each super class fills ``batch_size // super_classes_per_batch``
  with ``samples_per_class`` samples of as many of its classes as fit.
* Fixed set of triplets: anchor class uniform among classes of >= 2 samples, negative class uniform among
  the other classes.
* Tuples to weights: an item's weight is the number of times it appears in the mined tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from itertools import combinations

__all__ = [
    "hierarchical_batch_lengths",
    "hierarchical_batch_count",
    "anchor_class_probabilities",
    "negative_class_probabilities",
    "mined_counts",
    "draw_probabilities",
]


def _classes_per_super(labels: Sequence[Sequence[int]], inner: int, outer: int) -> dict[int, set[int]]:
    table: dict[int, set[int]] = {}
    for row in labels:
        table.setdefault(row[outer], set()).add(row[inner])
    return table


def hierarchical_batch_count(
    labels: Sequence[Sequence[int]], batches_per_super_tuple: int, super_classes_per_batch: int, outer: int = 1
) -> int:
    supers = sorted({row[outer] for row in labels})
    return len(list(combinations(supers, super_classes_per_batch))) * batches_per_super_tuple


def hierarchical_batch_lengths(
    labels: Sequence[Sequence[int]],
    batch_size: int,
    samples_per_class: int,
    batches_per_super_tuple: int,
    super_classes_per_batch: int,
    inner: int = 0,
    outer: int = 1,
) -> dict[tuple[int, ...], int]:
    """For an integer ``samples_per_class``: the length of every batch of each combination of super classes."""
    table = _classes_per_super(labels, inner, outer)
    share = batch_size // super_classes_per_batch
    lengths = {}
    for combo in combinations(sorted(table), super_classes_per_batch):
        total = 0
        for super_class in combo:
            fitting = share // samples_per_class
            total += min(fitting, len(table[super_class])) * samples_per_class
        lengths[combo] = total
    return lengths


def anchor_class_probabilities(labels: Sequence[int]) -> dict[int, Fraction]:
    sizes: dict[int, int] = {}
    for label in labels:
        sizes[label] = sizes.get(label, 0) + 1
    eligible = [label for label, size in sizes.items() if size >= 2]
    return {label: (Fraction(1, len(eligible)) if label in eligible else Fraction(0)) for label in sizes}


def negative_class_probabilities(labels: Sequence[int]) -> dict[int, Fraction]:
    """P(negative class = d): sum over anchor classes c != d of P(c) / (num_classes - 1)."""
    anchors = anchor_class_probabilities(labels)
    others = len(anchors) - 1
    return {d: sum((p for c, p in anchors.items() if c != d), Fraction(0)) / others for d in anchors}


def mined_counts(tuples: Sequence[Sequence[int]], size: int) -> list[int]:
    counts = [0] * size
    for part in tuples:
        for index in part:
            counts[index] += 1
    return counts


def draw_probabilities(counts_by_dataset_index: dict[int, int], size: int) -> list[float]:
    """Probability of drawing each dataset index: its count over the total, uniform when all counts are 0."""
    total = sum(counts_by_dataset_index.values())
    if total == 0:
        return [1 / len(counts_by_dataset_index) if i in counts_by_dataset_index else 0.0 for i in range(size)]
    return [counts_by_dataset_index.get(i, 0) / total for i in range(size)]
