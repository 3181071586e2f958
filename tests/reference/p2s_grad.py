"""Naive float64 oracle for the P2SGrad loss in its mean-squared-error form, with plain Python loops.

Zhang et al., 2019, "P2SGrad: Refined Gradients for Optimizing Deep Face Models", arXiv:1905.02479; Wang and
Yamagishi, 2021, arXiv:2103.11326: the mean over samples ``i`` and classes ``j`` of
``(cos(x_i, w_j) - [j = y_i])^2``, with ``w_j`` the ``j``-th class weight.
"""

from __future__ import annotations

__all__ = ["p2s_grad_loss"]

Matrix = list[list[float]]


def p2s_grad_loss(cos: Matrix, labels: list[int]) -> float:
    """From the (sample x class) cosine matrix ``cos``."""
    total, count = 0.0, 0
    for i, row in enumerate(cos):
        for j, c in enumerate(row):
            c = min(1.0, max(-1.0, c))
            total += (c - (1.0 if j == labels[i] else 0.0)) ** 2
            count += 1
    return total / count
