from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range, message
from ..indices import label_masks
from ..reducers import AvgNonZeroReducer
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values

__all__ = ["TripletMarginLoss"]


class TripletMarginLoss(BaseMetricLossFunction):
    """Triplet margin loss (Schroff et al., 2015, FaceNet, arXiv:1503.03832).

    Each triplet (a, p, n) contributes ``relu(margin - gap)`` with ``gap = d(a, n) - d(a, p)`` for
    distances (``s(a, p) - s(a, n)`` for similarities); ``softplus`` instead of ``relu`` when
    ``smooth_loss``. The default reducer averages over the triplets with a positive loss.

    Args:
        margin: the required gap between positive and negative, ``>= 0``.
        swap: use the positive-negative distance as the negative's distance when it is closer
            (Balntas et al., 2016, "Learning local feature descriptors with triplets").
        smooth_loss: ``log(1 + exp(margin - gap))`` instead of the hinge.
        triplets_per_anchor: ``"all"`` triplets, or this many random triplets per anchor.
        generator: random source for ``triplets_per_anchor`` sampling.
        **kwargs: ``distance``, ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[0.0, 1.0], [0.0, 0.9], [1.0, 0.0], [0.9, 0.0]])
        >>> TripletMarginLoss(margin=0.1)(emb, torch.tensor([0, 0, 1, 1])).item()
        0.0
    """

    default_reducer = AvgNonZeroReducer

    def __init__(
        self,
        margin: float = 0.05,
        swap: bool = False,
        smooth_loss: bool = False,
        triplets_per_anchor: int | str = "all",
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        valid_count = isinstance(triplets_per_anchor, int) and not isinstance(triplets_per_anchor, bool)
        if triplets_per_anchor != "all" and not (valid_count and triplets_per_anchor >= 1):  # type: ignore[operator]
            raise ValueError(message(name, "triplets_per_anchor", '"all" or a positive integer', triplets_per_anchor))
        self.margin = margin
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.triplets_per_anchor = triplets_per_anchor
        self.generator = generator

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)
        if indices_tuple is None and self.triplets_per_anchor == "all":
            return {"loss": self._all_triplet_terms(mat, labels, ref_emb is embeddings, ref_emb, ref_labels)}
        a, p, n = self.triplets(labels, indices_tuple, ref_labels, self.triplets_per_anchor, self.generator)
        if a.numel() == 0:
            return {"loss": Terms(embeddings.new_zeros(0), a, TermKind.TRIPLET)}
        an = pair_values(mat, a, n)
        if self.swap:
            an = self.distance.smallest_dist(an, self._positive_negative(mat, ref_emb is embeddings, ref_emb, p, n))
        return {"loss": Terms(self._loss(self.distance.gap(pair_values(mat, a, p), an)), a, TermKind.TRIPLET)}

    def _all_triplet_terms(
        self, mat: Tensor, labels: Tensor | None, ref_is_batch: bool, ref_emb: Tensor, ref_labels: Tensor | None
    ) -> Terms:
        """Every triplet, scored as (positive pair) x (reference) rows instead of gathered index triples."""
        positive, negative = label_masks(labels, ref_labels)  # type: ignore[arg-type]
        a, p = torch.nonzero(positive, as_tuple=True)
        keep = negative[a]
        an = mat[a]
        if self.swap:
            pn = mat[p] if ref_is_batch else self.distance(ref_emb)[p]
            an = self.distance.smallest_dist(an, pn)
        gap = self.distance.gap(mat[a, p].unsqueeze(1), an)
        values = self._loss(gap[keep])
        anchors = a.unsqueeze(1).expand_as(keep)[keep]
        return Terms(values, anchors, TermKind.TRIPLET)

    def _loss(self, gap: Tensor) -> Tensor:
        violation = self.margin - gap
        return F.softplus(violation) if self.smooth_loss else F.relu(violation)

    def _positive_negative(self, mat: Tensor, ref_is_batch: bool, ref_emb: Tensor, p: Tensor, n: Tensor) -> Tensor:
        if ref_is_batch:
            return pair_values(mat, p, n)
        # p and n index the reference set: compare those rows directly (a full ref x ref matrix is not needed).
        d = self.distance
        pn = d.pairwise_distance(d.maybe_normalize(ref_emb[p]), d.maybe_normalize(ref_emb[n]))
        return pn**d.power if d.power != 1 else pn
