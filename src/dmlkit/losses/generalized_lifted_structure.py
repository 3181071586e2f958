from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import _Described, check_range, message
from ..indices import pair_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import masked_logsumexp
from .tiled import (
    AffineStat,
    Aggregate,
    PairSet,
    check_chunk_size,
    listed_in_both,
    negative_and_positive_logsumexp,
    normalized_inputs,
    plan_pair_blocks,
    tile_size,
)

__all__ = ["GeneralizedLiftedStructureLoss", "checked_pair_masks", "refuse_pairs_listed_as_both"]


class GeneralizedLiftedStructureLoss(BaseMetricLossFunction):
    """Generalised lifted structure loss (Hermans, Beyer and Leibe, 2017, "In Defense of the Triplet Loss for
    Person Re-Identification", arXiv:1703.07737), generalising Oh Song et al. (2016,
    arXiv:1511.06452) to one smooth hinge per anchor.

    Each query element ``a`` compares a smooth maximum of its positives with a smooth minimum of its
    negatives. For a distance ``D``::

        loss_a = relu( log sum_{p in P(a)} exp(D_ap - pos_margin) + log sum_{n in N(a)} exp(neg_margin - D_an) )

    (margins and comparisons reversed for a similarity). An empty sum contributes 0 in place of its log. The
    default reducer averages over every query element, those without pairs included (their value is
    ``relu`` of the other term, or 0).

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): both log-sum-exps of each anchor are
    accumulated over blocks of the matrix (the positives' over their list when they are few) and recomputed block
    by block in the backward pass, so no ``(batch, reference)`` matrix is held.

    Args:
        neg_margin: the margin that negatives should exceed (a distance) or stay below (a similarity).
        pos_margin: subtracted from the positive distances (added to positive similarities).
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance``, ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> GeneralizedLiftedStructureLoss()(emb, labels).item()
        0.0
        >>> round(GeneralizedLiftedStructureLoss(neg_margin=3)(emb, labels).item(), 4)
        1.794
    """

    def __init__(
        self, neg_margin: float = 1, pos_margin: float = 0, chunk_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "neg_margin", neg_margin)
        check_range(name, "pos_margin", pos_margin)
        check_chunk_size(name, chunk_size)
        self.neg_margin = neg_margin
        self.pos_margin = pos_margin
        self.chunk_size = chunk_size

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        block = tile_size(self.chunk_size, embeddings.shape[0], ref_emb.shape[0], indices_tuple)
        if block is not None:
            return {"loss": self._tiled_terms(embeddings, labels, indices_tuple, ref_emb, ref_labels, block)}
        mat = self.distance(embeddings, ref_emb)
        positive, negative = checked_pair_masks(type(self).__name__, indices_tuple, labels, ref_labels, mat.shape)
        # sign * mat grows with dissimilarity; the margins move out of the sums as constants.
        sign = -1.0 if self.distance.higher_is_closer else 1.0
        farness = mat if sign > 0 else -mat
        pos = masked_logsumexp(farness, positive, add_one=False).squeeze(1)
        neg = masked_logsumexp(-farness, negative, add_one=False).squeeze(1)
        pos = torch.where(positive.any(dim=1), pos - sign * self.pos_margin, pos)
        neg = torch.where(negative.any(dim=1), neg + sign * self.neg_margin, neg)
        anchors = torch.arange(mat.shape[0], device=mat.device)
        return {"loss": Terms(torch.relu(pos + neg), anchors, TermKind.ELEMENT)}

    def _tiled_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
    ) -> Terms:
        """The dense path's terms without the matrix."""
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        num_query, num_ref = query.shape[0], ref.shape[0]
        plan = plan_pair_blocks(labels, ref_labels, indices_tuple, num_query, num_ref, block)  # type: ignore[arg-type]
        if plan.mined is not None:
            refuse_pairs_listed_as_both(type(self).__name__, plan.mined, num_ref)
        sign = -1.0 if self.distance.higher_is_closer else 1.0
        neg, pos = negative_and_positive_logsumexp(
            plan,
            self.distance,
            query,
            ref,
            block,
            AffineStat(PairSet.NEGATIVE, Aggregate.LOGSUMEXP, -sign),
            AffineStat(PairSet.POSITIVE, Aggregate.LOGSUMEXP, sign),
            lambda values: values * sign,
        )
        # an empty sum (log-sum-exp -inf) contributes 0, without its margin
        pos = torch.where(plan.num_pos > 0, pos - sign * self.pos_margin, torch.zeros_like(pos))
        neg = torch.where(neg > float("-inf"), neg + sign * self.neg_margin, torch.zeros_like(neg))
        return Terms(torch.relu(pos + neg), torch.arange(num_query, device=query.device), TermKind.ELEMENT)


def refuse_pairs_listed_as_both(owner: str, mined: Sequence[Tensor], num_ref: int) -> None:
    """Raise when a miner's ``(a1, p, a2, n)`` lists a pair both as positive and as negative."""
    both = listed_in_both((mined[0], mined[1]), (mined[2], mined[3]), num_ref)
    if both:
        rule = "pairs that are either positive or negative, not both"
        raise ValueError(message(owner, "indices_tuple", rule, _Described(f"{both} pair(s) listed as both")))


def checked_pair_masks(
    owner: str,
    indices_tuple: Sequence[Tensor] | None,
    labels: Tensor | None,
    ref_labels: Tensor | None,
    shape: tuple[int, int] | torch.Size,
) -> tuple[Tensor, Tensor]:
    """:func:`dmlkit.indices.pair_masks`, refusing given pairs that are listed both as positive and as negative."""
    positive, negative = pair_masks(indices_tuple, labels, ref_labels, (int(shape[0]), int(shape[1])))
    if indices_tuple is not None:
        both = int((positive & negative).sum())
        if both:
            raise ValueError(
                message(
                    owner,
                    "indices_tuple",
                    "pairs that are either positive or negative, not both",
                    _Described(f"{both} pair(s) listed as both"),
                )
            )
    return positive, negative
