"""Naive float64 oracle for Barlow Twins, written with plain Python loops.

Zbontar, Jing, Misra, LeCun and Deny, 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
arXiv:2103.03230, Eq. 1-2:

- each view is mean-centred per dimension over the batch and divided by ``sqrt(var + eps)`` (biased variance,
  as BatchNorm1d in the authors' code; with eps = 0 this is Eq. 2's normalisation);
- ``C_ij = 1/n sum_b zA_bi zB_bj``;
- ``L = scale * (sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2)``.
"""

from __future__ import annotations

import math

__all__ = ["standardise", "cross_correlation", "barlow_twins_loss"]


def _rows(x: object) -> list[list[float]]:
    tolist = getattr(x, "tolist", None)
    data = tolist() if tolist is not None else x
    return [[float(c) for c in row] for row in data]  # type: ignore[union-attr]


def standardise(z: list[list[float]], eps: float) -> list[list[float]]:
    n, d = len(z), len(z[0])
    out = [[0.0] * d for _ in range(n)]
    for j in range(d):
        mean = sum(z[b][j] for b in range(n)) / n
        var = sum((z[b][j] - mean) ** 2 for b in range(n)) / n
        std = math.sqrt(var + eps)
        for b in range(n):
            out[b][j] = (z[b][j] - mean) / std
    return out


def cross_correlation(z_a: object, z_b: object, eps: float = 1e-5) -> list[list[float]]:
    a, b = standardise(_rows(z_a), eps), standardise(_rows(z_b), eps)
    n, d = len(a), len(a[0])
    c = [[0.0] * d for _ in range(d)]
    for i in range(d):
        for j in range(d):
            c[i][j] = sum(a[s][i] * b[s][j] for s in range(n)) / n
    return c


def barlow_twins_loss(
    z_a: object, z_b: object, lambd: float = 5e-3, eps: float = 1e-5, scale_loss: float = 1.0
) -> tuple[float, float]:
    """``(invariance, redundancy)``: the two sums, already multiplied by ``scale_loss`` (and ``lambd``)."""
    c = cross_correlation(z_a, z_b, eps)
    d = len(c)
    on = 0.0
    off = 0.0
    for i in range(d):
        for j in range(d):
            if i == j:
                on += (1.0 - c[i][i]) ** 2
            else:
                off += c[i][j] ** 2
    return scale_loss * on, scale_loss * lambd * off
