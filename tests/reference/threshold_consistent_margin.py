"""Naive float64 oracle for the threshold-consistent margin loss, written with plain Python loops.

Zhang et al., 2023, arXiv:2307.04047: ``lambda+ * mean_{positive pairs with s <= m+} (m+ - s) +
lambda- * mean_{negative pairs with s >= m-} (s - m-)``, each mean 0 when no pair violates; ``s`` is cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.reference.triplet import COSINE, all_pairs, distance_matrix, to_lists

__all__ = ["tcm_loss"]


def tcm_loss(
    embeddings: object,
    labels: object | None,
    lambda_plus: float = 1.0,
    lambda_minus: float = 1.0,
    margin_plus: float = 0.9,
    margin_minus: float = 0.5,
    ref_emb: object | None = None,
    ref_labels: object | None = None,
    pairs: Sequence[Sequence[int]] | None = None,
) -> float:
    emb = to_lists(embeddings)
    ref = emb if ref_emb is None else to_lists(ref_emb)
    if pairs is None:
        pairs = all_pairs(to_lists(labels), None if ref_emb is None else to_lists(ref_labels))
    sims = distance_matrix(emb, ref, COSINE)
    a1, p, a2, n = ([int(i) for i in part] for part in pairs)
    pos = [margin_plus - sims[a][j] for a, j in zip(a1, p, strict=True) if sims[a][j] <= margin_plus]
    neg = [sims[a][j] - margin_minus for a, j in zip(a2, n, strict=True) if sims[a][j] >= margin_minus]
    pos_term = sum(pos) / len(pos) if pos else 0.0
    neg_term = sum(neg) / len(neg) if neg else 0.0
    return lambda_plus * pos_term + lambda_minus * neg_term
