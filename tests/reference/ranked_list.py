"""Naive float64 oracle for the ranked list loss, written with plain Python loops.

Wang et al., 2019, arXiv:1903.03238: for a query, the violating positives have ``d > alpha - margin`` and the
violating negatives ``d < alpha``. ``L_P = sum w_p (d - (alpha - margin)) / sum w_p`` with
``w_p = exp(Tp (d - (alpha - margin)))`` and ``L_N = sum w_n (alpha - d) / sum w_n`` with
``w_n = exp(Tn (alpha - d))``, each 0 without violating pairs; the query's loss is
``(1 - imbalance) L_P + imbalance L_N`` and the loss is the mean over all queries.
``denominator_eps`` adds that much per reference element to each denominator (pytorch-metric-learning's
guard), so tests can show that it is the only difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tests.reference.triplet import LP, DistanceSpec, distance_matrix, to_lists

__all__ = ["ranked_list_values", "ranked_list_loss"]


def ranked_list_values(
    embeddings: object,
    labels: object,
    margin: float,
    Tn: float,  # noqa: N803
    imbalance: float = 0.5,
    alpha: float | None = None,
    Tp: float = 0.0,  # noqa: N803
    spec: DistanceSpec = LP,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    pairs: Sequence[Sequence[int]] | None = None,
    denominator_eps: float = 0.0,
) -> list[float]:
    alpha = 1 + margin / 2 if alpha is None else alpha
    emb = to_lists(embeddings)
    same_set = ref_emb is None
    ref = emb if same_set else to_lists(ref_emb)
    dist = distance_matrix(emb, ref, spec)
    out = []
    for q in range(len(emb)):
        if pairs is not None:
            positives = {int(p) for a, p in zip(pairs[0], pairs[1], strict=True) if int(a) == q}
            negatives = {int(n) for a, n in zip(pairs[2], pairs[3], strict=True) if int(a) == q}
        else:
            lab = to_lists(labels)
            ref_lab = lab if same_set else to_lists(ref_labels)
            positives = {j for j in range(len(ref)) if ref_lab[j] == lab[q] and not (same_set and j == q)}
            negatives = {j for j in range(len(ref)) if ref_lab[j] != lab[q]}
        num_p = den_p = num_n = den_n = 0.0
        for j in range(len(ref)):
            d = dist[q][j]
            if j in positives and d > alpha - margin:
                w = math.exp(Tp * (d - (alpha - margin)))
                num_p += w * (d - (alpha - margin))
                den_p += w
            if j in negatives and d < alpha:
                w = math.exp(Tn * (alpha - d))
                num_n += w * (alpha - d)
                den_n += w
        den_p += denominator_eps * len(ref)
        den_n += denominator_eps * len(ref)
        loss_p = num_p / den_p if den_p > 0 else 0.0
        loss_n = num_n / den_n if den_n > 0 else 0.0
        out.append((1 - imbalance) * loss_p + imbalance * loss_n)
    return out


def ranked_list_loss(*args: object, **kwargs: object) -> float:
    values = ranked_list_values(*args, **kwargs)  # type: ignore[arg-type]
    return sum(values) / len(values) if values else 0.0
