"""Class-balanced batches: ``m`` samples of each of ``batch_size // m`` classes."""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .._validation import check_range, message

__all__ = ["MPerClassSampler"]

_OWNER = "MPerClassSampler"


def _as_int(value: Any) -> Any:
    """Accept numpy and other integral scalars as ints; anything else goes to the range check unchanged."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _labels_to_numpy(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(message(_OWNER, "labels", "a 1-D sequence of class labels", array.shape))
    return array


def _draw_distinct(rng: np.random.Generator, population: np.ndarray, size: int) -> np.ndarray:
    """For each row ``i``, ``size`` distinct integers from ``[0, population[i])`` in random order.

    Vectorised Floyd sampling (Bentley and Floyd, 1987, "A sample of brilliance"): step ``j`` draws
    ``t`` uniformly from ``[0, n - size + j]`` and keeps ``t`` unless already chosen, in which case it keeps
    ``n - size + j``; the result is a uniform random subset, then shuffled per row. Rows with
    ``population[i] < size`` get unspecified values and must be overwritten by the caller.
    """
    rows = population.shape[0]
    chosen = np.empty((rows, size), dtype=np.int64)
    for step in range(size):
        top = np.maximum(population - size + step, 0)
        draw = rng.integers(0, top + 1)
        seen = (chosen[:, :step] == draw[:, None]).any(axis=1)
        chosen[:, step] = np.where(seen, top, draw)
    return rng.permuted(chosen, axis=1)


class MPerClassSampler(Sampler[int]):
    """Yields dataset indices so that every batch holds ``m`` samples from each of ``batch_size // m`` classes.

    The "P x K" batches of Hermans, Beyer and Leibe, 2017, "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv:1703.07737 (P = ``batch_size // m`` classes, K = ``m`` samples each), as used
    by Musgrave, Belongie and Lim, 2020, arXiv:2003.08505: each block of ``batch_size`` consecutive indices
    is made of ``batch_size // m`` distinct classes drawn at random, with ``m`` samples per class. Samples
    of a class are drawn without replacement, or with replacement when the class has fewer than ``m``.
    Use it with ``DataLoader(dataset, batch_size=batch_size, sampler=sampler)``; with ``drop_last=False``
    the blocks line up with the loader's batches because the length is a multiple of ``batch_size``.

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
        labels: Sequence[Any] | np.ndarray | torch.Tensor,
        m: int,
        batch_size: int | None = None,
        length_before_new_iter: int = 100000,
        seed: int | None = None,
    ) -> None:
        m = _as_int(m)
        batch_size = _as_int(batch_size)
        length_before_new_iter = _as_int(length_before_new_iter)
        check_range(_OWNER, "m", m, low=1, integer=True)
        if batch_size is not None:
            check_range(_OWNER, "batch_size", batch_size, low=1, integer=True)
        check_range(_OWNER, "length_before_new_iter", length_before_new_iter, low=1, integer=True)
        if seed is not None:
            seed = _as_int(seed)
            check_range(_OWNER, "seed", seed, low=0, integer=True)

        array = _labels_to_numpy(labels)
        classes, inverse = np.unique(array, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(message(_OWNER, "labels", "of at least 2 distinct classes", len(classes)))
        order = np.argsort(inverse, kind="stable")
        sizes = np.bincount(inverse, minlength=len(classes))

        self.m_per_class = m
        self.batch_size = batch_size
        self.length_before_new_iter = length_before_new_iter
        self.seed = seed
        self.epoch = 0
        self.labels = classes.tolist()
        self.labels_to_indices = dict(zip(self.labels, np.split(order, np.cumsum(sizes)[:-1]), strict=True))
        self.length_of_single_pass = m * len(classes)
        self._grouped = order
        self._sizes = sizes
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._entropy = seed if seed is not None else secrets.randbits(128)
        self._draws = 0

        list_size = length_before_new_iter
        if batch_size is None:
            if self.length_of_single_pass < list_size:
                list_size -= list_size % self.length_of_single_pass
        else:
            if batch_size % m:
                raise ValueError(message(_OWNER, "batch_size", f"a multiple of `m` ({m})", batch_size))
            if self.length_of_single_pass < batch_size:
                rule = f"<= m * number of classes ({m} * {len(classes)} = {self.length_of_single_pass})"
                raise ValueError(message(_OWNER, "batch_size", rule, batch_size))
            if length_before_new_iter < batch_size:
                rule = f">= `batch_size` ({batch_size})"
                raise ValueError(message(_OWNER, "length_before_new_iter", rule, length_before_new_iter))
            list_size -= list_size % batch_size
        self.list_size = list_size

    def __len__(self) -> int:
        return self.list_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        epoch = _as_int(epoch)
        check_range(_OWNER, "epoch", epoch, low=0, integer=True)
        self.epoch = epoch

    def _generator(self) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self._entropy, self.epoch])
        self._draws += 1
        return np.random.default_rng([self._entropy, self.epoch, self._draws])

    def __iter__(self) -> Iterator[int]:
        rng = self._generator()
        num_classes = len(self._sizes)
        if self.batch_size is None:
            per_iter = num_classes
            num_iters = max(self.list_size // self.length_of_single_pass, 1)
            class_ids = rng.permuted(np.tile(np.arange(num_classes), (num_iters, 1)), axis=1)
        else:
            per_iter = self.batch_size // self.m_per_class
            num_iters = self.list_size // self.batch_size
            class_ids = _draw_distinct(rng, np.full(num_iters, num_classes), per_iter)
        class_ids = class_ids.reshape(-1)
        sizes = self._sizes[class_ids]
        positions = _draw_distinct(rng, sizes, self.m_per_class)
        small = sizes < self.m_per_class
        if small.any():
            positions[small] = rng.integers(0, sizes[small, None], size=(int(small.sum()), self.m_per_class))
        indices = self._grouped[self._offsets[class_ids, None] + positions].reshape(-1)[: self.list_size]
        return iter(indices.tolist())
