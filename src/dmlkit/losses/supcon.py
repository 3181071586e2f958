from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..indices import convert_to_pairs, pair_masks, ref_is_query
from ..reducers import AvgNonZeroReducer
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values
from .tiled import (
    AffineStat,
    Aggregate,
    LabelBlocks,
    PairBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    distinct_pairs,
    few_pairs,
    label_pair_counts,
    label_pairs,
    labels_have_negative,
    listed_blocks,
    listed_pair_counts,
    normalized_inputs,
    pair_distances,
    tile_size,
    tiled_rows,
)

__all__ = ["SupConLoss"]


class SupConLoss(BaseMetricLossFunction):
    """Supervised contrastive loss (Khosla et al., 2020, arXiv:2004.11362), the "L_out" form.

    For every anchor ``i`` with positives ``P(i)`` (``|P(i)| > 0``) and candidates ``A(i) = P(i) + N(i)``
    (its positives and negatives; every other sample when pairs come from the labels)::

        -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T) )
            = logsumexp_{a in A(i)}(s_ia / T) - mean_{p in P(i)}(s_ip / T)

    with ``s`` the similarity (the negated distance for distances). An anchor without positives
    contributes 0 (and is then skipped by the default ``AvgNonZeroReducer``). When the pairs contain no
    negative at all (a single class), the loss is 0. Pairs from a miner restrict ``P(i)`` and ``A(i)``;
    a pair listed twice counts once.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): the candidates' log-sum-exp and the positives'
    sum of each anchor are accumulated over ``chunk_size x chunk_size`` blocks of the matrix (an online
    log-sum-exp) and the blocks are recomputed in the backward pass, so no ``(batch, reference)`` matrix is held:
    memory ``O(B * D + chunk_size ** 2)``. Loss and gradients equal the dense path's, for labels, mined pairs or
    triplets, and every reducer.

    Args:
        temperature: ``T``, ``> 0``.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (default ``CosineSimilarity()``), ``reducer`` (default
            ``AvgNonZeroReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(SupConLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0638
    """

    default_distance = CosineSimilarity
    default_reducer = AvgNonZeroReducer

    def __init__(self, temperature: float = 0.1, chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "temperature", temperature, low=0, low_inclusive=False)
        check_chunk_size(type(self).__name__, chunk_size)
        self.temperature = temperature
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
        positive, negative = pair_masks(indices_tuple, labels, ref_labels, tuple(mat.shape))  # type: ignore[arg-type]
        anchors = torch.arange(mat.shape[0], device=mat.device)
        if not (bool(positive.any()) and bool(negative.any())):
            return {"loss": Terms(mat.new_zeros(0), anchors[:0], TermKind.ELEMENT)}
        scale = 1.0 / self.temperature if self.distance.higher_is_closer else -1.0 / self.temperature
        logits = mat * scale
        if indices_tuple is None:
            # from labels, the candidates A(i) are every reference but the query itself
            if ref_is_query(labels, ref_labels):  # type: ignore[arg-type]
                logits.fill_diagonal_(float("-inf"))
        else:
            candidates = positive | negative
            # a row without candidates has no positive either; leaving it whole keeps its softmax finite
            candidates |= ~candidates.any(dim=1, keepdim=True)
            logits.masked_fill_(~candidates, float("-inf"))
        # log of each candidate's softmax probability in one fused pass, then the mean over each row's positives
        log_prob = torch.log_softmax(logits, dim=1)
        rows, cols = torch.nonzero(positive, as_tuple=True)
        num_pos = torch.bincount(rows, minlength=mat.shape[0]).clamp(min=1)
        pos_sum = logits.new_zeros(mat.shape[0]).index_add(0, rows, pair_values(log_prob, rows, cols))
        return {"loss": Terms(-pos_sum / num_pos, anchors, TermKind.ELEMENT)}

    def _tiled_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
    ) -> Terms:
        """The dense path's terms without the matrix: ``logsumexp_{A(i)} - sum_{P(i)} / |P(i)|`` per anchor.

        The candidates' log-sum-exp is accumulated over tiles; the positives' sum too, or, when they are few, over
        their list.
        """
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        num_query, num_ref = query.shape[0], ref.shape[0]
        anchors = torch.arange(num_query, device=query.device)
        blocks: PairBlocks
        listed: tuple[Tensor, Tensor] | None = None
        if indices_tuple is None:
            num_pos = label_pair_counts(labels, ref_labels)  # type: ignore[arg-type]
            any_negative = labels_have_negative(labels, ref_labels)  # type: ignore[arg-type]
            blocks = LabelBlocks(labels, ref_labels)  # type: ignore[arg-type]
            if few_pairs(int(num_pos.sum()), num_query, num_ref):
                listed = label_pairs(labels, ref_labels)  # type: ignore[arg-type]
            num_candidates = num_ref - 1 if blocks.same_set else num_ref
            single = torch.full_like(num_pos, num_candidates == 1, dtype=torch.bool)
        else:
            a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
            num_pos = listed_pair_counts(a1, p, num_query, num_ref)
            any_negative = a2.numel() > 0
            blocks = listed_blocks((num_query, num_ref), block, (a1, p), (a2, n))
            listed = distinct_pairs(a1, p, num_ref)  # a pair listed twice counts once
            single = listed_pair_counts(torch.cat([a1, a2]), torch.cat([p, n]), num_query, num_ref) == 1
        if not (bool(num_pos.any()) and any_negative):
            return Terms(query.new_zeros(0), anchors[:0], TermKind.ELEMENT)
        scale = 1.0 / self.temperature if self.distance.higher_is_closer else -1.0 / self.temperature
        stats = [AffineStat(PairSet.CANDIDATE, Aggregate.LOGSUMEXP, scale)]
        if listed is None:
            stats.append(AffineStat(PairSet.POSITIVE, Aggregate.SUM, scale))
        rows = tiled_rows(RowStatKernel(stats), blocks, self.distance, query, ref, block)[0]
        if listed is None:
            pos_sum = rows[:, 1]
        else:
            pos_values = pair_distances(self.distance, query, ref, listed[0], listed[1]) * scale
            pos_sum = query.new_zeros(num_query).index_add(0, listed[0], pos_values)
        # an anchor whose one candidate is its positive scores exactly 0 (log_softmax of one logit), whatever the
        # rounding of its two evaluations: the non-zero mean must leave it out on both paths
        keep = (num_pos > 0) & ~single
        num_pos = num_pos.clamp(min=1).to(query.dtype)
        values = torch.where(keep, rows[:, 0] - pos_sum / num_pos, query.new_zeros(()))
        return Terms(values, anchors, TermKind.ELEMENT)
