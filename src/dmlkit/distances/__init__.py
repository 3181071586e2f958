"""Distances and similarities between embeddings (layer 1)."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseDistance
from .batched import BatchedDistance
from .cosine import CosineSimilarity
from .dot_product import DotProductSimilarity
from .lp import LpDistance
from .snr import SNRDistance

__all__ = [
    "BaseDistance",
    "LpDistance",
    "CosineSimilarity",
    "DotProductSimilarity",
    "SNRDistance",
    "BatchedDistance",
    "DISTANCES",
]

# BatchedDistance is a wrapper that returns no matrix, not a distance, so it has no registry entry.
DISTANCES: Registry[BaseDistance] = Registry(
    "distance",
    {
        "lp": LpDistance,
        "cosine": CosineSimilarity,
        "dot_product": DotProductSimilarity,
        "snr": SNRDistance,
    },
)
