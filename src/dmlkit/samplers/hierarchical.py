"""Batches drawn from a few super classes at a time, several classes per super class."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from .._validation import check_range, message
from .base import BaseSampler, LabelsLike, as_int, draw_members, group_by_code, labels_to_numpy

__all__ = ["HierarchicalSampler"]

_ALL = "all"


class HierarchicalSampler(BaseSampler[list[int]]):
    """Yields batches from ``super_classes_per_batch`` super classes, several classes of each.

    The minibatch sampling of Cakir, He, Xia, Kulis and Sclaroff, 2019, "Deep Metric Learning to Rank"
    (FastAP), CVPR, doi:10.1109/CVPR.2019.00196: a batch mixes a few super classes (e.g. "bicycle" and
    "chair" in Stanford Online Products), so that every class in it meets negatives of the same super class,
    the hard ones, as well as negatives of another. Each batch is split evenly between its super classes;
    a super class's share ``batch_size // super_classes_per_batch`` is filled with ``samples_per_class``
    samples of each of randomly chosen classes of that super class (as many as fit), or with all the
    samples of each class for ``samples_per_class="all"`` (classes are taken in random order, skipping any
    that would overflow the share). A super class with too few classes leaves its share partly empty, so a
    batch can be shorter than ``batch_size``. Within a class, samples are drawn without replacement, or with
    replacement when the class has fewer than ``samples_per_class``.

    Every combination of ``super_classes_per_batch`` distinct super classes gets ``batches_per_super_tuple``
    batches per iteration, so ``len(sampler)`` is ``C(num_super_classes, super_classes_per_batch) *
    batches_per_super_tuple``; the items of each batch and the batches are shuffled. A class is identified
    by its pair ``(super class, class)``: the same ``inner_label`` under two super classes is two classes.

    This is a batch sampler: pass it as ``DataLoader(dataset, batch_sampler=sampler)``.

    Behaviour as pytorch-metric-learning's ``HierarchicalSampler``, with these differences: with
    ``samples_per_class="all"`` a class larger than a super class's share could never be sampled, and is
    refused here at construction (pytorch-metric-learning skips it silently); ``super_classes_per_batch``
    above the number of super classes is refused (pytorch-metric-learning yields no batch); randomness is
    per instance and seeded.

    Args:
        labels: ``(num_samples, num_levels)`` labels (list of rows, numpy array or tensor): column
            ``inner_label`` holds the class, column ``outer_label`` the super class of every dataset item.
        batch_size: indices per batch, a multiple of ``super_classes_per_batch`` (and of
            ``super_classes_per_batch * samples_per_class`` for an integer ``samples_per_class``).
        samples_per_class: samples of each chosen class, an integer ``>= 1``, or ``"all"``.
        batches_per_super_tuple: batches per combination of super classes in each iteration, ``>= 1``.
        super_classes_per_batch: super classes in each batch, between 1 and the number of super classes.
        inner_label: the column of ``labels`` holding the classes.
        outer_label: the column of ``labels`` holding the super classes, different from ``inner_label``.
        seed: non-negative integer seed, or None for fresh entropy.

    Example:
        >>> super_classes = torch.arange(3).repeat_interleave(16)  # 3 super classes of 4 classes of 4
        >>> labels = torch.stack([torch.arange(12).repeat_interleave(4), super_classes], dim=1)
        >>> sampler = HierarchicalSampler(labels, batch_size=8, samples_per_class=2, seed=0)
        >>> len(sampler)  # C(3, 2) pairs of super classes, 4 batches each
        12
        >>> batch = next(iter(sampler))
        >>> len(batch), torch.unique(super_classes[batch]).numel(), torch.unique(labels[batch, 0]).numel()
        (8, 2, 4)
    """

    def __init__(
        self,
        labels: LabelsLike,
        batch_size: int,
        samples_per_class: int | str,
        batches_per_super_tuple: int = 4,
        super_classes_per_batch: int = 2,
        inner_label: int = 0,
        outer_label: int = 1,
        seed: int | None = None,
    ) -> None:
        owner = self._owner
        batch_size = as_int(batch_size)
        batches_per_super_tuple = as_int(batches_per_super_tuple)
        super_classes_per_batch = as_int(super_classes_per_batch)
        inner_label = as_int(inner_label)
        outer_label = as_int(outer_label)
        check_range(owner, "batch_size", batch_size, low=1, integer=True)
        check_range(owner, "batches_per_super_tuple", batches_per_super_tuple, low=1, integer=True)
        check_range(owner, "super_classes_per_batch", super_classes_per_batch, low=1, integer=True)
        if samples_per_class != _ALL:
            samples_per_class = as_int(samples_per_class)
            rule = "an integer >= 1 or 'all'"
            if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int):
                raise TypeError(message(owner, "samples_per_class", rule, samples_per_class))
            if samples_per_class < 1:
                raise ValueError(message(owner, "samples_per_class", rule, samples_per_class))

        array = labels_to_numpy(owner, labels, ndim=2)
        levels = array.shape[1]
        check_range(owner, "inner_label", inner_label, low=0, high=levels - 1, integer=True)
        check_range(owner, "outer_label", outer_label, low=0, high=levels - 1, integer=True)
        if inner_label == outer_label:
            rule = f"a column other than `inner_label` ({inner_label})"
            raise ValueError(message(owner, "outer_label", rule, outer_label))

        if batch_size % super_classes_per_batch:
            rule = f"a multiple of `super_classes_per_batch` ({super_classes_per_batch})"
            raise ValueError(message(owner, "batch_size", rule, batch_size))
        share = batch_size // super_classes_per_batch
        if isinstance(samples_per_class, int) and share % samples_per_class:
            step = super_classes_per_batch * samples_per_class
            rule = (
                f"a multiple of `super_classes_per_batch` * `samples_per_class` "
                f"({super_classes_per_batch} * {samples_per_class} = {step})"
            )
            raise ValueError(message(owner, "batch_size", rule, batch_size))

        super_values, super_codes = np.unique(array[:, outer_label], return_inverse=True)
        class_values, class_codes = np.unique(array[:, inner_label], return_inverse=True)
        num_super = len(super_values)
        if super_classes_per_batch > num_super:
            rule = f"<= the number of super classes ({num_super})"
            raise ValueError(message(owner, "super_classes_per_batch", rule, super_classes_per_batch))
        # one group per (super class, class) pair, numbered super class first so a super class's groups are
        # consecutive
        pair_codes = super_codes.reshape(-1) * len(class_values) + class_codes.reshape(-1)
        pairs, group_codes = np.unique(pair_codes, return_inverse=True)
        grouped, sizes, offsets = group_by_code(group_codes.reshape(-1), len(pairs))
        group_super = pairs // len(class_values)
        if samples_per_class == _ALL and sizes.max() > share:
            rule = (
                f"at least the largest class ({int(sizes.max())} samples) times `super_classes_per_batch` "
                f"({super_classes_per_batch}) when `samples_per_class` is 'all', so that every class fits"
            )
            raise ValueError(message(owner, "batch_size", rule, batch_size))

        super().__init__(seed)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.batches_per_super_tuple = batches_per_super_tuple
        self.super_classes_per_batch = super_classes_per_batch
        self.inner_label = inner_label
        self.outer_label = outer_label
        self.sub_batch_len = share
        self.super_labels = super_values.tolist()
        combos = list(itertools.combinations(range(num_super), super_classes_per_batch))
        #: every combination of ``super_classes_per_batch`` super class labels; each gets its own batches
        self.super_pairs = [tuple(self.super_labels[i] for i in combo) for combo in combos]
        self._combos = np.array(combos, dtype=np.int64)
        self._grouped = grouped
        self._sizes = sizes
        self._offsets = offsets
        self._super_first = np.searchsorted(group_super, np.arange(num_super))
        self._super_count = np.bincount(group_super, minlength=num_super)

    def __len__(self) -> int:
        return len(self.super_pairs) * self.batches_per_super_tuple

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._generator()
        num_batches = len(self)
        # one row per (batch, super class of the batch): the share of that super class
        row_super = np.repeat(self._combos, self.batches_per_super_tuple, axis=0).reshape(-1)
        row_batch = np.repeat(np.arange(num_batches), self.super_classes_per_batch)
        count = self._super_count[row_super]
        width = int(count.max())
        # a random order of each super class's classes: sort random keys, padding last
        keys = rng.random((len(row_super), width))
        keys[np.arange(width) >= count[:, None]] = np.inf
        order = np.argsort(keys, axis=1)
        group = self._super_first[row_super, None] + order
        real = np.arange(width) < count[:, None]

        if self.samples_per_class == _ALL:
            take = self._fill_greedily(np.where(real, self._sizes[np.where(real, group, 0)], 0), real)
            rows, cols = np.nonzero(take)
            chosen = group[rows, cols]
            lengths = self._sizes[chosen]
            starts = np.cumsum(lengths) - lengths
            within = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
            indices = self._grouped[np.repeat(self._offsets[chosen], lengths) + within]
            batch_of = np.repeat(row_batch[rows], lengths)
        else:
            per_share = np.minimum(count, self.sub_batch_len // int(self.samples_per_class))
            rows, cols = np.nonzero(np.arange(width) < per_share[:, None])
            chosen = group[rows, cols]
            m = int(self.samples_per_class)
            indices = draw_members(rng, self._grouped, self._sizes, self._offsets, chosen, m).reshape(-1)
            batch_of = np.repeat(row_batch[rows], m)

        # shuffle the batches, and the items within each batch
        rank = rng.permutation(num_batches)[batch_of]
        ordered = np.lexsort((rng.random(len(indices)), rank))
        splits = np.cumsum(np.bincount(rank, minlength=num_batches))[:-1]
        return iter([batch.tolist() for batch in np.split(indices[ordered], splits)])

    def _fill_greedily(self, cost: np.ndarray, real: np.ndarray) -> np.ndarray:
        """Which classes each share takes: scanning its classes in order, every one that still fits."""
        used = np.zeros(cost.shape[0], dtype=np.int64)
        take = np.zeros(cost.shape, dtype=bool)
        smallest = int(self._sizes.min())
        for column in range(cost.shape[1]):
            fits = real[:, column] & (used + cost[:, column] <= self.sub_batch_len)
            take[:, column] = fits
            used += np.where(fits, cost[:, column], 0)
            if (used + smallest > self.sub_batch_len).all():
                break
        return take
