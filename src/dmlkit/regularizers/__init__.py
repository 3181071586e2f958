"""Regularizers on embeddings or class weights (layer 1)."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseRegularizer
from .center_invariant import CenterInvariantRegularizer
from .lp import LpRegularizer
from .regular_face import RegularFaceRegularizer
from .sparse_centers import SparseCentersRegularizer
from .zero_mean import ZeroMeanRegularizer

__all__ = [
    "BaseRegularizer",
    "CenterInvariantRegularizer",
    "LpRegularizer",
    "RegularFaceRegularizer",
    "SparseCentersRegularizer",
    "ZeroMeanRegularizer",
    "REGULARIZERS",
]

REGULARIZERS: Registry[BaseRegularizer] = Registry(
    "regularizer",
    {
        "center_invariant": CenterInvariantRegularizer,
        "lp": LpRegularizer,
        "regular_face": RegularFaceRegularizer,
        "sparse_centers": SparseCentersRegularizer,
        "zero_mean": ZeroMeanRegularizer,
    },
)
