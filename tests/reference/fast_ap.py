"""Naive float64 oracle for FastAP, written with plain Python loops.

Cakir, He, Xia, Kulis and Sclaroff, 2019, "Deep Metric Learning to Rank" (CVPR): for a query, the distances to
the retrieval set are soft-binned with a triangular kernel ``max(0, 1 - |d - z_l| / delta)`` at the nodes
``z_l = l * delta``, ``l = 0..L``; with ``h+`` the positives' histogram, ``H+`` its cumulative sum and ``H`` the
cumulative histogram of every retrieved item, ``FastAP = sum_l h+_l H+_l / H_l / N+``. The loss of a query is
``1 - FastAP``; the loss is their mean over queries with a positive (optionally weighted per query).
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.reference.triplet import DistanceSpec, distance_matrix, to_lists

__all__ = ["fast_ap_values", "fast_ap_loss", "miner_weights"]


def fast_ap_values(
    embeddings: object,
    labels: object,
    num_bins: int = 10,
    power: float = 2.0,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
) -> dict[int, float]:
    """``{query: 1 - FastAP}`` for every query with at least one positive."""
    emb = to_lists(embeddings)
    lab = to_lists(labels)
    same_set = ref_emb is None
    ref = emb if same_set else to_lists(ref_emb)
    ref_lab = lab if same_set else to_lists(ref_labels)
    dist = distance_matrix(emb, ref, DistanceSpec("lp", power=power))
    top = 2.0**power
    delta = top / num_bins
    nodes = [l * delta for l in range(num_bins + 1)]
    out = {}
    for q in range(len(emb)):
        h_pos = [0.0] * len(nodes)
        h_all = [0.0] * len(nodes)
        num_pos = 0
        for j in range(len(ref)):
            if same_set and j == q:
                continue
            is_pos = ref_lab[j] == lab[q]
            num_pos += is_pos
            for l, z in enumerate(nodes):
                w = max(0.0, 1.0 - abs(dist[q][j] - z) / delta)
                h_all[l] += w
                if is_pos:
                    h_pos[l] += w
        if num_pos == 0:
            continue
        cum_pos = cum_all = total = 0.0
        for l in range(len(nodes)):
            cum_pos += h_pos[l]
            cum_all += h_all[l]
            if h_pos[l] > 0:
                total += h_pos[l] * cum_pos / cum_all
        out[q] = 1.0 - total / num_pos
    return out


def miner_weights(indices_tuple: Sequence[Sequence[int]] | None, size: int, anchors_only: bool = False) -> list[float]:
    """How often each element occurs in the mined tuples over the largest count (all 1 when nothing is mined)."""
    if indices_tuple is None or all(len(t) == 0 for t in indices_tuple):
        return [1.0] * size
    if anchors_only:
        parts = [indices_tuple[0]] if len(indices_tuple) == 3 else [indices_tuple[0], indices_tuple[2]]
    else:
        parts = list(indices_tuple)
    counts = [0] * size
    for part in parts:
        for i in part:
            counts[int(i)] += 1
    top = max(counts)
    return [c / top for c in counts]


def fast_ap_loss(
    embeddings: object,
    labels: object,
    num_bins: int = 10,
    power: float = 2.0,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    weights: Sequence[float] | None = None,
) -> float:
    values = fast_ap_values(embeddings, labels, num_bins, power, ref_emb, ref_labels)
    if not values:
        return 0.0
    return sum(v * (1.0 if weights is None else weights[q]) for q, v in values.items()) / len(values)
