"""Benchmark cases for the margin-softmax classification losses (run by bench/class_losses.py).

A factory receives the library module (``dmlkit`` or ``pytorch_metric_learning``), the number of classes
and the embedding dimension, and returns the loss built with the same arguments in both libraries.
AdaFaceLoss exists in dmlkit only: it is listed in ``DMLKIT_ONLY``.
"""

from __future__ import annotations

import importlib
from typing import Any

MODULES = {
    "LargeMarginSoftmaxLoss": "large_margin_softmax",
    "SphereFaceLoss": "sphere_face",
    "ArcFaceLoss": "arc_face",
    "SubCenterArcFaceLoss": "sub_center_arc_face",
    "CosFaceLoss": "cos_face",
    "NormalizedSoftmaxLoss": "normalized_softmax",
    "AdaFaceLoss": "ada_face",
}


def _cls(lib: Any, name: str) -> Any:
    """The loss class from ``lib.losses``, or for dmlkit from its own module when not exported there."""
    found = getattr(lib.losses, name, None)
    if found is None and lib.__name__ == "dmlkit":
        found = getattr(importlib.import_module(f"dmlkit.losses.{MODULES[name]}"), name)
    return found


CASES = {
    "LargeMarginSoftmaxLoss": lambda lib, num_classes, dim: _cls(lib, "LargeMarginSoftmaxLoss")(num_classes, dim),
    "SphereFaceLoss": lambda lib, num_classes, dim: _cls(lib, "SphereFaceLoss")(num_classes, dim),
    "ArcFaceLoss": lambda lib, num_classes, dim: _cls(lib, "ArcFaceLoss")(num_classes, dim),
    "SubCenterArcFaceLoss": lambda lib, num_classes, dim: _cls(lib, "SubCenterArcFaceLoss")(
        num_classes=num_classes, embedding_size=dim
    ),
    "CosFaceLoss": lambda lib, num_classes, dim: _cls(lib, "CosFaceLoss")(num_classes, dim),
    "NormalizedSoftmaxLoss": lambda lib, num_classes, dim: _cls(lib, "NormalizedSoftmaxLoss")(num_classes, dim),
    "AdaFaceLoss": lambda lib, num_classes, dim: _cls(lib, "AdaFaceLoss")(num_classes, dim),
}

DMLKIT_ONLY = ["AdaFaceLoss"]

__all__: list[Any] = ["CASES", "DMLKIT_ONLY"]
