"""Metric losses (layer 2). Every loss is called as ``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)``."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseMetricLossFunction
from .triplet_margin import TripletMarginLoss

__all__ = ["BaseMetricLossFunction", "TripletMarginLoss", "LOSSES"]

LOSSES: Registry[BaseMetricLossFunction] = Registry(
    "loss",
    {
        "triplet_margin": TripletMarginLoss,
    },
)
