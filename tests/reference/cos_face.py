"""Naive float64 oracle of the CosFace loss, plain Python loops.

Wang et al., 2018, arXiv:1801.09414: logits ``s cos(theta_ij)``, the target logit ``s (cos(theta) - m)``.
"""

from __future__ import annotations

from .distances import cosine_matrix
from .margin_softmax import class_rows, cross_entropy

__all__ = ["cos_face_values"]

Matrix = list[list[float]]


def cos_face_values(emb: Matrix, labels: list[int], weights: Matrix, margin: float, scale: float) -> list[float]:
    cos = cosine_matrix(emb, class_rows(weights))
    values = []
    for i, row in enumerate(cos):
        logits = [scale * (c - margin if j == labels[i] else c) for j, c in enumerate(row)]
        values.append(cross_entropy(logits, labels[i]))
    return values
