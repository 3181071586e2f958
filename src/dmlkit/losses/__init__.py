"""Metric losses (layer 2). Every loss is called as ``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)``."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseMetricLossFunction
from .triplet_margin import TripletMarginLoss

__all__ = [
    "BaseMetricLossFunction",
    "TripletMarginLoss",
    "LOSSES",
    # loss wrappers, re-exported lazily from dmlkit.wrappers under pytorch-metric-learning's import path
    "CrossBatchMemory",
    "SelfSupervisedLoss",
    "MultipleLosses",
]

LOSSES: Registry[BaseMetricLossFunction] = Registry(
    "loss",
    {
        "triplet_margin": TripletMarginLoss,
    },
)

_WRAPPERS = frozenset({"CrossBatchMemory", "SelfSupervisedLoss", "MultipleLosses"})


def __getattr__(name: str) -> object:
    # The wrappers live one layer up (dmlkit.wrappers); import them only when asked for by this path.
    if name in _WRAPPERS:
        from .. import wrappers

        return getattr(wrappers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
