"""Naive float64 oracles for the alignment and uniformity losses, with plain Python loops.

Wang and Isola, 2020, "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
Hypersphere", arXiv:2005.10242, section 4.1::

    L_align(f; alpha) = E_{(x, y) ~ p_pos} ||f(x) - f(y)||_2^alpha
    L_uniform(f; t) = log E_{x, y ~ p_data, i.i.d.} exp(-t ||f(x) - f(y)||_2^2)

with ``f`` L2-normalised. The expectations over a batch are means over its positive pairs (alignment) and over
its pairs of distinct elements (uniformity; every query-reference pair with a separate reference set).
"""

from __future__ import annotations

import math

__all__ = ["euclidean", "normalized", "alignment_loss", "uniformity_loss"]

Row = list[float]


def normalized(row: Row) -> Row:
    norm = math.sqrt(sum(v * v for v in row))
    return [v / max(norm, 1e-12) for v in row]


def euclidean(x: Row, y: Row) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(x, y, strict=True)))


def alignment_loss(
    query: list[Row], ref: list[Row], pairs: list[tuple[int, int]], alpha: float = 2.0, normalize: bool = True
) -> float:
    """Mean of ``||f(x_a) - f(y_p)||^alpha`` over the listed positive pairs (repeats count); 0 without pairs."""
    if normalize:
        query, ref = [normalized(r) for r in query], [normalized(r) for r in ref]
    if not pairs:
        return 0.0
    return sum(euclidean(query[a], ref[p]) ** alpha for a, p in pairs) / len(pairs)


def uniformity_loss(query: list[Row], ref: list[Row] | None = None, t: float = 2.0, normalize: bool = True) -> float:
    """``log`` of the mean of ``exp(-t ||f(x) - f(y)||^2)`` over the pairs; ``ref=None``: distinct pairs of ``query``.

    Returns 0 when there is no pair.
    """
    same_set = ref is None
    ref = query if ref is None else ref
    if normalize:
        query, ref = [normalized(r) for r in query], [normalized(r) for r in ref]
    total, count = 0.0, 0
    for i, x in enumerate(query):
        for j, y in enumerate(ref):
            if same_set and i == j:
                continue
            total += math.exp(-t * euclidean(x, y) ** 2)
            count += 1
    return math.log(total / count) if count else 0.0
