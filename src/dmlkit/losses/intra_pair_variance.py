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
from .functional import FusedReduction, chunk_count, fused_reduction, pair_values

__all__ = ["IntraPairVarianceLoss"]

#: entries of the matrix per row block of the masked negative reduction.
BLOCK_CELLS = 1 << 22


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
    if not bool(keep.any()):
        return zero_loss(mat)
    return _MaskedSpread.apply(mat, keep, eps, below, reduction, max(1, BLOCK_CELLS // max(1, mat.shape[1])))


class _MaskedSpread(torch.autograd.Function):
    """The reduced squared hinges ``relu(+-(bound - m))**2`` over the kept entries ``m``, with ``bound = c * mean(m)``
    (``c = 1 - eps`` below the mean, ``1 + eps`` above), in row blocks and with a hand-written backward.

    With ``h`` the hinges, ``D`` the reduction's divisor and ``K`` the kept count, ``d/dm_ij`` of ``sum(h**2) / D``
    is ``2 (s_m h_ij + s_b c H / K) / D`` on kept entries, ``H = sum(h)``, ``s_m = -s_b`` the hinge's slope in
    ``m``: the first part is the entry's own hinge, the second its share of the mean every hinge depends on.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mat: Tensor, keep: Tensor, eps: float, below: bool, reduction: FusedReduction, rows: int
    ) -> Tensor:
        kept = int(torch.count_nonzero(keep))
        total = mat.new_zeros(())
        for block, mask in zip(mat.split(rows), keep.split(rows), strict=True):
            total += torch.where(mask, block, 0).sum()
        scale = (1 - eps) if below else (1 + eps)
        bound = scale * total / kept
        squares, hinges, count = mat.new_zeros(()), mat.new_zeros(()), 0
        for block, mask in zip(mat.split(rows), keep.split(rows), strict=True):
            excess = _hinge(block, bound, below, mask)
            hinges += excess.sum()
            count += chunk_count(excess, mask, reduction)
            squares += excess.square_().sum()
        ctx.save_for_backward(mat, keep)
        divisor = count if count and reduction is not FusedReduction.SUM else 1
        ctx.settings = (bound, below, rows, divisor, float(hinges) * scale / kept)
        return squares / divisor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mat, keep = ctx.saved_tensors
        bound, below, rows, divisor, mean_share = ctx.settings
        own_slope = -1.0 if below else 1.0
        factor = grad * (2.0 / divisor)
        out = torch.empty_like(mat)
        for block, mask, out_block in zip(mat.split(rows), keep.split(rows), out.split(rows), strict=True):
            excess = _hinge(block, bound, below, mask)
            # own hinge (slope -+1) plus the entry's share of the mean (slope +-c/K, summed over every hinge)
            excess.mul_(own_slope).sub_(own_slope * mean_share).mul_(mask).mul_(factor)
            out_block.copy_(excess)
        return out, None, None, None, None, None


def _hinge(block: Tensor, bound: Tensor, below: bool, mask: Tensor) -> Tensor:
    excess = (bound - block) if below else (block - bound)
    return excess.clamp_min_(0).mul_(mask)
