from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..indices import convert_to_pairs, label_masks, pair_counts
from ..types import LabelPairs, TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values, row_logsumexp
from .tiled import (
    AffineStat,
    Aggregate,
    LabelBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    listed_blocks,
    listed_pairs,
    normalized_inputs,
    pair_distances,
    positive_label_pairs,
    tile_size,
    tiled_rows,
)

__all__ = ["NTXentLoss", "positive_pair_terms"]


def positive_pair_terms(
    logits: Tensor,
    labels: Tensor | None,
    indices_tuple: tuple[Tensor, ...] | None,
    ref_labels: Tensor | None,
    pair_loss: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> Terms:
    """One term per positive pair ``(a, p)``: ``pair_loss(a, p, negative_lse[a])``, where ``negative_lse[i]``
    is ``log(sum_n exp(logits[i, n]))`` over the negatives of query ``i`` (``-inf`` when it has none).

    The negatives' log-sum-exp is one dense ``(query, reference)`` pass, computed once per anchor: no row of
    negatives is copied per positive pair. With mined pairs or triplets, a pair listed ``k`` times counts
    ``k`` times (as ``k`` separate pairs would): a repeated negative weighs ``k`` in the sum, a repeated
    positive pair is scored once and its value repeated ``k`` times (terms are then grouped by pair).
    """
    repeats = None
    if indices_tuple is None:
        positive, negative = label_masks(labels, ref_labels)  # type: ignore[arg-type]
        a, p = torch.nonzero(positive, as_tuple=True)
        negative_lse = row_logsumexp(logits, negative)
    else:
        a, p, a_neg, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
        counts = pair_counts(logits.shape, a_neg, n, logits.dtype)
        # sum_n k_n exp(x_n) = sum_n exp(x_n + log k_n); the clamp keeps cells that are not kept finite.
        negative_lse = row_logsumexp(logits + counts.clamp(min=1).log(), counts > 0)
        del counts
        pos_counts = pair_counts(logits.shape, a, p, torch.int32)
        a, p = torch.nonzero(pos_counts, as_tuple=True)
        repeats = pos_counts[a, p]
        if bool((repeats == 1).all()):
            repeats = None
    if a.numel() == 0:
        return Terms(logits.new_zeros(0), a, TermKind.POS_PAIR)
    values = pair_loss(a, p, negative_lse[a])
    if repeats is not None:
        expand = torch.repeat_interleave(repeats.long(), output_size=int(indices_tuple[0].numel()))  # type: ignore[index]
        values, a = values.index_select(0, expand), a.index_select(0, expand)
    return Terms(values, a, TermKind.POS_PAIR)


class NTXentLoss(BaseMetricLossFunction):
    """Normalized temperature-scaled cross entropy (NT-Xent; Chen et al., 2020, SimCLR, arXiv:2002.05709),
    the multi-class N-pair loss of Sohn, 2016 (NeurIPS) with a temperature.

    Every positive pair ``(a, p)`` is a softmax classification of ``p`` against the negatives of ``a``::

        -log( exp(s_ap / T) / (exp(s_ap / T) + sum_{n in N_a} exp(s_an / T)) )
            = log(1 + sum_{n in N_a} exp((s_an - s_ap) / T))

    with ``s`` the similarity (the negated distance for distances) and ``N_a`` the negatives of ``a``
    (from the labels, or the negative pairs of a miner that share the anchor). With two views per
    sample this is SimCLR's loss; with more positives per anchor the other positives of ``a`` are left out
    of the denominator. A pair whose anchor has no negative contributes 0. The per-anchor log-sum-exp over
    negatives is computed once per anchor, so memory is one ``(batch, reference)`` matrix whatever the
    number of positive pairs, and small temperatures stay finite.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): the negatives' log-sum-exp is accumulated
    over ``chunk_size x chunk_size`` blocks of the matrix with an online log-sum-exp and recomputed block by
    block in the backward pass, and the positive pairs are evaluated from their embeddings, so no
    ``(batch, reference)`` matrix is held: memory ``O(B * D + P + chunk_size ** 2)`` for ``P`` positive pairs.
    Loss and gradients equal the dense path's, for labels, mined pairs or triplets, and every reducer.

    Args:
        temperature: ``T``, ``> 0``.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (default ``CosineSimilarity()``), ``reducer`` (default ``MeanReducer()``, over
            the positive pairs), ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(NTXentLoss(temperature=0.5)(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.4302
    """

    default_distance = CosineSimilarity
    accepts_label_pairs = True

    def __init__(self, temperature: float = 0.07, chunk_size: int | None = None, **kwargs: Any) -> None:
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
        indices_tuple = listed_pairs(indices_tuple, labels, ref_labels)  # type: ignore[assignment]
        mat = self.distance(embeddings, ref_emb)
        scale = 1.0 / self.temperature if self.distance.higher_is_closer else -1.0 / self.temperature
        logits = mat * scale

        def pair_loss(a: Tensor, p: Tensor, negative_lse: Tensor) -> Tensor:
            # log(1 + exp(lse_a - z_ap)): exact for every magnitude, 0 when the anchor has no negative.
            return torch.logaddexp(negative_lse - pair_values(logits, a, p), logits.new_zeros(()))

        return {"loss": positive_pair_terms(logits, labels, indices_tuple, ref_labels, pair_loss)}

    def _tiled_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
    ) -> Terms:
        """The dense path's terms (up to their order) without the matrix: one value per listed positive pair."""
        scale = 1.0 / self.temperature if self.distance.higher_is_closer else -1.0 / self.temperature
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        if indices_tuple is None or isinstance(indices_tuple, LabelPairs):
            a, p = positive_label_pairs(labels, ref_labels, indices_tuple)  # type: ignore[arg-type]
            blocks = LabelBlocks(labels, ref_labels)  # type: ignore[arg-type]
        else:
            a, p, a_neg, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
            shape = (query.shape[0], ref.shape[0])
            # a negative listed k times weighs k in the sum, as k listed pairs would
            blocks = listed_blocks(shape, block, None, (a_neg, n), multiplicity=True, dtype=query.dtype)  # type: ignore[assignment]
        if a.numel() == 0:
            return Terms(query.new_zeros(0), a, TermKind.POS_PAIR)
        kernel = RowStatKernel([AffineStat(PairSet.NEGATIVE, Aggregate.LOGSUMEXP, scale)])
        negative_lse = tiled_rows(kernel, blocks, self.distance, query, ref, block)[0][:, 0]
        positive = pair_distances(self.distance, query, ref, a, p) * scale
        return Terms(torch.logaddexp(negative_lse[a] - positive, query.new_zeros(())), a, TermKind.POS_PAIR)
