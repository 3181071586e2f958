"""Naive float64 oracle of the SphereFace (A-Softmax) loss, plain Python loops.

Liu et al., 2017, arXiv:1704.08063: the large-margin softmax with unit class weights, logits
``scale * ||x_i|| cos(theta_ij)`` and ``psi(theta) = (-1)^k cos(m theta) - 2k`` for the target class.
"""

from __future__ import annotations

from .large_margin_softmax import large_margin_softmax_values

__all__ = ["sphere_face_values"]

Matrix = list[list[float]]


def sphere_face_values(emb: Matrix, labels: list[int], weights: Matrix, m: int, scale: float) -> list[float]:
    return large_margin_softmax_values(emb, labels, weights, m, scale, weight_norms=False)
