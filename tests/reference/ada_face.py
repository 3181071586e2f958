"""Naive float64 oracle of the AdaFace loss with its running norm statistics, plain Python loops.

Kim et al., 2022, arXiv:2204.00964, eq. 9-12: with ``||z_i||`` the embedding's norm clipped to
``[1e-3, 100]``, the running statistics updated first (``mu <- (1 - a) mu + a mean``, ``sigma <- (1 - a) sigma +
a std`` with the unbiased standard deviation), ``z_hat = clip(h (||z|| - mu) / (sigma + 1e-3), -1, 1)``,
``g_angle = -m z_hat``, ``g_add = m + m z_hat``; the target logit is ``s (cos(clip(theta + g_angle, 0, pi)) -
g_add)``, every other logit ``s cos(theta_ij)``.
"""

from __future__ import annotations

import math

from .distances import cosine_matrix, norm
from .margin_softmax import class_rows, cross_entropy

__all__ = ["updated_statistics", "ada_face_values"]

Matrix = list[list[float]]


def _clipped_norms(emb: Matrix) -> list[float]:
    return [min(max(norm(x, 2), 1e-3), 100.0) for x in emb]


def updated_statistics(emb: Matrix, mean: float, std: float, alpha: float) -> tuple[float, float]:
    norms = _clipped_norms(emb)
    n = len(norms)
    batch_mean = sum(norms) / n
    mean = (1 - alpha) * mean + alpha * batch_mean
    if n > 1:
        batch_std = math.sqrt(sum((v - batch_mean) ** 2 for v in norms) / (n - 1))
        std = (1 - alpha) * std + alpha * batch_std
    return mean, std


def ada_face_values(
    emb: Matrix,
    labels: list[int],
    weights: Matrix,
    margin: float,
    h: float,
    scale: float,
    mean: float,
    std: float,
    norms: list[float] | None = None,
) -> list[float]:
    """Per-sample losses given the (already updated) statistics ``mean`` and ``std``; ``norms`` overrides the
    clipped feature norms (to differentiate with the norms held fixed, as the paper's stop-gradient does)."""
    cos = cosine_matrix(emb, class_rows(weights))
    norms = _clipped_norms(emb) if norms is None else norms
    values = []
    for i, row in enumerate(cos):
        z = min(max(h * (norms[i] - mean) / (std + 1e-3), -1.0), 1.0)
        theta = math.acos(max(-1.0, min(1.0, row[labels[i]])))
        shifted = min(max(theta - margin * z, 0.0), math.pi)
        logits = list(row)
        logits[labels[i]] = math.cos(shifted) - (margin + margin * z)
        values.append(cross_entropy([scale * v for v in logits], labels[i]))
    return values
