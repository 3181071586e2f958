"""pytorch-metric-learning's ``testers`` path, backed by :mod:`dmlkit.training.testers`.

Example:
    >>> from dmlkit.testers import GlobalEmbeddingSpaceTester
    >>> GlobalEmbeddingSpaceTester(dataloader_num_workers=0).batch_size
    32
"""

from __future__ import annotations

from ..training.testers import (
    BaseTester,
    GlobalEmbeddingSpaceTester,
    GlobalTwoStreamEmbeddingSpaceTester,
    WithSameParentLabelTester,
)

__all__ = [
    "BaseTester",
    "GlobalEmbeddingSpaceTester",
    "GlobalTwoStreamEmbeddingSpaceTester",
    "WithSameParentLabelTester",
]
