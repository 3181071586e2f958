"""Reducers: from per-element, per-pair or per-triplet losses to one scalar (layer 1)."""

from __future__ import annotations

from ..registry import Registry
from .avg_non_zero import AvgNonZeroReducer
from .base import BaseReducer
from .divisor import DivisorReducer
from .mean import MeanReducer
from .threshold import ThresholdReducer

__all__ = ["BaseReducer", "MeanReducer", "AvgNonZeroReducer", "ThresholdReducer", "DivisorReducer", "REDUCERS"]

REDUCERS: Registry[BaseReducer] = Registry(
    "reducer",
    {
        "mean": MeanReducer,
        "avg_non_zero": AvgNonZeroReducer,
        "threshold": ThresholdReducer,
        "divisor": DivisorReducer,
    },
)
