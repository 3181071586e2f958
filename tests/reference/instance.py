"""Naive float64 oracle for the instance loss in its classifier-free batch form, with plain Python loops.

Zheng et al., 2020, "Dual-Path Convolutional Image-Text Embeddings with Instance Loss", ACM TOMM,
arXiv:1711.05535: a softmax cross entropy where every instance is its own class. In the batch form the class
weights are the batch's L2-normalised embeddings: sample ``i`` has logits ``gamma * cos(x_i, x_j)`` over the
batch and target column ``t_i`` (``i`` without labels; the rank of its label among the sorted distinct batch
labels with labels).
"""

from __future__ import annotations

import math

__all__ = ["instance_targets", "instance_values", "instance_loss"]

Matrix = list[list[float]]


def instance_targets(labels: list[int] | None, size: int) -> list[int]:
    if labels is None:
        return list(range(size))
    ranks = {label: rank for rank, label in enumerate(sorted(set(labels)))}
    return [ranks[label] for label in labels]


def instance_values(cosines: Matrix, targets: list[int], gamma: float) -> list[float]:
    values = []
    for row, t in zip(cosines, targets, strict=True):
        logits = [gamma * c for c in row]
        top = max(logits)
        values.append(top + math.log(sum(math.exp(x - top) for x in logits)) - logits[t])
    return values


def instance_loss(cosines: Matrix, labels: list[int] | None, gamma: float = 64.0) -> float:
    values = instance_values(cosines, instance_targets(labels, len(cosines)), gamma)
    return sum(values) / len(values)
