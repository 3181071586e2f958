"""Class-balanced batches as lists of indices, for ``DataLoader(batch_sampler=...)``."""

from __future__ import annotations

from collections.abc import Iterator

from .._validation import check_range
from .base import BaseSampler, LabelsLike, as_int
from .m_per_class import _ClassBalancedPlan

__all__ = ["MPerClassBatchSampler"]


class MPerClassBatchSampler(BaseSampler[list[int]]):
    """Yields batches (lists of dataset indices) of ``m`` samples from each of ``batch_size // m`` classes.

    The batch-sampler form of :class:`~dmlkit.samplers.MPerClassSampler` (the "P x K" batches of Hermans,
    Beyer and Leibe, 2017, arXiv:1703.07737): with the same arguments and seed, batch ``b`` is block ``b``
    of ``batch_size`` consecutive indices of ``MPerClassSampler``. Pass it as
    ``DataLoader(dataset, batch_sampler=sampler)`` (without ``batch_size``, ``shuffle``, ``sampler`` or
    ``drop_last``): the loader then cannot cut batches across class blocks, whatever its other settings,
    and ``len(loader)`` is the number of batches. pytorch-metric-learning has no such class; its
    ``MPerClassSampler`` is used as ``sampler=`` only.

    Randomness is per instance, a function of ``(seed, epoch)`` only; call :meth:`set_epoch` before each
    epoch. With ``seed=None`` every iteration gives a new order.

    Args:
        labels: the class label of every dataset item (list, numpy array or tensor, 1-D).
        m: samples per class in each batch, ``>= 1``.
        batch_size: indices per batch: a multiple of ``m``, at most ``m * num_classes``.
        length_before_new_iter: indices per iteration, ``>= batch_size``; rounded down to whole batches, so
            an iteration yields ``length_before_new_iter // batch_size`` batches.
        seed: non-negative integer seed, or None for fresh entropy.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
        >>> sampler = MPerClassBatchSampler(labels, m=2, batch_size=4, length_before_new_iter=12, seed=0)
        >>> loader = DataLoader(TensorDataset(torch.arange(8), labels), batch_sampler=sampler)
        >>> len(loader)
        3
        >>> [torch.unique(y, return_counts=True)[1].tolist() for _, y in loader][0]
        [2, 2]
    """

    def __init__(
        self,
        labels: LabelsLike,
        m: int,
        batch_size: int,
        length_before_new_iter: int = 100000,
        seed: int | None = None,
    ) -> None:
        # batch_size is required here: a batch sampler cannot leave it to the loader
        check_range(self._owner, "batch_size", as_int(batch_size), low=1, integer=True)
        plan = _ClassBalancedPlan(self._owner, labels, m, batch_size, length_before_new_iter)
        super().__init__(seed)
        self.m_per_class = plan.m
        self.batch_size: int = as_int(batch_size)
        self.length_before_new_iter = as_int(length_before_new_iter)
        self.labels = plan.classes.tolist()
        self.labels_to_indices = plan.labels_to_indices()
        self.list_size = plan.list_size
        self._plan = plan

    def __len__(self) -> int:
        return self.list_size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._plan.draw(self._generator()).reshape(-1, self.batch_size)
        return iter(batches.tolist())
