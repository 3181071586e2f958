"""Naive float64 oracles for the reducers, written from their definitions with plain Python loops.

Values, anchors and labels are plain Python lists; every oracle returns a Python float.
"""

from __future__ import annotations

__all__ = [
    "mean",
    "total",
    "threshold_mean",
    "divide",
    "class_weighted_mean",
    "per_anchor_means",
]


def mean(values: list[float]) -> float:
    if not values:
        return 0.0
    return total(values) / len(values)


def total(values: list[float]) -> float:
    out = 0.0
    for v in values:
        out += v
    return out


def threshold_mean(values: list[float], low: float | None = None, high: float | None = None) -> float:
    """Mean of the values strictly above ``low`` and strictly below ``high``; 0 when there are none."""
    kept = []
    for v in values:
        if low is not None and not v > low:
            continue
        if high is not None and not v < high:
            continue
        kept.append(v)
    return mean(kept)


def divide(values: list[float], divisor: float) -> float:
    return 0.0 if divisor == 0 else total(values) / divisor


def class_weighted_mean(values: list[float], anchors: list[int], labels: list[int], weights: list[float]) -> float:
    """``mean_k(values[k] * weights[labels[anchors[k]]])``."""
    weighted = []
    for v, a in zip(values, anchors, strict=True):
        weighted.append(v * weights[labels[a]])
    return mean(weighted)


def per_anchor_means(values: list[float], anchors: list[int], num_anchors: int) -> list[float]:
    """For each anchor ``i < num_anchors``, the mean of the values anchored at ``i`` (0 when there are none)."""
    out = []
    for i in range(num_anchors):
        own = [v for v, a in zip(values, anchors, strict=True) if a == i]
        out.append(mean(own))
    return out
