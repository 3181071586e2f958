"""Naive float64 oracles for AccuracyCalculator's metrics, written with plain Python loops.

Each query has a ranked list of neighbour labels (nearest first, self excluded) and ``R`` = the number of
matching references. With ``limit`` = the list length the metrics read (pytorch-metric-learning's ``k``):

* precision@1 = ``rel_1``;  R-precision = ``(1 / min(R, limit)) * sum_{i <= min(R, limit)} rel_i``
* MAP@R = ``(1 / R) * sum_{i <= min(R, limit)} rel_i * P(i)``;  MAP = ``(1 / R) * sum_{i <= limit} rel_i * P(i)``
* MRR = ``1 / (rank of the first relevant neighbour within limit)``, 0 if none
* precision@k = ``(1 / k) * sum_{i <= k} rel_i``;  recall@k = 1 if any of the first k is relevant

Queries with ``R = 0`` are left out; values are averaged over queries, or per class then over classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["per_query", "aggregate", "ranked_labels"]


def ranked_labels(
    query: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    reference_labels: Sequence[int],
    ref_includes_query: bool,
) -> list[list[int]]:
    """Labels of every other reference by ascending Euclidean distance, ties by index."""
    out = []
    for i, q in enumerate(query):
        scored = []
        for j, r in enumerate(reference):
            if ref_includes_query and i == j:
                continue
            scored.append((math.sqrt(sum((a - b) ** 2 for a, b in zip(q, r, strict=True))), j))
        scored.sort()
        out.append([reference_labels[j] for _, j in scored])
    return out


def per_query(
    ranked: Sequence[int], label: int, num_relevant: int, limit: int, match: Callable[[int, int], bool] | None = None
) -> dict[str, float]:
    same = [bool(match(label, x)) if match else x == label for x in ranked[:limit]]
    r_lim = min(num_relevant, limit)
    hits, ap_r, ap = 0, 0.0, 0.0
    first = 0
    for i, s in enumerate(same):
        if s:
            hits += 1
            ap += hits / (i + 1)
            if i < r_lim:
                ap_r += hits / (i + 1)
            if not first:
                first = i + 1
    return {
        "precision_at_1": float(same[0]),
        "r_precision": sum(same[:r_lim]) / r_lim,
        "mean_average_precision_at_r": ap_r / num_relevant,
        "mean_average_precision": ap / num_relevant,
        "mean_reciprocal_rank": 1 / first if first else 0.0,
    }


def aggregate(values: Sequence[float], labels: Sequence[int], mode: str = "mean") -> float | list[float]:
    """``mean`` over queries, ``avg_of_avgs``, or ``per_class`` (sorted by label)."""
    if mode == "mean":
        return sum(values) / len(values)
    classes = sorted(set(labels))
    per_class = []
    for c in classes:
        chosen = [v for v, y in zip(values, labels, strict=True) if y == c]
        per_class.append(sum(chosen) / len(chosen))
    return per_class if mode == "per_class" else sum(per_class) / len(per_class)
