"""Evaluation (layer 4): exact k-nearest-neighbour search and retrieval metrics."""

from __future__ import annotations

from .knn import KnnDistance, knn
from .retrieval import (
    count_relevant,
    mean_average_precision_at_r,
    precision_at_1,
    r_precision,
    retrieval_metrics,
)

__all__ = [
    "KnnDistance",
    "knn",
    "count_relevant",
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "retrieval_metrics",
]
