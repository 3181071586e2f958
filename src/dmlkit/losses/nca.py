from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import BaseDistance, LpDistance
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import miner_weights, pair_values, segment_logsumexp
from .tiled import (
    AffineStat,
    Aggregate,
    LabelBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    label_pairs,
    normalized_inputs,
    pair_distances,
    tile_size,
    tiled_rows,
)

__all__ = ["NCALoss"]


class NCALoss(BaseMetricLossFunction):
    """Neighbourhood components analysis loss (Goldberger, Roweis, Hinton and Salakhutdinov, 2004,
    "Neighbourhood Components Analysis", NeurIPS 17).

    Each query ``i`` picks a reference ``j`` as its neighbour with probability
    ``softmax_j(-softmax_scale * d(i, j))`` (itself excluded when the reference is the batch); its loss is
    ``-log`` of the probability that the neighbour has its label::

        logsumexp_{j}(-scale * d_ij) - logsumexp_{j : y_j = y_i}(-scale * d_ij)

    The distance defaults to the squared Euclidean distance of L2-normalised embeddings (the paper's
    ``||Ax_i - Ax_j||^2``); a similarity is used without the minus sign. Queries without a same-label
    reference are skipped. Pairs or triplets from a miner do not change the softmax: they weight query ``i``
    by how often it appears in them (only as an anchor when a distinct reference set is given), divided by
    the largest such count, as pytorch-metric-learning does.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): each row's log-sum-exp over every reference is
    accumulated over blocks of the matrix and recomputed block by block in the backward pass, and the same-label
    one comes from the list of those pairs, so no ``(batch, reference)`` matrix is held.

    Args:
        softmax_scale: the inverse temperature ``scale``, ``> 0``.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (default ``LpDistance(power=2)``), ``reducer`` (default ``MeanReducer()``),
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(NCALoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.4302
    """

    def __init__(self, softmax_scale: float = 1, chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "softmax_scale", softmax_scale, low=0, low_inclusive=False)
        check_chunk_size(type(self).__name__, chunk_size)
        self.softmax_scale = softmax_scale
        self.chunk_size = chunk_size

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(power=2)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        if labels is None:
            raise ValueError(
                message(type(self).__name__, "labels", "given (the loss needs them even with an `indices_tuple`)", None)
            )
        same_set = ref_emb is embeddings
        size = embeddings.shape[0]
        if same_set and size < 2:
            return {"loss": Terms(embeddings.new_zeros(0), torch.arange(0, device=embeddings.device), TermKind.ELEMENT)}
        scale = self.softmax_scale if self.distance.higher_is_closer else -self.softmax_scale
        weights = miner_weights(indices_tuple, size, embeddings.dtype, embeddings.device, anchors_only=not same_set)
        block = tile_size(self.chunk_size, size, ref_emb.shape[0])
        if block is not None:
            # the miner only weighs the rows, so the softmax always runs over every reference: tile regardless
            query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
            kernel = RowStatKernel([AffineStat(PairSet.CANDIDATE, Aggregate.LOGSUMEXP, scale)])
            every_lse = tiled_rows(kernel, LabelBlocks(labels, ref_labels), self.distance, query, ref, block)[0][:, 0]
            # the few same-label entries of each row come from their list, not from masks over every tile
            rows, cols = label_pairs(labels, ref_labels)
            keep = torch.bincount(rows, minlength=size) > 0
            positive_lse = segment_logsumexp(pair_distances(self.distance, query, ref, rows, cols) * scale, rows, size)
            values = (every_lse - positive_lse)[keep]
            anchors = torch.nonzero(keep).flatten()
            if weights is not None:
                values = values * weights[keep]
            return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
        mat = self.distance(embeddings, ref_emb)
        logits = mat * scale
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)  # type: ignore[union-attr]
        if same_set:
            # nobody picks itself as its neighbour; every row keeps at least one other entry (size >= 2)
            logits.fill_diagonal_(float("-inf"))
            same.fill_diagonal_(False)
        rows, cols = torch.nonzero(same, as_tuple=True)
        # log p_ij in one fused pass; log p_i sums the few same-label entries of each row over the pair list
        log_p = torch.log_softmax(logits, dim=1)
        keep = torch.bincount(rows, minlength=size) > 0
        values = -segment_logsumexp(pair_values(log_p, rows, cols), rows, size)[keep]
        anchors = torch.nonzero(keep).flatten()
        if weights is not None:
            values = values * weights[keep]
        return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
