"""Naive float64 oracles of an embedding index's searches, with plain Python loops.

Rows and queries are lists of lists of floats, ids a list of ints. Nearest first: ascending Euclidean
distance for ``"l2"``, descending score for ``"cosine"`` and ``"inner_product"``; equal values by ascending
id. Missing neighbours are ``(inf or -inf, -1)``.
"""

from __future__ import annotations

import math

__all__ = ["value", "top_k", "within_radius"]


def value(q: list[float], r: list[float], metric: str) -> float:
    """Euclidean distance, cosine similarity or dot product of two rows."""
    if metric == "l2":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(q, r, strict=True)))
    dot = sum(a * b for a, b in zip(q, r, strict=True))
    if metric == "inner_product":
        return dot
    nq = max(math.sqrt(sum(a * a for a in q)), 1e-12)
    nr = max(math.sqrt(sum(b * b for b in r)), 1e-12)
    return dot / (nq * nr)


def _ranked(q: list[float], rows: list[list[float]], ids: list[int], metric: str) -> list[tuple[float, int]]:
    pairs = [(value(q, r, metric), i) for r, i in zip(rows, ids, strict=True)]
    sign = 1.0 if metric == "l2" else -1.0
    return sorted(pairs, key=lambda p: (sign * p[0], p[1]))


def top_k(
    queries: list[list[float]], rows: list[list[float]], ids: list[int], k: int, metric: str
) -> tuple[list[list[float]], list[list[int]]]:
    """(values, ids) of the k nearest rows of each query, padded past len(rows)."""
    missing = math.inf if metric == "l2" else -math.inf
    values_out, ids_out = [], []
    for q in queries:
        best = _ranked(q, rows, ids, metric)[:k]
        best += [(missing, -1)] * (k - len(best))
        values_out.append([v for v, _ in best])
        ids_out.append([i for _, i in best])
    return values_out, ids_out


def within_radius(
    queries: list[list[float]], rows: list[list[float]], ids: list[int], radius: float, metric: str
) -> list[list[tuple[float, int]]]:
    """Per query, the (value, id) of every row at distance <= radius (l2) or with score >= radius."""
    out = []
    for q in queries:
        ranked = _ranked(q, rows, ids, metric)
        out.append([(v, i) for v, i in ranked if (v <= radius if metric == "l2" else v >= radius)])
    return out
