"""Pieces shared by the margin-softmax oracles, with plain Python loops: softmax cross-entropy of one row of
logits and pytorch-metric-learning's per-sample miner weights."""

from __future__ import annotations

import math

__all__ = ["cross_entropy", "miner_weights", "class_rows", "weighted_mean"]

Matrix = list[list[float]]


def cross_entropy(logits: list[float], target: int) -> float:
    """``-log(softmax(logits)[target])``, shifted by the largest logit for stability."""
    top = max(logits)
    total = 0.0
    for value in logits:
        total += math.exp(value - top)
    return top + math.log(total) - logits[target]


def class_rows(weights: Matrix) -> Matrix:
    """The ``(embedding_size, num_classes)`` weight matrix as one row per class."""
    return [[weights[d][c] for d in range(len(weights))] for c in range(len(weights[0]))]


def miner_weights(indices_tuple: list[list[int]] | None, size: int) -> list[float]:
    """How often each sample occurs anywhere in the tuple, divided by the largest count (1 without a tuple)."""
    if indices_tuple is None or all(len(part) == 0 for part in indices_tuple):
        return [1.0] * size
    counts = [0] * size
    for part in indices_tuple:
        for index in part:
            counts[index] += 1
    top = max(counts)
    return [c / top for c in counts]


def weighted_mean(values: list[float], weights: list[float]) -> float:
    total = 0.0
    for v, w in zip(values, weights, strict=True):
        total += v * w
    return total / len(values)
