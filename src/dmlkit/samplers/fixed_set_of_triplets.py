"""A fixed set of random triplets, yielded flattened: every 3 consecutive indices are one triplet."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._validation import Described, check_range, message
from .base import BaseSampler, LabelsLike, as_int, group_by_code, labels_to_numpy

__all__ = ["FixedSetOfTriplets"]


class FixedSetOfTriplets(BaseSampler[int]):
    """Draws ``num_triplets`` triplets once, then yields them, shuffled, as a flat sequence of indices.

    For experiments where the only supervision is a set of relative comparisons "``a`` is closer to ``p``
    than to ``n``" (the triplet supervision of Schultz and Joachims, 2003, "Learning a Distance Metric from
    Relative Comparisons", NeurIPS), simulated from class labels. Each triplet ``(a, p, n)`` is drawn as:
    an anchor class uniformly among the classes of at least 2 samples, two distinct samples ``a`` and ``p``
    of it, a negative class uniformly among the other classes, and a sample ``n`` of it. The set is drawn at
    construction (from the seed) and does not change; each iteration yields its triplets in a new order,
    flattened: indices ``3k, 3k + 1, 3k + 2`` are the anchor, positive and negative of one triplet. Use it
    with a ``batch_size`` that is a multiple of 3 so that batches hold whole triplets.

    ``len(sampler)`` is ``3 * num_triplets``, as in pytorch-metric-learning. Unlike pytorch-metric-learning,
    the anchor class is never a class of a single sample, so ``a != p`` always: pytorch-metric-learning
    draws the anchor class among all classes and, for a class of one sample, returns that sample as both
    anchor and positive. With every class of at least 2 samples, the two draw triplets from the same
    distribution.

    Randomness is per instance: the set is a function of the seed, the order of an iteration a function of
    ``(seed, epoch)``; call :meth:`set_epoch` before each epoch. With ``seed=None`` the set comes from fresh
    entropy and every iteration gives a new order.

    Args:
        labels: the class label of every dataset item (list, numpy array or tensor, 1-D), of at least 2
            classes, one of which has at least 2 samples.
        num_triplets: the number of triplets in the set, ``>= 1``.
        seed: non-negative integer seed, or None for fresh entropy.

    Example:
        >>> labels = [0, 0, 1, 1, 2]
        >>> sampler = FixedSetOfTriplets(labels, num_triplets=4, seed=0)
        >>> len(sampler)
        12
        >>> a, p, n = list(sampler)[:3]
        >>> a != p and labels[a] == labels[p] != labels[n]
        True
    """

    def __init__(self, labels: LabelsLike, num_triplets: int, seed: int | None = None) -> None:
        owner = self._owner
        num_triplets = as_int(num_triplets)
        check_range(owner, "num_triplets", num_triplets, low=1, integer=True)
        array = labels_to_numpy(owner, labels)
        classes, inverse = np.unique(array, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(message(owner, "labels", "of at least 2 distinct classes", len(classes)))
        grouped, sizes, offsets = group_by_code(inverse.reshape(-1), len(classes))
        if sizes.max() < 2:
            rule = "of at least one class with 2 or more samples (an anchor and its positive)"
            raise ValueError(message(owner, "labels", rule, Described(f"{len(classes)} classes of 1 sample")))
        super().__init__(seed)
        self.num_triplets = num_triplets
        self.labels_to_indices = dict(zip(classes.tolist(), np.split(grouped, np.cumsum(sizes)[:-1]), strict=True))
        #: ``(num_triplets, 3)`` dataset indices, one ``(anchor, positive, negative)`` triplet per row
        self.fixed_set_of_triplets = self._draw_triplets(grouped, sizes, offsets)

    def _draw_triplets(self, grouped: np.ndarray, sizes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        rng = self._construction_generator()
        count = self.num_triplets
        eligible = np.flatnonzero(sizes >= 2)
        anchor_class = eligible[rng.integers(0, len(eligible), size=count)]
        # uniform over the other classes: draw among num_classes - 1 and step over the anchor class
        negative_class = rng.integers(0, len(sizes) - 1, size=count)
        negative_class += negative_class >= anchor_class
        # two distinct positions in the anchor class: the second skips over the first
        anchor = rng.integers(0, sizes[anchor_class])
        positive = rng.integers(0, sizes[anchor_class] - 1)
        positive += positive >= anchor
        negative = rng.integers(0, sizes[negative_class])
        start = offsets[anchor_class]
        positions = np.stack([start + anchor, start + positive, offsets[negative_class] + negative], axis=1)
        return grouped[positions]

    def __len__(self) -> int:
        return 3 * self.num_triplets

    def __iter__(self) -> Iterator[int]:
        order = self._generator().permutation(self.num_triplets)
        return iter(self.fixed_set_of_triplets[order].reshape(-1).tolist())
