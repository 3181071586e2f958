"""Naive float64 oracle of the large-margin softmax loss, plain Python loops.

Liu et al., 2016, arXiv:1612.02295: logits ``scale * ||W_j|| ||x_i|| cos(theta_ij)``; the target class's
``cos(theta)`` becomes ``psi(theta) = (-1)^k cos(m theta) - 2k`` with ``k = floor(theta m / pi)``
(``theta`` in ``[k pi / m, (k + 1) pi / m]``), evaluated here with ``math.acos`` and ``math.cos`` directly.
"""

from __future__ import annotations

import math

from .distances import cosine_matrix, norm
from .margin_softmax import class_rows, cross_entropy

__all__ = ["psi", "large_margin_softmax_values"]

Matrix = list[list[float]]


def psi(cosine: float, m: int) -> float:
    theta = math.acos(max(-1.0, min(1.0, cosine)))
    k = min(math.floor(theta * m / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def large_margin_softmax_values(
    emb: Matrix, labels: list[int], weights: Matrix, m: int, scale: float, weight_norms: bool = True
) -> list[float]:
    """Per-sample losses; ``weight_norms=False`` drops ``||W_j||`` (SphereFace's normalised weights)."""
    rows = class_rows(weights)
    cos = cosine_matrix(emb, rows)
    values = []
    for i, x in enumerate(emb):
        logits = []
        for j, w in enumerate(rows):
            magnitude = scale * norm(x, 2) * (norm(w, 2) if weight_norms else 1.0)
            c = psi(cos[i][j], m) if j == labels[i] else cos[i][j]
            logits.append(magnitude * c)
        values.append(cross_entropy(logits, labels[i]))
    return values
