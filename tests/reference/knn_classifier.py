"""Plain-loop float64 oracle for k-nearest-neighbour classification with uniform or distance-weighted votes.

Neighbours are the ``k`` training points with the smallest distance, equal distances ordered by training
index. Votes are 1 each (uniform) or ``1 / distance``; when some neighbours are at distance exactly 0, only
they vote, with weight 1 each. Probabilities are the votes divided by their sum, per class in sorted label
order. Inputs are nested lists of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["distance", "predict_proba"]


def distance(a: Sequence[float], b: Sequence[float], metric: str) -> float:
    """Euclidean distance, or cosine distance ``1 - cos`` (0 for identical directions)."""
    if metric == "euclidean":
        return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True)))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    ua = [float(x) / na for x in a]
    ub = [float(y) / nb for y in b]
    if ua == ub:
        return 0.0
    return max(0.0, 1.0 - sum(x * y for x, y in zip(ua, ub, strict=True)))


def predict_proba(
    train: Sequence[Sequence[float]],
    labels: Sequence[Hashable],
    queries: Sequence[Sequence[float]],
    k: int,
    weights: str = "uniform",
    metric: str = "euclidean",
) -> tuple[list, list[list[float]]]:
    """(sorted classes, one probability row per query)."""
    classes = sorted(set(labels))
    rows = []
    for q in queries:
        scored = sorted((distance(q, x, metric), i) for i, x in enumerate(train))[:k]
        exact = [i for d, i in scored if d == 0.0]
        votes = dict.fromkeys(classes, 0.0)
        if weights == "distance" and exact:
            for i in exact:
                votes[labels[i]] += 1.0
        else:
            for d, i in scored:
                votes[labels[i]] += 1.0 if weights == "uniform" else 1.0 / d
        total = sum(votes.values())
        rows.append([votes[c] / total for c in classes])
    return classes, rows
