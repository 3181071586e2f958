"""pytorch-metric-learning's ``trainers`` path, backed by :mod:`dmlkit.training`."""

from __future__ import annotations

from ..training.modes import (
    CascadedEmbeddings,
    DeepAdversarialMetricLearning,
    MetricLossOnly,
    TrainWithClassifier,
    TwoStreamMetricLoss,
)
from ..training.trainer import Trainer as BaseTrainer

__all__ = [
    "BaseTrainer",
    "CascadedEmbeddings",
    "DeepAdversarialMetricLearning",
    "MetricLossOnly",
    "TrainWithClassifier",
    "TwoStreamMetricLoss",
]
