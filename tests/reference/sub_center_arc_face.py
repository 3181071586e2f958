"""Naive float64 oracle of the sub-center ArcFace loss and its outlier search, plain Python loops.

Deng et al., 2020, ECCV, "Sub-center ArcFace": a class's cosine is the largest over its ``K`` sub-centres
(columns ``c K .. c K + K - 1`` of the weight matrix), then ArcFace. Outliers: samples whose angle to their
class's dominant sub-centre (the one nearest to most of the class's samples, lowest index on ties) exceeds
the threshold.
"""

from __future__ import annotations

import math

from .arc_face import arc_target
from .distances import cosine_matrix
from .margin_softmax import class_rows, cross_entropy

__all__ = ["class_cosines", "sub_center_arc_face_values", "outliers"]

Matrix = list[list[float]]


def class_cosines(emb: Matrix, weights: Matrix, k: int) -> Matrix:
    cos = cosine_matrix(emb, class_rows(weights))
    return [[max(row[c * k : (c + 1) * k]) for c in range(len(row) // k)] for row in cos]


def sub_center_arc_face_values(
    emb: Matrix, labels: list[int], weights: Matrix, k: int, margin_deg: float, scale: float
) -> list[float]:
    values = []
    for i, row in enumerate(class_cosines(emb, weights, k)):
        logits = [scale * (arc_target(c, math.radians(margin_deg)) if j == labels[i] else c) for j, c in enumerate(row)]
        values.append(cross_entropy(logits, labels[i]))
    return values


def outliers(
    emb: Matrix, labels: list[int], weights: Matrix, k: int, threshold_deg: float
) -> tuple[list[int], list[int]]:
    """(outlier batch indices class by class, dominant sub-centre index of every class present, else 0)."""
    cos = cosine_matrix(emb, class_rows(weights))
    num_classes = len(weights[0]) // k
    found, dominant = [], [0] * num_classes
    for c in range(num_classes):
        members = [i for i, label in enumerate(labels) if label == c]
        if not members:
            continue
        votes = [0] * k
        for i in members:
            own = cos[i][c * k : (c + 1) * k]
            votes[own.index(max(own))] += 1
        dominant[c] = votes.index(max(votes))
        for i in members:
            if cos[i][c * k + dominant[c]] < math.cos(math.radians(threshold_deg)):
                found.append(i)
    return found, dominant
