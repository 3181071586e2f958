"""Naive float64 oracles for the distances, written from their definitions with plain Python loops.

Every oracle takes the query and reference sets as lists of rows (lists of floats) and returns the full
``len(query) x len(ref)`` matrix as a list of rows of Python floats.
"""

from __future__ import annotations

import math

__all__ = [
    "norm",
    "normalize_rows",
    "lp_matrix",
    "dot_matrix",
    "cosine_matrix",
    "snr_matrix",
    "variance",
]

Matrix = list[list[float]]


def norm(row: list[float], p: float) -> float:
    if math.isinf(p):
        return max(abs(v) for v in row)
    total = 0.0
    for v in row:
        total += abs(v) ** p
    return total ** (1.0 / p)


def normalize_rows(x: Matrix, p: float = 2) -> Matrix:
    """Each row divided by its L_p norm (torch's ``normalize`` clamps the norm at 1e-12)."""
    out = []
    for row in x:
        n = max(norm(row, p), 1e-12)
        out.append([v / n for v in row])
    return out


def lp_matrix(query: Matrix, ref: Matrix, p: float = 2, power: float = 1, normalize: bool = True) -> Matrix:
    """``||q_i - r_j||_p ** power``, after L_p-normalising every row when ``normalize``."""
    if normalize:
        query, ref = normalize_rows(query, p), normalize_rows(ref, p)
    out = []
    for q in query:
        row = []
        for r in ref:
            diff = [a - b for a, b in zip(q, r, strict=True)]
            row.append(norm(diff, p) ** power)
        out.append(row)
    return out


def dot_matrix(query: Matrix, ref: Matrix, power: float = 1, normalize: bool = True) -> Matrix:
    """``(q_i . r_j) ** power``, after L2-normalising every row when ``normalize``."""
    if normalize:
        query, ref = normalize_rows(query), normalize_rows(ref)
    out = []
    for q in query:
        row = []
        for r in ref:
            total = 0.0
            for a, b in zip(q, r, strict=True):
                total += a * b
            row.append(total**power)
        out.append(row)
    return out


def cosine_matrix(query: Matrix, ref: Matrix) -> Matrix:
    """``q_i . r_j / (||q_i|| ||r_j||)``."""
    out = []
    for q in query:
        row = []
        for r in ref:
            total = 0.0
            for a, b in zip(q, r, strict=True):
                total += a * b
            row.append(total / (norm(q, 2) * norm(r, 2)))
        out.append(row)
    return out


def variance(row: list[float]) -> float:
    """Unbiased sample variance (divisor ``len(row) - 1``)."""
    mu = sum(row) / len(row)
    return sum((v - mu) ** 2 for v in row) / (len(row) - 1)


def snr_matrix(query: Matrix, ref: Matrix, power: float = 1, normalize: bool = True, p: float = 2) -> Matrix:
    """Yuan et al. (2019): ``Var(r_j - q_i) / Var(q_i)``, raised to ``power``."""
    if normalize:
        query, ref = normalize_rows(query, p), normalize_rows(ref, p)
    out = []
    for q in query:
        row = []
        for r in ref:
            noise = [b - a for a, b in zip(q, r, strict=True)]
            row.append((variance(noise) / variance(q)) ** power)
        out.append(row)
    return out
