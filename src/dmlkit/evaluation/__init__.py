"""Evaluation (layer 4): exact streamed k-nn, retrieval and clustering metrics, ``AccuracyCalculator``,
match/no-match threshold calibration and a k-NN classifier.

Importing this package costs torch only: faiss and scikit-learn are imported inside the functions that use
them, and ``KNNClassifier`` (a scikit-learn estimator) is imported on first access.
"""

from __future__ import annotations

from .calculator import AccuracyCalculator
from .clustering import FaissKMeans, KMeans, KMeansBackend, adjusted_mutual_info, normalized_mutual_info
from .faiss_backend import FaissIndex, FaissKNN, FaissMetric
from .knn import ExactKNN, KnnDistance, iter_knn, knn
from .retrieval import (
    count_relevant,
    mean_average_precision_at_r,
    precision_at_1,
    r_precision,
    retrieval_metrics,
)
from .thresholds import (
    MatchCurve,
    ThresholdCalibration,
    ThresholdTarget,
    calibrate_threshold,
    calibrate_threshold_on_set,
    match_curve,
)

__all__ = [
    "AccuracyCalculator",
    "ExactKNN",
    "FaissKNN",
    "FaissIndex",
    "FaissKMeans",
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
    "MatchCurve",
    "ThresholdCalibration",
    "ThresholdTarget",
    "calibrate_threshold",
    "calibrate_threshold_on_set",
    "match_curve",
    "KNNClassifier",
    "KnnWeights",
    "KnnMetric",
]

_LAZY = {"KNNClassifier", "KnnWeights", "KnnMetric"}


def __getattr__(name: str) -> object:
    # scikit-learn's base classes are needed to define KNNClassifier; load them only when it is asked for.
    if name in _LAZY:
        from . import knn_classifier

        return getattr(knn_classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
