"""Evaluation (layer 4): exact streamed k-nn, retrieval and clustering metrics, and ``AccuracyCalculator``.

Importing this package costs torch only: faiss and scikit-learn are imported inside the functions that use
them.
"""

from __future__ import annotations

from .calculator import AccuracyCalculator
from .clustering import KMeans, KMeansBackend, adjusted_mutual_info, normalized_mutual_info
from .faiss_backend import FaissIndex, FaissKNN, FaissMetric
from .knn import ExactKNN, KnnDistance, iter_knn, knn
from .retrieval import (
    count_relevant,
    mean_average_precision_at_r,
    precision_at_1,
    r_precision,
    retrieval_metrics,
)

__all__ = [
    "AccuracyCalculator",
    "ExactKNN",
    "FaissKNN",
    "FaissIndex",
    "FaissMetric",
    "KMeans",
    "KMeansBackend",
    "KnnDistance",
    "iter_knn",
    "knn",
    "count_relevant",
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "retrieval_metrics",
    "normalized_mutual_info",
    "adjusted_mutual_info",
]
