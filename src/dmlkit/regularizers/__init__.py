"""Regularizers on embeddings or class weights (layer 1)."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseRegularizer
from .lp import LpRegularizer

__all__ = ["BaseRegularizer", "LpRegularizer", "REGULARIZERS"]

REGULARIZERS: Registry[BaseRegularizer] = Registry(
    "regularizer",
    {
        "lp": LpRegularizer,
    },
)
