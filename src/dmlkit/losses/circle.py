from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range, check_type
from ..distances import CosineSimilarity
from ..reducers import AvgNonZeroReducer
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import masked_logsumexp
from .generalized_lifted_structure import checked_pair_masks, refuse_pairs_listed_as_both
from .tiled import (
    Aggregate,
    CellStat,
    PairSet,
    check_chunk_size,
    negative_and_positive_logsumexp,
    normalized_inputs,
    plan_pair_blocks,
    tile_size,
)

__all__ = ["CircleLoss"]


class CircleLoss(BaseMetricLossFunction):
    """Circle loss for pair-wise labels (Sun et al., 2020, "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR, arXiv:2002.10857).

    Each similarity is weighted by how far it is from its optimum, so pairs far from it get larger gradients.
    For anchor ``a`` with positive similarities ``s_p`` and negative similarities ``s_n`` (cosine)::

        loss_a = log(1 + sum_n exp(gamma * alpha_n * (s_n - delta_n)) * sum_p exp(-gamma * alpha_p * (s_p - delta_p)))
        alpha_p = relu(1 + m - s_p),  alpha_n = relu(s_n + m),  delta_p = 1 - m,  delta_n = m

    The weights ``alpha`` are constants for the gradient, as in the paper. The loss is evaluated as
    ``softplus(logsumexp_n + logsumexp_p)``, so it stays finite for any ``gamma``. An anchor without a
    positive or without a negative contributes 0; the default reducer averages the non-zero values.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): both log-sum-exps of each anchor are accumulated
    over ``chunk_size x chunk_size`` blocks of the matrix (an online log-sum-exp) and the blocks are recomputed in
    the backward pass, so no ``(batch, reference)`` matrix is held: memory ``O(B * D + chunk_size ** 2)``. Loss and
    gradients equal the dense path's, for labels, mined pairs or triplets, and every reducer.

    Args:
        m: the relaxation margin (the paper uses 0.25 for faces and re-identification, 0.4 for fine-grained
            retrieval).
        gamma: the scale, ``> 0`` (the paper uses 256, 128 and 80 in those settings).
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (must be a :class:`~dmlkit.distances.CosineSimilarity`, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
        >>> CircleLoss()(emb, torch.tensor([0, 0, 1, 1])).item() < 1e-4
        True
        >>> round(CircleLoss(m=0.4, gamma=80)(emb, torch.tensor([0, 1, 0, 1])).item(), 2)
        373.61
    """

    default_distance = CosineSimilarity
    default_reducer = AvgNonZeroReducer

    def __init__(self, m: float = 0.4, gamma: float = 80, chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_type(name, "distance", self.distance, CosineSimilarity, "a CosineSimilarity (the loss is defined on it)")
        check_range(name, "m", m)
        check_range(name, "gamma", gamma, low=0, low_inclusive=False)
        check_chunk_size(name, chunk_size)
        self.chunk_size = chunk_size
        self.m = m
        self.gamma = gamma

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
        m, gamma = self.m, self.gamma
        with torch.no_grad():
            # logit = weight * s - bias, with weight = -gamma * alpha_p, bias = weight * delta_p on positive
            # cells (gamma * alpha_n and its delta_n on the others); cells in neither mask are never read.
            detached = mat.detach()
            weight = torch.where(positive, (1 + m) - detached, detached + m).clamp_(min=0)
            weight.mul_(torch.where(positive, detached.new_tensor(-gamma), detached.new_tensor(gamma)))
            bias = weight * torch.where(positive, detached.new_tensor(1 - m), detached.new_tensor(m))
        logits = weight * mat - bias
        pos = masked_logsumexp(logits, positive, add_one=False).squeeze(1)
        neg = masked_logsumexp(logits, negative, add_one=False).squeeze(1)
        valid = positive.any(dim=1) & negative.any(dim=1)
        values = torch.where(valid, F.softplus(pos + neg), torch.zeros_like(pos))
        anchors = torch.arange(mat.shape[0], device=mat.device)
        return {"loss": Terms(values, anchors, TermKind.ELEMENT)}

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
        if plan.mined is not None:
            refuse_pairs_listed_as_both(type(self).__name__, plan.mined, num_ref)
        positive = _CircleLogit(PairSet.POSITIVE, -self.gamma, 1 + self.m, 1 - self.m)
        neg, pos = negative_and_positive_logsumexp(
            plan,
            self.distance,
            query,
            ref,
            block,
            _CircleLogit(PairSet.NEGATIVE, self.gamma, self.m, self.m),
            positive,
            lambda values: positive.weight(values.detach()) * (values - positive.delta),
        )
        valid = (plan.num_pos > 0) & (neg > float("-inf"))
        values = torch.where(valid, F.softplus(pos + neg), torch.zeros_like(neg))
        return Terms(values, torch.arange(num_query, device=query.device), TermKind.ELEMENT)


class _CircleLogit(CellStat):
    """The circle loss's logit of a cell: ``-gamma * relu(1 + m - s) * (s - (1 - m))`` on positives (``scale =
    -gamma``, ``optimum = 1 + m``), ``gamma * relu(s + m) * (s - m)`` on negatives (``scale = gamma``, ``optimum =
    m``); the ``relu`` weight is a constant for the gradient, as in the paper."""

    def __init__(self, pairs: PairSet, scale: float, optimum: float, delta: float) -> None:
        super().__init__(pairs, Aggregate.LOGSUMEXP)
        self.scale = scale
        self.optimum = optimum
        self.delta = delta

    def weight(self, tile: Tensor) -> Tensor:
        # positives: -gamma * relu(1 + m - s); negatives: gamma * relu(s + m)
        weight = (self.optimum - tile) if self.scale < 0 else (tile + self.optimum)
        return weight.clamp_(min=0).mul_(self.scale)

    def value(self, tile: Tensor, extras: Sequence[Tensor]) -> Tensor:
        return self.weight(tile).mul_(tile - self.delta)

    def backward(
        self, tile: Tensor, upstream: Tensor, extras: Sequence[Tensor], extra_grads: list[Tensor | None]
    ) -> Tensor:
        return upstream.mul_(self.weight(tile))
