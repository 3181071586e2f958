"""Naive float64 oracle of the ArcFace loss, plain Python loops.

Deng et al., 2019, arXiv:1801.07698: logits ``s cos(theta_ij)``; the target logit ``s cos(theta + m)`` while
``theta + m <= pi``, else ``s (cos(theta) - m sin(m))``. The margin is given in degrees.
"""

from __future__ import annotations

import math

from .distances import cosine_matrix
from .margin_softmax import class_rows, cross_entropy

__all__ = ["arc_target", "arc_face_values"]

Matrix = list[list[float]]


def arc_target(cosine: float, margin_rad: float) -> float:
    theta = math.acos(max(-1.0, min(1.0, cosine)))
    if theta + margin_rad <= math.pi:
        return math.cos(theta + margin_rad)
    return cosine - margin_rad * math.sin(margin_rad)


def arc_face_values(emb: Matrix, labels: list[int], weights: Matrix, margin_deg: float, scale: float) -> list[float]:
    cos = cosine_matrix(emb, class_rows(weights))
    values = []
    for i, row in enumerate(cos):
        logits = [scale * (arc_target(c, math.radians(margin_deg)) if j == labels[i] else c) for j, c in enumerate(row)]
        values.append(cross_entropy(logits, labels[i]))
    return values
