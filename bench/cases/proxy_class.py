"""Proxy losses for bench/class_losses.py: each builds the same loss in dmlkit and pytorch-metric-learning."""

from __future__ import annotations

from typing import Any

CASES = {
    "ProxyNCALoss": lambda lib, num_classes, dim: lib.losses.ProxyNCALoss(num_classes, dim),
    "ProxyAnchorLoss": lambda lib, num_classes, dim: lib.losses.ProxyAnchorLoss(num_classes, dim),
    "SoftTripleLoss": lambda lib, num_classes, dim: lib.losses.SoftTripleLoss(num_classes, dim),
    # pytorch-metric-learning's positional order: (l = embedding size, K = number of proxies)
    "ManifoldLoss": lambda lib, num_classes, dim: lib.losses.ManifoldLoss(dim, num_classes),
    # pytorch-metric-learning's positional order: (descriptors_dim, num_classes)
    "P2SGradLoss": lambda lib, num_classes, dim: lib.losses.P2SGradLoss(dim, num_classes),
}

__all__: list[Any] = ["CASES"]
