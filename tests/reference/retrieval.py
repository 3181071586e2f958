"""Naive float64 oracles for k-nearest-neighbour search and retrieval metrics, written with plain Python loops.

Definitions (Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check", arXiv:2003.08505):
for a query with label ``y``, ``R`` is the number of references labelled ``y`` other than the query itself;
``rel_i = 1`` when the ``i``-th nearest reference is labelled ``y``;

* precision@1 = ``rel_1``
* R-precision = ``(1 / R) * sum_{i <= R} rel_i``
* MAP@R = ``(1 / R) * sum_{i <= R} rel_i * P(i)`` with ``P(i) = (1 / i) * sum_{j <= i} rel_j``

averaged over the queries with ``R >= 1``. Neighbours are ordered nearest first, ties by ascending reference
index. Nothing here uses torch: inputs are nested lists of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "measure",
    "knn",
    "count_relevant",
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "retrieval_metrics",
]


def measure(q: Sequence[float], r: Sequence[float], distance: str) -> float:
    """Euclidean distance, cosine similarity or inner product of two vectors."""
    if distance == "euclidean":
        return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(q, r, strict=True)))
    dot = sum(float(a) * float(b) for a, b in zip(q, r, strict=True))
    if distance == "inner_product":
        return dot
    norm_q = math.sqrt(sum(float(a) ** 2 for a in q))
    norm_r = math.sqrt(sum(float(b) ** 2 for b in r))
    return dot / (max(norm_q, 1e-12) * max(norm_r, 1e-12))


def knn(
    query: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    k: int,
    ref_includes_query: bool,
    distance: str = "euclidean",
) -> tuple[list[list[float]], list[list[int]]]:
    """The k nearest references of each query (own row ``i`` excluded when ``ref_includes_query``)."""
    higher_is_closer = distance != "euclidean"
    all_values, all_indices = [], []
    for i, q in enumerate(query):
        scored = []
        for j, r in enumerate(reference):
            if ref_includes_query and j == i:
                continue
            value = measure(q, r, distance)
            scored.append((-value if higher_is_closer else value, j, value))
        scored.sort(key=lambda item: (item[0], item[1]))
        all_values.append([value for _, _, value in scored[:k]])
        all_indices.append([j for _, j, _ in scored[:k]])
    return all_values, all_indices


def count_relevant(query_labels: Sequence[int], reference_labels: Sequence[int], ref_includes_query: bool) -> list[int]:
    counts = []
    for y in query_labels:
        count = sum(1 for z in reference_labels if z == y)
        counts.append(count - 1 if ref_includes_query else count)
    return counts


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def precision_at_1(
    knn_labels: Sequence[Sequence[int]], query_labels: Sequence[int], num_relevant: Sequence[int]
) -> float:
    return _mean(
        [1.0 if row[0] == y else 0.0 for row, y, r in zip(knn_labels, query_labels, num_relevant, strict=True) if r > 0]
    )


def r_precision(knn_labels: Sequence[Sequence[int]], query_labels: Sequence[int], num_relevant: Sequence[int]) -> float:
    per_query = []
    for row, y, r in zip(knn_labels, query_labels, num_relevant, strict=True):
        if r > 0:
            per_query.append(sum(1 for i in range(r) if row[i] == y) / r)
    return _mean(per_query)


def mean_average_precision_at_r(
    knn_labels: Sequence[Sequence[int]], query_labels: Sequence[int], num_relevant: Sequence[int]
) -> float:
    per_query = []
    for row, y, r in zip(knn_labels, query_labels, num_relevant, strict=True):
        if r == 0:
            continue
        hits, total = 0, 0.0
        for i in range(r):
            if row[i] == y:
                hits += 1
                total += hits / (i + 1)
        per_query.append(total / r)
    return _mean(per_query)


def retrieval_metrics(
    query: Sequence[Sequence[float]],
    query_labels: Sequence[int],
    reference: Sequence[Sequence[float]],
    reference_labels: Sequence[int],
    ref_includes_query: bool,
    distance: str = "euclidean",
) -> dict[str, float]:
    num_relevant = count_relevant(query_labels, reference_labels, ref_includes_query)
    k = max(max(num_relevant, default=0), 1)
    _, indices = knn(query, reference, k, ref_includes_query, distance)
    knn_labels = [[reference_labels[j] for j in row] for row in indices]
    return {
        "precision_at_1": precision_at_1(knn_labels, query_labels, num_relevant),
        "r_precision": r_precision(knn_labels, query_labels, num_relevant),
        "mean_average_precision_at_r": mean_average_precision_at_r(knn_labels, query_labels, num_relevant),
    }
