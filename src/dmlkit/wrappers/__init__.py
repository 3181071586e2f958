"""Loss wrappers (layer 3): cross-batch memory, self-supervised views, weighted sums of losses, gathering
across processes for distributed training, and gradient caching for large batches.

Each wraps one or more losses of :mod:`dmlkit.losses` (and miners of :mod:`dmlkit.miners`) and is called like a
loss. pytorch-metric-learning exposes them under ``losses``; here they live one layer above the losses.
"""

from __future__ import annotations

from .cross_batch_memory import CrossBatchMemory
from .distributed import DistributedLossWrapper, DistributedMinerWrapper
from .grad_cache import GradCache
from .multiple_losses import MultipleLosses
from .self_supervised import SelfSupervisedLoss

__all__ = [
    "CrossBatchMemory",
    "DistributedLossWrapper",
    "DistributedMinerWrapper",
    "GradCache",
    "MultipleLosses",
    "SelfSupervisedLoss",
]
