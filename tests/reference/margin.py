"""Naive float64 oracle for the margin loss, written with plain Python loops.

Wu, Manmatha, Smola and Krähenbühl, 2017, "Sampling Matters in Deep Embedding Learning", arXiv:1706.07567,
eq. 4: a pair (i, j) costs ``max(0, margin + y_ij (D_ij - beta))`` with ``y_ij = +1`` for a positive pair and
``-1`` for a negative one, and the loss is the sum divided by the number of pairs with a non-zero cost; the
boundary ``beta`` may be learned (per class), with a penalty ``nu * beta``.

As in the library, pairs are taken from triplets (a, p, n): each triplet contributes its positive hinge and
its negative hinge, and the divisor counts the non-zero hinges over all triplets. For a similarity (higher
is closer) the signs flip: ``max(0, margin - (s_ij - beta))`` for positives, ``max(0, margin + s_ij - beta)``
for negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.reference.triplet import LP, DistanceSpec, all_triplets, distance_matrix, to_lists

__all__ = ["margin_hinges", "margin_loss"]


def margin_hinges(
    embeddings: object,
    labels: object | None,
    margin: float,
    beta: Sequence[float],
    spec: DistanceSpec = LP,
    triplets: Sequence[tuple[int, int, int]] | None = None,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """Per triplet: the positive hinge, the negative hinge and the anchor's ``beta``.

    ``beta`` holds one value (shared) or one per class (indexed by the anchor's label).
    """
    emb = to_lists(embeddings)
    ref = emb if ref_emb is None else to_lists(ref_emb)
    lab = None if labels is None else [int(v) for v in to_lists(labels)]
    if triplets is None:
        assert lab is not None
        triplets = all_triplets(lab, None if ref_labels is None else [int(v) for v in to_lists(ref_labels)])
    mat = distance_matrix(emb, ref, spec)
    pos, neg, betas = [], [], []
    for a, p, n in triplets:
        b = float(beta[0]) if len(beta) == 1 else float(beta[lab[a]])  # type: ignore[index]
        if spec.is_similarity:
            pos.append(max(0.0, margin - (mat[a][p] - b)))
            neg.append(max(0.0, margin + (mat[a][n] - b)))
        else:
            pos.append(max(0.0, margin + (mat[a][p] - b)))
            neg.append(max(0.0, margin - (mat[a][n] - b)))
        betas.append(b)
    return pos, neg, betas


def margin_loss(
    embeddings: object,
    labels: object | None,
    margin: float = 0.2,
    beta: Sequence[float] = (1.2,),
    spec: DistanceSpec = LP,
    nu: float = 0.0,
    learn_beta: bool = False,
    triplets: Sequence[tuple[int, int, int]] | None = None,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
) -> float:
    """Sum of the hinges over the non-zero count, plus the beta penalty (0 without triplets)."""
    pos, neg, betas = margin_hinges(embeddings, labels, margin, beta, spec, triplets, ref_emb, ref_labels)
    if not pos:
        return 0.0
    divisor = sum(1 for v in pos if v > 0) + sum(1 for v in neg if v > 0)
    hinge = (sum(pos) + sum(neg)) / divisor if divisor else 0.0
    if not learn_beta:
        return hinge
    if len(beta) == 1:
        return hinge + nu * float(beta[0])
    return hinge + (sum(nu * b for b in betas) / divisor if divisor else 0.0)
