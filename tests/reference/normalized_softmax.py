"""Naive float64 oracle of the normalized softmax loss, plain Python loops.

Zhai & Wu, 2018, arXiv:1811.12649: logits ``s(x_i, w_j / ||w_j||) / T`` for a similarity ``s`` (cosine by
default), ``-d(x_i, w_j / ||w_j||) / T`` for a distance ``d``.
"""

from __future__ import annotations

from collections.abc import Callable

from .distances import normalize_rows
from .margin_softmax import class_rows, cross_entropy

__all__ = ["normalized_softmax_values"]

Matrix = list[list[float]]


def normalized_softmax_values(
    emb: Matrix,
    labels: list[int],
    weights: Matrix,
    temperature: float,
    matrix: Callable[[Matrix, Matrix], Matrix],
    higher_is_closer: bool = True,
) -> list[float]:
    """``matrix(emb, unit class rows)`` is the distance's oracle (e.g. ``distances.cosine_matrix``)."""
    mat = matrix(emb, normalize_rows(class_rows(weights)))
    sign = 1.0 if higher_is_closer else -1.0
    return [cross_entropy([sign * v / temperature for v in row], labels[i]) for i, row in enumerate(mat)]
