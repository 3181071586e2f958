"""pytorch-metric-learning's ``utils.distributed`` path, backed by :mod:`dmlkit.wrappers.distributed`.

Example:
    >>> from dmlkit.utils.distributed import DistributedLossWrapper
    >>> from dmlkit.losses import ContrastiveLoss
    >>> DistributedLossWrapper(ContrastiveLoss(), efficient=True).efficient
    True
"""

from __future__ import annotations

from ..wrappers.distributed import DistributedLossWrapper as DistributedLossWrapper
from ..wrappers.distributed import DistributedMinerWrapper as DistributedMinerWrapper
from ..wrappers.distributed import is_distributed as is_distributed

__all__ = ["DistributedLossWrapper", "DistributedMinerWrapper", "is_distributed"]
