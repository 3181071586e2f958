"""Naive float64 oracle for the tuplet margin loss, with plain Python loops.

Yu and Tao, 2019, "Deep Metric Learning with Tuplet Margin Loss", ICCV, arXiv:1910.04793, eq. (5): for a
positive pair ``(a, p)`` at angle ``theta_ap = arccos(cos_ap)`` and the negatives ``n`` of ``a`` (listed
negative pairs; one listed twice counts twice)::

    log(1 + sum_n exp(s (cos_an - cos(theta_ap - beta))))

with the margin ``beta`` in degrees converted to radians.
"""

from __future__ import annotations

import math

__all__ = ["tuplet_margin_values", "tuplet_margin_loss"]

Matrix = list[list[float]]


def tuplet_margin_values(
    cosines: Matrix,
    positive_pairs: list[tuple[int, int]],
    negative_pairs: list[tuple[int, int]],
    margin_degrees: float,
    scale: float,
) -> list[float]:
    beta = margin_degrees * math.pi / 180.0
    values = []
    for a, p in positive_pairs:
        theta = math.acos(max(-1.0, min(1.0, cosines[a][p])))
        target = math.cos(theta - beta)
        xs = [scale * (cosines[b][n] - target) for b, n in negative_pairs if b == a]
        top = max([0.0, *xs])
        values.append(top + math.log(math.exp(-top) + sum(math.exp(x - top) for x in xs)))
    return values


def tuplet_margin_loss(
    cosines: Matrix,
    positive_pairs: list[tuple[int, int]],
    negative_pairs: list[tuple[int, int]],
    margin_degrees: float = 5.73,
    scale: float = 64.0,
) -> float:
    values = tuplet_margin_values(cosines, positive_pairs, negative_pairs, margin_degrees, scale)
    return sum(values) / len(values) if values else 0.0
