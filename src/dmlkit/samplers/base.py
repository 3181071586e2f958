"""The sampler family's base: per-instance randomness that depends on ``(seed, epoch)`` only."""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

from .._validation import check_range, message

__all__ = ["BaseSampler", "LabelsLike"]

T_co = TypeVar("T_co", covariant=True)

#: what the samplers accept as labels: a list, a numpy array or a tensor.
LabelsLike = Sequence[Any] | np.ndarray | torch.Tensor


class BaseSampler(Sampler[T_co]):
    """Base of every sampler: a seed, an epoch and a numpy ``Generator`` drawn from both.

    With a ``seed``, every iteration of epoch ``e`` yields the same order, a function of ``(seed, e)``
    only; :meth:`set_epoch` selects the epoch, as with ``DistributedSampler``. With ``seed=None``, fresh
    entropy is drawn once at construction and every iteration gives a new order. No global random state
    (``random``, ``numpy.random``, ``torch.manual_seed``) is read or changed.

    Args:
        seed: non-negative integer seed, or None for fresh entropy.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None:
            seed = as_int(seed)
            check_range(self._owner, "seed", seed, low=0, integer=True)
        self.seed = seed
        self.epoch = 0
        self._entropy = seed if seed is not None else secrets.randbits(128)
        self._draws = 0

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def _owner(self) -> str:
        return type(self).__name__

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        epoch = as_int(epoch)
        check_range(self._owner, "epoch", epoch, low=0, integer=True)
        self.epoch = epoch

    def _generator(self) -> np.random.Generator:
        """The generator of one iteration: a function of ``(seed, epoch)``, or fresh for ``seed=None``."""
        if self.seed is not None:
            return np.random.default_rng([self._entropy, self.epoch])
        self._draws += 1
        return np.random.default_rng([self._entropy, self.epoch, self._draws])

    def _construction_generator(self) -> np.random.Generator:
        """A generator for state drawn once at construction, independent of every epoch's generator."""
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(0,)))


def as_int(value: Any) -> Any:
    """Accept numpy and other integral scalars as ints; anything else goes to the range check unchanged."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def labels_to_numpy(owner: str, labels: Any, ndim: int = 1) -> np.ndarray:
    """``labels`` (list, array or tensor) as a numpy array of ``ndim`` dimensions."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != ndim:
        rule = "a 1-D sequence of class labels" if ndim == 1 else "a 2-D array of shape (num_samples, num_levels)"
        raise ValueError(message(owner, "labels", rule, array.shape))
    return array


def group_by_code(codes: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grouped, sizes, offsets)``: dataset indices sorted by group code, group sizes and group starts.

    Members of group ``g`` are ``grouped[offsets[g] : offsets[g] + sizes[g]]``, in dataset order.
    """
    grouped = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=num_groups)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return grouped, sizes, offsets


def draw_distinct(rng: np.random.Generator, population: np.ndarray, size: int) -> np.ndarray:
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


def draw_members(
    rng: np.random.Generator, grouped: np.ndarray, sizes: np.ndarray, offsets: np.ndarray, groups: np.ndarray, m: int
) -> np.ndarray:
    """``(len(groups), m)`` dataset indices: ``m`` members of each group in ``groups``.

    Without replacement, or with replacement for groups of fewer than ``m`` members.
    """
    group_sizes = sizes[groups]
    positions = draw_distinct(rng, group_sizes, m)
    small = group_sizes < m
    if small.any():
        positions[small] = rng.integers(0, group_sizes[small, None], size=(int(small.sum()), m))
    return grouped[offsets[groups, None] + positions]
