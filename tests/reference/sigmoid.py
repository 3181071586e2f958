"""Naive float64 oracle for the pairwise sigmoid loss (SigLIP), with plain Python loops.

Zhai, Mustafa, Kolesnikov and Beyer, 2023, "Sigmoid Loss for Language Image Pre-Training", arXiv:2303.15343,
Algorithm 1 (``logits = t * x . y + b``, ``loss = -sum(log_sigmoid(z * logits)) / n``): with ``z_ij = 1`` for
a matching (positive) pair and ``-1`` otherwise::

    L = -1/|B| sum_i sum_j log sigmoid(z_ij * (t * x_i . y_j + b))

``x_i . y_j`` the similarity of anchor ``i`` and candidate ``j`` (here any listed positive or negative pair),
``t = exp(t')`` the temperature and ``b`` the bias; ``|B|`` the number of anchors.
"""

from __future__ import annotations

import math

__all__ = ["log_sigmoid", "sigmoid_loss_values", "sigmoid_loss"]

Matrix = list[list[float]]


def log_sigmoid(x: float) -> float:
    """``log(1 / (1 + exp(-x)))``, computed without overflow."""
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def sigmoid_loss_values(
    sim: Matrix, positive: set[tuple[int, int]], negative: set[tuple[int, int]], t: float, b: float
) -> list[float]:
    """One value per anchor (row of ``sim``): ``-sum_j log sigmoid(z_ij (t s_ij + b))`` over its pairs."""
    values = []
    for i, row in enumerate(sim):
        total = 0.0
        for j, s in enumerate(row):
            if (i, j) in positive:
                total -= log_sigmoid(t * s + b)
            if (i, j) in negative:
                total -= log_sigmoid(-(t * s + b))
        values.append(total)
    return values


def sigmoid_loss(
    sim: Matrix, positive: set[tuple[int, int]], negative: set[tuple[int, int]], t: float = 10.0, b: float = -10.0
) -> float:
    """The mean over anchors of :func:`sigmoid_loss_values`."""
    values = sigmoid_loss_values(sim, positive, negative, t, b)
    return sum(values) / len(values)
