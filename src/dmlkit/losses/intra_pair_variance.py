from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..indices import label_masks
from ..reducers.base import zero_loss
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .contrastive import pair_entries
from .functional import FusedReduction, fused_reduction, pair_values, reduce_pair_terms

__all__ = ["IntraPairVarianceLoss"]


class IntraPairVarianceLoss(BaseMetricLossFunction):
    """Intra-pair variance loss (Yu and Tao, 2019, "Deep Metric Learning with Tuplet Margin Loss", ICCV).

    Penalises positive and negative pairs that stray from the batch average of their kind, which makes
    the similarities within each kind more uniform. With cosine similarities ``s`` and ``mu_pos``, ``mu_neg``
    the means over the positive and the negative pairs::

        pos_loss(a, p) = relu((1 - pos_eps) * mu_pos - s(a, p)) ** 2
        neg_loss(a, n) = relu(s(a, n) - (1 + neg_eps) * mu_neg) ** 2

    With a distance (lower is closer) the inequalities flip: ``relu(d - (1 + pos_eps) * mu_pos) ** 2`` for
    positives and ``relu((1 - neg_eps) * mu_neg - d) ** 2`` for negatives. Gradients flow through the means.
    The sub-losses ``"pos_loss"`` and ``"neg_loss"`` are each averaged over their pairs by default. The paper
    adds this loss to the tuplet margin loss (``MultipleLosses``).

    Args:
        pos_eps: relative slack below the mean positive similarity, ``>= 0``.
        neg_eps: relative slack above the mean negative similarity, ``>= 0``.
        **kwargs: ``distance`` (cosine similarity by default), ``reducer``, ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.3], [0.0, 1.0], [0.2, 1.0]])
        >>> round(IntraPairVarianceLoss()(emb, torch.tensor([0, 0, 1, 1, 2, 2])).item(), 4)
        0.104
    """

    default_distance = CosineSimilarity

    def __init__(self, pos_eps: float = 0.01, neg_eps: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "pos_eps", pos_eps, low=0)
        check_range(name, "neg_eps", neg_eps, low=0)
        self.pos_eps = pos_eps
        self.neg_eps = neg_eps

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)
        closer = self.distance.higher_is_closer
        fused = fused_reduction(self.reducer)
        if fused is not None and indices_tuple is None:
            # The (millions of) negative pairs are reduced under their label mask, never listed.
            positive, negative = label_masks(labels, ref_labels)  # type: ignore[arg-type]
            a, p = torch.nonzero(positive, as_tuple=True)
            pos = pair_values(mat, a, p)
            neg_loss = Terms.reduced(_masked_spread(mat, negative, self.neg_eps, not closer, fused))
            pos_loss = Terms(_spread(pos, self.pos_eps, below=closer), a, TermKind.POS_PAIR)
            return {"pos_loss": pos_loss, "neg_loss": neg_loss}
        pos, pos_anchors, neg, neg_anchors = pair_entries(mat, labels, indices_tuple, ref_labels)
        return {
            "pos_loss": Terms(_spread(pos, self.pos_eps, below=closer), pos_anchors, TermKind.POS_PAIR),
            "neg_loss": Terms(_spread(neg, self.neg_eps, below=not closer), neg_anchors, TermKind.NEG_PAIR),
        }


def _spread(values: Tensor, eps: float, below: bool) -> Tensor:
    """Squared hinge on how far each value lies below ``(1 - eps) * mean`` (``below``) or above ``(1 + eps) * mean``."""
    if values.numel() == 0:
        return values
    mean = values.mean()
    excess = (1 - eps) * mean - values if below else values - (1 + eps) * mean
    return F.relu(excess, inplace=True).square()


def _masked_spread(mat: Tensor, keep: Tensor, eps: float, below: bool, reduction: FusedReduction) -> Tensor:
    """``_spread`` of the entries of ``mat`` where ``keep`` is true, reduced in row blocks without listing them."""
    count = int(torch.count_nonzero(keep))
    if count == 0:
        return zero_loss(mat)
    mean = torch.where(keep, mat, mat.new_zeros(())).sum() / count
    bound = (1 - eps) * mean if below else (1 + eps) * mean

    def spread(values: Tensor) -> Tensor:
        excess = bound - values if below else values - bound
        return F.relu(excess, inplace=True).square()

    return reduce_pair_terms(spread, mat, keep, reduction)
