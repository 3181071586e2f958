"""Naive float64 oracle for the NT-Xent loss, with plain Python loops.

Chen, Kornblith, Norouzi and Hinton, 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR), arXiv:2002.05709, eq. (1), with the negatives of Sohn, 2016 (multi-class N-pair
loss): every listed positive pair ``(a, p)`` is scored against the listed negative pairs ``(a, n)`` of the
same anchor (a negative listed twice counts twice)::

    -log( exp(s_ap / T) / (exp(s_ap / T) + sum_n exp(s_an / T)) )

``s`` is the similarity; for a distance ``d`` (lower is closer) ``s = -d``.
"""

from __future__ import annotations

import math

__all__ = ["ntxent_values", "ntxent_loss"]

Matrix = list[list[float]]


def ntxent_values(
    mat: Matrix,
    positive_pairs: list[tuple[int, int]],
    negative_pairs: list[tuple[int, int]],
    temperature: float,
    higher_is_closer: bool = True,
) -> list[float]:
    """One value per listed positive pair, in the given order."""
    sign = 1.0 if higher_is_closer else -1.0
    values = []
    for a, p in positive_pairs:
        z = sign * mat[a][p] / temperature
        others = [sign * mat[b][n] / temperature for b, n in negative_pairs if b == a]
        top = max([z, *others])
        denominator = math.exp(z - top) + sum(math.exp(x - top) for x in others)
        values.append(-((z - top) - math.log(denominator)))
    return values


def ntxent_loss(
    mat: Matrix,
    positive_pairs: list[tuple[int, int]],
    negative_pairs: list[tuple[int, int]],
    temperature: float = 0.07,
    higher_is_closer: bool = True,
) -> float:
    """Mean over the positive pairs; 0 when there is none."""
    values = ntxent_values(mat, positive_pairs, negative_pairs, temperature, higher_is_closer)
    return sum(values) / len(values) if values else 0.0
