"""Naive float64 oracle for the dynamic soft margin loss, written with plain Python loops.

Zhang and Rusinkiewicz, 2019, "Learning Local Descriptors with a CDF-Based Dynamic Soft Margin" (ICCV): each
triplet's ``x = d(a, p) - d(a, n)`` is weighted by the running CDF of ``x``; the loss is ``mean F(x) x``. The
running histogram has nodes ``min_val + k * delta`` (``k = 0..num_bins``, ``delta = 2 |min_val| / num_bins``), a
value sharing its mass linearly between its two nodes (clamped to the range); each batch's histogram is
normalised and averaged in with ``momentum`` (the first batch is taken as is). ``F(x)`` is the cumulative
histogram at the node just below ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.triplet import LP, all_triplets, distance_matrix, to_lists

__all__ = ["RunningCDF", "triplet_differences", "matching_pair_differences"]


class RunningCDF:
    """The loss's state: feed it each batch's differences with :meth:`loss`."""

    def __init__(self, min_val: float = -2.0, num_bins: int = 10, momentum: float = 0.01) -> None:
        self.min_val = min_val
        self.num_bins = num_bins
        self.delta = 2 * abs(min_val) / num_bins
        self.momentum = momentum
        self.hist = [0.0] * (num_bins + 1)

    def _node(self, x: float) -> tuple[int, float]:
        pos = min(max((x - self.min_val) / self.delta, 0.0), float(self.num_bins))
        low = min(math.floor(pos), self.num_bins - 1)
        return low, pos - low

    def loss(self, xs: Sequence[float]) -> float:
        if not xs:
            return 0.0
        batch = [0.0] * (self.num_bins + 1)
        for x in xs:
            low, frac = self._node(x)
            batch[low] += 1 - frac
            batch[low + 1] += frac
        total = sum(batch)
        momentum = self.momentum if sum(self.hist) != 0 else 1.0
        self.hist = [(1 - momentum) * h + momentum * b / total for h, b in zip(self.hist, batch, strict=True)]
        norm = sum(self.hist)
        cdf, running = [], 0.0
        for h in self.hist:
            running += h / norm
            cdf.append(running)
        return sum(cdf[self._node(x)[0]] * x for x in xs) / len(xs)


def triplet_differences(
    embeddings: object,
    labels: object,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    triplets: Sequence[tuple[int, int, int]] | None = None,
) -> list[float]:
    emb = to_lists(embeddings)
    ref = emb if ref_emb is None else to_lists(ref_emb)
    if triplets is None:
        triplets = all_triplets(to_lists(labels), None if ref_emb is None else to_lists(ref_labels))
    dist = distance_matrix(emb, ref, LP)
    return [dist[a][p] - dist[a][n] for a, p, n in triplets]


def matching_pair_differences(embeddings: object, ref_emb: object) -> list[float]:
    """``d(i, i)`` minus the closest non-matching ``d(i, j)`` or ``d(j, i)``."""
    emb, ref = to_lists(embeddings), to_lists(ref_emb)
    dist = distance_matrix(emb, ref, LP)
    n = len(emb)
    out = []
    for i in range(n):
        others = [dist[i][j] for j in range(n) if j != i] + [dist[j][i] for j in range(n) if j != i]
        out.append(dist[i][i] - min(others))
    return out
