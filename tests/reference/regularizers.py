"""Naive float64 oracles for the regularizers, written from the papers' formulas with plain Python loops.

Each oracle takes a matrix as a list of rows (lists of floats) and returns the un-reduced values, one per
row (or per pair of centres for the SoftTriple regularizer), as Python floats.
"""

from __future__ import annotations

import math

__all__ = [
    "lp_values",
    "zero_mean_values",
    "center_invariant_values",
    "regular_face_values",
    "sparse_centers_values",
    "sparse_centers_pairs",
    "mean",
]

Matrix = list[list[float]]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _norm(row: list[float], p: float) -> float:
    if math.isinf(p):
        return max(abs(v) for v in row)
    return sum(abs(v) ** p for v in row) ** (1.0 / p)


def _dot(a: list[float], b: list[float]) -> float:
    total = 0.0
    for u, v in zip(a, b, strict=True):
        total += u * v
    return total


def _cosine(a: list[float], b: list[float]) -> float:
    return _dot(a, b) / (_norm(a, 2) * _norm(b, 2))


def lp_values(x: Matrix, p: float = 2, power: float = 1) -> list[float]:
    """``||x_i||_p ** power`` for each row."""
    return [_norm(row, p) ** power for row in x]


def zero_mean_values(x: Matrix) -> list[float]:
    """``|sum_j x_ij|`` for each row (Yuan et al., 2019)."""
    out = []
    for row in x:
        total = 0.0
        for v in row:
            total += v
        out.append(abs(total))
    return out


def center_invariant_values(x: Matrix, p: float = 2) -> list[float]:
    """``(||w_i||^2 - (1/m) sum_j ||w_j||^2)^2 / 4`` for each row (Wu et al., 2017)."""
    squared = [_norm(row, p) ** 2 for row in x]
    average = sum(squared) / len(squared)
    return [(s - average) ** 2 / 4 for s in squared]


def regular_face_values(x: Matrix, similarity: str = "cosine") -> list[float]:
    """``max_{j != i} s(w_i, w_j)`` for each row (Zhao et al., 2019); ``similarity`` is "cosine" or "dot"."""
    out = []
    for i, a in enumerate(x):
        best = -math.inf
        for j, b in enumerate(x):
            if i == j:
                continue
            s = _cosine(a, b) if similarity == "cosine" else _dot(a, b)
            best = max(best, s)
        out.append(best)
    return out


def sparse_centers_pairs(num_classes: int, centers_per_class: int) -> list[tuple[int, int]]:
    """The pairs ``(t, t')``, ``t < t'``, of centres of the same class, class by class."""
    pairs = []
    for c in range(num_classes):
        for t in range(centers_per_class):
            for u in range(t + 1, centers_per_class):
                pairs.append((c * centers_per_class + t, c * centers_per_class + u))
    return pairs


def sparse_centers_values(x: Matrix, num_classes: int, centers_per_class: int) -> tuple[list[float], float]:
    """SoftTriple's ``sqrt(2 - 2 cos(w_t, w_t'))`` per same-class pair, and the divisor ``C K (K - 1)``
    (Qian et al., 2019, arXiv:1909.05235)."""
    values = []
    for t, u in sparse_centers_pairs(num_classes, centers_per_class):
        values.append(math.sqrt(max(2.0 - 2.0 * _cosine(x[t], x[u]), 0.0)))
    return values, float(num_classes * centers_per_class * (centers_per_class - 1))
