"""Class-balanced batches split over the processes of a ``torch.distributed`` job."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .._validation import check_range, message
from .base import BaseSampler, LabelsLike, as_int, labels_to_numpy
from .m_per_class import _ClassBalancedPlan

__all__ = ["DistributedMPerClassSampler"]


class DistributedMPerClassSampler(BaseSampler[int]):
    """:class:`~dmlkit.samplers.MPerClassSampler` for data-parallel training: each process gets its own
    batches, and every batch of every process holds ``m`` samples of each of ``batch_size // m`` classes.

    The "P x K" batches of Hermans, Beyer and Leibe, 2017, "In Defense of the Triplet Loss for Person
    Re-Identification", arXiv:1703.07737, drawn once for the whole job and cut between the processes: step ``s``
    draws a global batch of ``num_replicas * batch_size`` indices from ``num_replicas * batch_size // m``
    distinct classes (``m`` samples each, as :class:`~dmlkit.samplers.MPerClassSampler` does), and process
    ``rank`` takes its ``rank``-th block of ``batch_size``. The processes of one step therefore never share a
    sample, nor even a class, and the global batches are exactly those of
    ``MPerClassSampler(labels, m, num_replicas * batch_size, num_replicas * length_before_new_iter, seed)``:
    a job of ``N`` processes trains on the batches of a one-process run with ``N`` times the batch size.

    Every process must build the sampler with the same arguments except ``rank``. The order is a function of
    ``(seed, epoch)``; call :meth:`set_epoch` before each epoch on every process, as with
    ``torch.utils.data.DistributedSampler``. With ``seed=None`` and several processes, rank 0 draws fresh
    entropy and sends it to the others, so the constructor must run on every process of the default group
    (then each iteration gives a new order, the same on every process).

    Args:
        labels: the class label of every dataset item (list, numpy array or tensor, 1-D).
        m: samples per class in each batch, ``>= 1``.
        batch_size: the batch size of each process's ``DataLoader``: a multiple of ``m``, with
            ``num_replicas * batch_size`` at most ``m * num_classes``.
        length_before_new_iter: indices per process per iteration before rounding down to whole batches,
            ``>= batch_size``.
        num_replicas: the number of processes (default: the default process group's size, or 1 outside one).
        rank: this process's rank, in ``[0, num_replicas)`` (default: its rank in the default process group).
        seed: non-negative integer seed shared by every process, or None (see above).

    Example:
        >>> labels = [0, 0, 1, 1, 2, 2, 3, 3]
        >>> ranks = [DistributedMPerClassSampler(labels, m=2, batch_size=2, length_before_new_iter=4,
        ...                                      num_replicas=2, rank=r, seed=0) for r in range(2)]
        >>> [len(s) for s in ranks]
        [4, 4]
        >>> first, second = (list(s)[:2] for s in ranks)
        >>> set(first).isdisjoint(second), [labels[i] for i in first][0] == [labels[i] for i in first][1]
        (True, True)
    """

    def __init__(
        self,
        labels: LabelsLike,
        m: int,
        batch_size: int,
        length_before_new_iter: int = 100000,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int | None = None,
    ) -> None:
        owner = self._owner
        default_rank, default_world = _process_group()
        num_replicas = default_world if num_replicas is None else as_int(num_replicas)
        rank = default_rank if rank is None else as_int(rank)
        check_range(owner, "num_replicas", num_replicas, low=1, integer=True)
        check_range(owner, "rank", rank, low=0, high=num_replicas, high_inclusive=False, integer=True)
        m, batch_size = as_int(m), as_int(batch_size)
        length_before_new_iter = as_int(length_before_new_iter)
        check_range(owner, "m", m, low=1, integer=True)
        check_range(owner, "batch_size", batch_size, low=1, integer=True)
        check_range(owner, "length_before_new_iter", length_before_new_iter, low=1, integer=True)
        if batch_size % m:
            raise ValueError(message(owner, "batch_size", f"a multiple of `m` ({m})", batch_size))
        num_classes = len(np.unique(labels_to_numpy(owner, labels)))
        if num_classes >= 2 and num_replicas * batch_size > m * num_classes:
            rule = (
                f"<= m * number of classes / num_replicas ({m} * {num_classes} / {num_replicas}): each step "
                "draws distinct classes for all processes"
            )
            raise ValueError(message(owner, "batch_size", rule, batch_size))
        if length_before_new_iter < batch_size:
            rule = f">= `batch_size` ({batch_size})"
            raise ValueError(message(owner, "length_before_new_iter", rule, length_before_new_iter))
        plan = _ClassBalancedPlan(owner, labels, m, num_replicas * batch_size, num_replicas * length_before_new_iter)
        super().__init__(seed)
        if seed is None and num_replicas > 1:
            self._entropy = _shared_entropy(owner, self._entropy, default_world, num_replicas)
        self.m_per_class = plan.m
        self.batch_size: int = batch_size
        self.length_before_new_iter = length_before_new_iter
        self.num_replicas: int = num_replicas
        self.rank: int = rank
        self.labels = plan.classes.tolist()
        self.labels_to_indices = plan.labels_to_indices()
        self.list_size = plan.list_size // num_replicas
        self._plan = plan

    def __len__(self) -> int:
        return self.list_size

    def __iter__(self) -> Iterator[int]:
        draw = self._plan.draw(self._generator())
        blocks = draw.reshape(-1, self.num_replicas, self.batch_size)[:, self.rank]
        return iter(blocks.reshape(-1).tolist())


def _process_group() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shared_entropy(owner: str, entropy: int, group_size: int, num_replicas: int) -> int:
    """Rank 0's entropy on every process: without it, each process would draw other batches."""
    if group_size != num_replicas:
        rule = (
            "an integer shared by every process when there is no process group of `num_replicas` processes "
            "to agree on fresh entropy"
        )
        raise ValueError(message(owner, "seed", rule, None))
    import torch.distributed as dist

    shared = [entropy]
    dist.broadcast_object_list(shared, src=0)
    return int(shared[0])
