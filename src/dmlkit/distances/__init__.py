"""Distances and similarities between embeddings (layer 1)."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseDistance
from .cosine import CosineSimilarity
from .dot_product import DotProductSimilarity
from .lp import LpDistance

__all__ = ["BaseDistance", "LpDistance", "CosineSimilarity", "DotProductSimilarity", "DISTANCES"]

DISTANCES: Registry[BaseDistance] = Registry(
    "distance",
    {
        "lp": LpDistance,
        "cosine": CosineSimilarity,
        "dot_product": DotProductSimilarity,
    },
)
