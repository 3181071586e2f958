"""Naive float64 oracle for the histogram loss, written with plain Python loops.

Ustinova and Lempitsky, 2016, arXiv:1611.00822: the similarities of the positive pairs (and of the negative
pairs) are binned into a histogram over the nodes ``t_r = -1 + r * delta`` by linear interpolation, weight
``max(0, 1 - |s - t_r| / delta)`` at each node, divided by the number of pairs. The loss
``sum_r h-_r sum_{q <= r} h+_q`` estimates the probability that a negative pair is more similar than a positive.
The pairs are those of the triplets, each unordered pair once.

``pml_float32=True`` reproduces pytorch-metric-learning's arithmetic, which finds each similarity's bin
``r = floor((s + 1) / delta)``, the node positions ``r * delta`` and ``(r + 1) * delta - 1`` in float32, so tests
can show that this is the only difference from the float64 definition.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from tests.reference.triplet import COSINE, all_triplets, distance_matrix, to_lists

__all__ = ["triplet_pairs", "histogram_loss"]


def triplet_pairs(
    triplets: Sequence[tuple[int, int, int]], unordered: bool = True
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The distinct (a, p) and (a, n) pairs of the triplets, sorted within a pair when ``unordered``."""

    def key(x: int, y: int) -> tuple[int, int]:
        return (min(x, y), max(x, y)) if unordered else (x, y)

    return sorted({key(a, p) for a, p, _ in triplets}), sorted({key(a, n) for a, _, n in triplets})


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _histogram(values: Sequence[float], delta: float, num_nodes: int, pml_float32: bool = False) -> list[float]:
    hist = [0.0] * num_nodes
    for s in values:
        if pml_float32:
            r = math.floor(_f32(_f32(_f32(s) + 1.0) / _f32(delta)))
            hist[r + 1] += (s + 1 - _f32(_f32(r) * _f32(delta))) / delta
            hist[r] += (_f32(_f32(_f32(r + 1) * _f32(delta)) - 1.0) - s) / delta
            continue
        for r in range(num_nodes):
            hist[r] += max(0.0, 1.0 - abs(s - (-1.0 + r * delta)) / delta)
    return [h / len(values) for h in hist]


def histogram_loss(
    embeddings: object,
    labels: object | None,
    delta: float = 0.02,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    triplets: Sequence[tuple[int, int, int]] | None = None,
    pml_float32: bool = False,
) -> float:
    emb = to_lists(embeddings)
    same_set = ref_emb is None
    ref = emb if same_set else to_lists(ref_emb)
    if triplets is None:
        triplets = all_triplets(to_lists(labels), None if same_set else to_lists(ref_labels))
    pos, neg = triplet_pairs(triplets, unordered=same_set)
    if not pos or not neg:
        return 0.0
    sims = distance_matrix(emb, ref, COSINE)
    num_nodes = round(1 + 2 / delta)
    h_pos = _histogram([sims[i][j] for i, j in pos], delta, num_nodes, pml_float32)
    h_neg = _histogram([sims[i][j] for i, j in neg], delta, num_nodes, pml_float32)
    loss = cdf = 0.0
    for r in range(num_nodes):
        cdf += h_pos[r]
        loss += h_neg[r] * cdf
    return loss
