"""Class-balanced batches: ``m`` samples of each of ``batch_size // m`` classes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._validation import check_range, message
from .base import BaseSampler, LabelsLike, as_int, draw_distinct, draw_members, group_by_code, labels_to_numpy

__all__ = ["MPerClassSampler"]


class _ClassBalancedPlan:
    """The validated arguments and grouped labels of :class:`MPerClassSampler`, and its draw.

    Shared with :class:`~dmlkit.samplers.MPerClassBatchSampler`, which cuts the same draw into batches;
    ``owner`` names the class in error messages.
    """

    def __init__(
        self, owner: str, labels: LabelsLike, m: int, batch_size: int | None, length_before_new_iter: int
    ) -> None:
        m = as_int(m)
        batch_size = as_int(batch_size)
        length_before_new_iter = as_int(length_before_new_iter)
        check_range(owner, "m", m, low=1, integer=True)
        if batch_size is not None:
            check_range(owner, "batch_size", batch_size, low=1, integer=True)
        check_range(owner, "length_before_new_iter", length_before_new_iter, low=1, integer=True)

        array = labels_to_numpy(owner, labels)
        classes, inverse = np.unique(array, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(message(owner, "labels", "of at least 2 distinct classes", len(classes)))
        self.grouped, self.sizes, self.offsets = group_by_code(inverse.reshape(-1), len(classes))
        self.m = m
        self.batch_size = batch_size
        self.classes = classes
        self.length_of_single_pass = m * len(classes)

        list_size = length_before_new_iter
        if batch_size is None:
            if self.length_of_single_pass < list_size:
                list_size -= list_size % self.length_of_single_pass
        else:
            if batch_size % m:
                raise ValueError(message(owner, "batch_size", f"a multiple of `m` ({m})", batch_size))
            if self.length_of_single_pass < batch_size:
                rule = f"<= m * number of classes ({m} * {len(classes)} = {self.length_of_single_pass})"
                raise ValueError(message(owner, "batch_size", rule, batch_size))
            if length_before_new_iter < batch_size:
                rule = f">= `batch_size` ({batch_size})"
                raise ValueError(message(owner, "length_before_new_iter", rule, length_before_new_iter))
            list_size -= list_size % batch_size
        self.list_size = list_size

    def labels_to_indices(self) -> dict[object, np.ndarray]:
        splits = np.split(self.grouped, np.cumsum(self.sizes)[:-1])
        return dict(zip(self.classes.tolist(), splits, strict=True))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """``list_size`` dataset indices: consecutive blocks of ``m`` indices share a class."""
        num_classes = len(self.sizes)
        if self.batch_size is None:
            num_iters = max(self.list_size // self.length_of_single_pass, 1)
            class_ids = rng.permuted(np.tile(np.arange(num_classes), (num_iters, 1)), axis=1)
        else:
            num_iters = self.list_size // self.batch_size
            class_ids = draw_distinct(rng, np.full(num_iters, num_classes), self.batch_size // self.m)
        members = draw_members(rng, self.grouped, self.sizes, self.offsets, class_ids.reshape(-1), self.m)
        return members.reshape(-1)[: self.list_size]


class MPerClassSampler(BaseSampler[int]):
    """Yields dataset indices so that every batch holds ``m`` samples from each of ``batch_size // m`` classes.

    The "P x K" batches of Hermans, Beyer and Leibe, 2017, "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv:1703.07737 (P = ``batch_size // m`` classes, K = ``m`` samples each), as used
    by Musgrave, Belongie and Lim, 2020, arXiv:2003.08505: each block of ``batch_size`` consecutive indices
    is made of ``batch_size // m`` distinct classes drawn at random, with ``m`` samples per class. Samples
    of a class are drawn without replacement, or with replacement when the class has fewer than ``m``.
    Use it with ``DataLoader(dataset, batch_size=batch_size, sampler=sampler)``; with ``drop_last=False``
    the blocks line up with the loader's batches because the length is a multiple of ``batch_size``.
    :class:`~dmlkit.samplers.MPerClassBatchSampler` yields the same blocks as lists, for ``batch_sampler=``.

    When ``batch_size`` is None, one pass visits every class once (``m * num_classes`` indices) in a random
    class order, and the length is rounded down to a whole number of passes.

    The length is ``length_before_new_iter`` rounded down to a multiple of ``batch_size`` (or of one pass),
    exactly as in pytorch-metric-learning. Unlike pytorch-metric-learning, iteration always yields exactly
    ``len(sampler)`` indices: without ``batch_size`` and with ``length_before_new_iter`` shorter than one pass,
    pytorch-metric-learning 2.9.0 yields a whole pass, more than its ``len()``.

    Randomness is per instance: a numpy ``Generator`` seeded from ``(seed, epoch)``. With a ``seed``, the
    order is a function of ``(seed, epoch)`` only; call :meth:`set_epoch` before each epoch to change it,
    as with ``DistributedSampler``. With ``seed=None``, fresh entropy is drawn once at construction and
    every iteration gives a new order.

    Args:
        labels: the class label of every dataset item (list, numpy array or tensor, 1-D).
        m: samples per class in each batch, ``>= 1``.
        batch_size: the DataLoader's batch size: a multiple of ``m``, at most ``m * num_classes``; or None.
        length_before_new_iter: indices per iteration before rounding, ``>= batch_size``.
        seed: non-negative integer seed, or None for fresh entropy.

    Example:
        >>> labels = [0, 0, 1, 1, 1, 2, 2, 3]
        >>> sampler = MPerClassSampler(labels, m=2, batch_size=4, length_before_new_iter=9, seed=0)
        >>> len(sampler)
        8
        >>> from collections import Counter
        >>> batch = list(sampler)[:4]
        >>> sorted(Counter(labels[i] for i in batch).values())
        [2, 2]
    """

    def __init__(
        self,
        labels: LabelsLike,
        m: int,
        batch_size: int | None = None,
        length_before_new_iter: int = 100000,
        seed: int | None = None,
    ) -> None:
        plan = _ClassBalancedPlan(self._owner, labels, m, batch_size, length_before_new_iter)
        super().__init__(seed)
        self.m_per_class = plan.m
        self.batch_size = plan.batch_size
        self.length_before_new_iter = as_int(length_before_new_iter)
        self.labels = plan.classes.tolist()
        self.labels_to_indices = plan.labels_to_indices()
        self.length_of_single_pass = plan.length_of_single_pass
        self.list_size = plan.list_size
        self._plan = plan

    def __len__(self) -> int:
        return self.list_size

    def __iter__(self) -> Iterator[int]:
        return iter(self._plan.draw(self._generator()).tolist())
