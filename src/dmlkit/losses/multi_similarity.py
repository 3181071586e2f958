from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..indices import pair_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values, row_logsumexp, segment_logsumexp
from .tiled import (
    AffineStat,
    Aggregate,
    PairSet,
    check_chunk_size,
    negative_and_positive_logsumexp,
    normalized_inputs,
    plan_pair_blocks,
    tile_size,
)

__all__ = ["MultiSimilarityLoss"]


class MultiSimilarityLoss(BaseMetricLossFunction):
    """Multi-similarity loss (Wang et al., 2019, "Multi-Similarity Loss with General Pair Weighting for Deep
    Metric Learning", arXiv:1904.06627).

    For every anchor ``i`` with positives ``P_i`` and negatives ``N_i`` (similarities ``S``, ``base`` = the
    paper's ``lambda``)::

        (1 / alpha) * log(1 + sum_{k in P_i} exp(-alpha * (S_ik - base)))
            + (1 / beta) * log(1 + sum_{k in N_i} exp(beta * (S_ik - base)))

    With a distance instead of a similarity (``distance.higher_is_closer`` false) the signs inside the
    exponentials flip. Every anchor of the batch contributes one value (0 when it has neither positives
    nor negatives); pairs from a miner restrict ``P_i`` and ``N_i`` to the mined ones. The paper's pair
    mining step is a separate miner (``MultiSimilarityMiner``). Computed with log-sum-exp, so large ``alpha``
    and ``beta`` stay finite.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): both log-sum-exps of each anchor are accumulated
    over ``chunk_size x chunk_size`` blocks of the matrix (an online log-sum-exp) and the blocks are recomputed in
    the backward pass, so no ``(batch, reference)`` matrix is held: memory ``O(B * D + chunk_size ** 2)``. Loss and
    gradients equal the dense path's, for labels, mined pairs or triplets, and every reducer.

    Args:
        alpha: weight (inverse temperature) of the positive term, ``> 0``.
        beta: weight of the negative term, ``> 0``.
        base: the similarity threshold ``lambda`` both terms are measured from.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (default ``CosineSimilarity()``), ``reducer`` (default ``MeanReducer()``),
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(MultiSimilarityLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.2688
    """

    default_distance = CosineSimilarity

    def __init__(
        self, alpha: float = 2, beta: float = 50, base: float = 0.5, chunk_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "alpha", alpha, low=0, low_inclusive=False)
        check_range(name, "beta", beta, low=0, low_inclusive=False)
        check_range(name, "base", base)
        check_chunk_size(name, chunk_size)
        self.chunk_size = chunk_size
        self.alpha = alpha
        self.beta = beta
        self.base = base

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
        size = mat.shape[0]
        positive, negative = pair_masks(indices_tuple, labels, ref_labels, (size, mat.shape[1]))
        # margin(x, base) is base - S for similarities (S - base for distances): large when a positive is far.
        # Positives are few per anchor: their sum runs over the pair list, not over a masked matrix.
        rows, cols = torch.nonzero(positive, as_tuple=True)
        pos_exponent = self.distance.margin(pair_values(mat, rows, cols), self.base) * self.alpha  # type: ignore[arg-type]
        pos_loss = segment_logsumexp(pos_exponent, rows, size, add_one=True) / self.alpha
        neg_exponent = self.distance.margin(self.base, mat) * self.beta  # type: ignore[arg-type]
        neg_loss = row_logsumexp(neg_exponent, negative, add_one=True) / self.beta
        anchors = torch.arange(size, device=mat.device)
        return {"loss": Terms(pos_loss + neg_loss, anchors, TermKind.ELEMENT)}

    def _tiled_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
    ) -> Terms:
        """The dense path's terms without the matrix: the negatives' log-sum-exp of each anchor accumulated over
        tiles, the positives' too or, when they are few, over their list."""
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        num_query, num_ref = query.shape[0], ref.shape[0]
        plan = plan_pair_blocks(labels, ref_labels, indices_tuple, num_query, num_ref, block)  # type: ignore[arg-type]
        # alpha * margin(s, base) on positives and beta * margin(base, s) on negatives, as affine maps of s
        sign = -1.0 if self.distance.higher_is_closer else 1.0
        alpha, beta, base = self.alpha, self.beta, self.base
        neg, pos = negative_and_positive_logsumexp(
            plan,
            self.distance,
            query,
            ref,
            block,
            AffineStat(PairSet.NEGATIVE, Aggregate.LOGSUMEXP, -sign * beta, sign * beta * base),
            AffineStat(PairSet.POSITIVE, Aggregate.LOGSUMEXP, sign * alpha, -sign * alpha * base),
            lambda values: self.distance.margin(values, base) * alpha,  # type: ignore[arg-type]
        )
        zero = query.new_zeros(())
        values = torch.logaddexp(pos, zero) / alpha + torch.logaddexp(neg, zero) / beta
        return Terms(values, torch.arange(num_query, device=query.device), TermKind.ELEMENT)
