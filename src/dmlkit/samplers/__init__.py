"""Samplers (layer 5): choose which dataset items form each batch.

Every sampler is seeded per instance and has ``set_epoch(epoch)``: with a ``seed``, an iteration's order is
a function of ``(seed, epoch)`` only. ``MPerClassSampler``, ``TuplesToWeightsSampler`` and
``FixedSetOfTriplets`` are passed as ``DataLoader(sampler=...)``; ``MPerClassBatchSampler`` and
``HierarchicalSampler`` yield whole batches and are passed as ``DataLoader(batch_sampler=...)``.
"""

from __future__ import annotations

from torch.utils.data import Sampler

from ..registry import Registry
from .base import BaseSampler
from .distributed_m_per_class import DistributedMPerClassSampler
from .fixed_set_of_triplets import FixedSetOfTriplets
from .hierarchical import HierarchicalSampler
from .m_per_class import MPerClassSampler
from .m_per_class_batch import MPerClassBatchSampler
from .tuples_to_weights import TuplesToWeightsSampler

__all__ = [
    "BaseSampler",
    "MPerClassSampler",
    "MPerClassBatchSampler",
    "DistributedMPerClassSampler",
    "HierarchicalSampler",
    "TuplesToWeightsSampler",
    "FixedSetOfTriplets",
    "SAMPLERS",
]

SAMPLERS: Registry[Sampler] = Registry(
    "sampler",
    {
        "m_per_class": MPerClassSampler,
        "m_per_class_batch": MPerClassBatchSampler,
        "distributed_m_per_class": DistributedMPerClassSampler,
        "hierarchical": HierarchicalSampler,
        "tuples_to_weights": TuplesToWeightsSampler,
        "fixed_set_of_triplets": FixedSetOfTriplets,
    },
)
