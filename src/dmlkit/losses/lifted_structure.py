from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..indices import convert_to_pairs, label_masks, pair_counts
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import masked_logsumexp, pair_values

__all__ = ["LiftedStructureLoss"]


class LiftedStructureLoss(BaseMetricLossFunction):
    """Lifted structured loss (Oh Song, Xiang, Jegelka and Savarese, 2016, "Deep Metric Learning via Lifted
    Structured Feature Embedding", CVPR, arXiv:1511.06452).

    Every positive pair ``(i, j)`` is compared with all the negative pairs of both its ends at once, through a
    smooth maximum. For a distance ``D``::

        J_ij = log( sum_{(i, k) negative} exp(neg_margin - D_ik) + sum_{(j, l) negative} exp(neg_margin - D_jl) )
               + D_ij - pos_margin
        loss_ij = relu(J_ij) ** 2 / 2

    (margins and comparisons reversed for a similarity). The default reducer averages over the ordered
    positive pairs; as each unordered pair appears twice, that is the paper's
    ``1 / (2 |P|) sum_{(i, j) in P} relu(J_ij) ** 2``. ``pos_margin`` generalises the paper's ``D_ij`` term.

    With a miner's pairs, the negatives of ``i`` are the listed negative pairs anchored at ``i`` (repeats count
    repeatedly), and listed positive pairs are scored as listed. A positive pair neither of whose ends anchors
    a negative pair has no log-sum-exp term (it counts as 0), and when no negative pair exists at all the loss
    is 0, as in pytorch-metric-learning.

    With a reference set distinct from the batch, ``j`` is a reference element: it anchors no negative pair,
    so only the anchor's negatives enter ``J``. (pytorch-metric-learning there looks up negative pairs whose
    query index equals ``j``'s reference index, which mixes the two sets.)

    Args:
        neg_margin: the margin ``alpha`` that negatives should exceed (a distance) or stay below (a similarity).
        pos_margin: positives closer than this (farther, for a similarity) are pulled no further.
        **kwargs: ``distance``, ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
        >>> round(LiftedStructureLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.1187
    """

    def __init__(self, neg_margin: float = 1, pos_margin: float = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "neg_margin", neg_margin)
        check_range(name, "pos_margin", pos_margin)
        self.neg_margin = neg_margin
        self.pos_margin = pos_margin

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)
        # sign * mat grows with dissimilarity whether the matrix holds distances or similarities.
        sign = -1.0 if self.distance.higher_is_closer else 1.0
        if indices_tuple is None:
            positive, keep = label_masks(labels, ref_labels)  # type: ignore[arg-type]
            a, p = torch.nonzero(positive, as_tuple=True)
            neg_logits = mat * -sign
        else:
            a, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
            # A negative pair listed c times weighs c in the sum: add log(c) to its exponent (log 1 = 0 elsewhere
            # keeps unlisted cells finite, they are masked out anyway).
            counts = pair_counts(mat.shape, a2, n, mat.dtype)
            keep = counts > 0
            neg_logits = mat * -sign + counts.clamp_(min=1).log_()
        has_negative = keep.any(dim=1)
        if a.numel() == 0 or not bool(has_negative.any()):
            return {"loss": Terms(mat.new_zeros(0), a[:0], TermKind.POS_PAIR)}
        # Per query row i: log sum_k exp(neg_margin - D_ik) over its negatives (0 for a row without any).
        row_lse = masked_logsumexp(neg_logits, keep, add_one=False).squeeze(1)
        row_lse = torch.where(has_negative, row_lse + sign * self.neg_margin, row_lse)
        neg_term = row_lse[a]
        if ref_emb is embeddings:
            neg_term = _log_add_present(neg_term, has_negative[a], row_lse[p], has_negative[p] & (p != a))
        pos_term = sign * (pair_values(mat, a, p) - self.pos_margin)
        values = torch.relu(neg_term + pos_term).square() / 2
        return {"loss": Terms(values, a, TermKind.POS_PAIR)}


def _log_add_present(x: Tensor, x_present: Tensor, y: Tensor, y_present: Tensor) -> Tensor:
    """``log(exp(x) + exp(y))`` counting only the present terms; 0 when neither is.

    Absent entries hold finite placeholders, so every branch is finite and no NaN reaches the gradient.
    """
    both = torch.logaddexp(x, y)
    one = torch.where(x_present, x, torch.where(y_present, y, torch.zeros_like(x)))
    return torch.where(x_present & y_present, both, one)
