"""Naive float64 oracle for VICReg, written with plain Python loops.

Bardes, Ponce and LeCun, 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", arXiv:2105.04906, section 3:

- ``s(Z, Z')``: mean squared distance of paired rows; the authors' code (``F.mse_loss``) also averages over
  the d dimensions, which is what is computed here;
- ``v(Z) = 1/d sum_j max(0, gamma - S(z^j, eps))`` with ``S(x, eps) = sqrt(Var(x) + eps)`` (unbiased
  variance) and ``gamma = 1``; each view's term is halved in the authors' code;
- ``c(Z) = 1/d sum_{i != j} C(Z)_{ij}^2`` with ``C(Z)`` the unbiased covariance matrix;
- ``L = lambda s + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))``.
"""

from __future__ import annotations

import math

__all__ = ["invariance", "variance", "covariance", "vicreg_loss"]


def _rows(x: object) -> list[list[float]]:
    tolist = getattr(x, "tolist", None)
    data = tolist() if tolist is not None else x
    return [[float(c) for c in row] for row in data]  # type: ignore[union-attr]


def invariance(z1: list[list[float]], z2: list[list[float]]) -> float:
    n, d = len(z1), len(z1[0])
    total = 0.0
    for i in range(n):
        for j in range(d):
            total += (z1[i][j] - z2[i][j]) ** 2
    return total / (n * d)


def variance(z: list[list[float]], eps: float) -> float:
    """``mean_j max(0, 1 - sqrt(Var_j + eps))`` (not yet halved)."""
    n, d = len(z), len(z[0])
    total = 0.0
    for j in range(d):
        mean = sum(z[i][j] for i in range(n)) / n
        var = sum((z[i][j] - mean) ** 2 for i in range(n)) / (n - 1)
        total += max(0.0, 1.0 - math.sqrt(var + eps))
    return total / d


def covariance(z: list[list[float]]) -> float:
    n, d = len(z), len(z[0])
    means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
    total = 0.0
    for j in range(d):
        for k in range(d):
            if j == k:
                continue
            cov = sum((z[i][j] - means[j]) * (z[i][k] - means[k]) for i in range(n)) / (n - 1)
            total += cov * cov
    return total / d


def vicreg_loss(
    z1: object,
    z2: object,
    invariance_lambda: float = 25,
    variance_mu: float = 25,
    covariance_v: float = 1,
    eps: float = 1e-4,
) -> float:
    a, b = _rows(z1), _rows(z2)
    return (
        invariance_lambda * invariance(a, b)
        + variance_mu * (variance(a, eps) + variance(b, eps)) / 2
        + covariance_v * (covariance(a) + covariance(b))
    )
