"""Reducers: from per-element, per-pair or per-triplet losses to one scalar (layer 1)."""

from __future__ import annotations

from ..registry import Registry
from .avg_non_zero import AvgNonZeroReducer
from .base import BaseReducer
from .class_weighted import ClassWeightedReducer
from .divisor import DivisorReducer
from .do_nothing import DoNothingReducer
from .mean import MeanReducer
from .multiple import MultipleReducers
from .per_anchor import PerAnchorReducer
from .sum import SumReducer
from .threshold import ThresholdReducer

__all__ = [
    "BaseReducer",
    "MeanReducer",
    "SumReducer",
    "AvgNonZeroReducer",
    "ThresholdReducer",
    "DivisorReducer",
    "ClassWeightedReducer",
    "PerAnchorReducer",
    "DoNothingReducer",
    "MultipleReducers",
    "REDUCERS",
]

REDUCERS: Registry[BaseReducer] = Registry(
    "reducer",
    {
        "mean": MeanReducer,
        "sum": SumReducer,
        "avg_non_zero": AvgNonZeroReducer,
        "threshold": ThresholdReducer,
        "divisor": DivisorReducer,
        "class_weighted": ClassWeightedReducer,
        "per_anchor": PerAnchorReducer,
        "do_nothing": DoNothingReducer,
        "multiple": MultipleReducers,
    },
)
