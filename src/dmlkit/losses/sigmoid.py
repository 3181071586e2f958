"""The pairwise sigmoid loss of SigLIP."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_range, check_type
from ..distances import CosineSimilarity
from ..indices import pair_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import require_similarity
from .tiled import (
    Aggregate,
    CellStat,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    normalized_inputs,
    pair_distances,
    plan_pair_blocks,
    tile_size,
    tiled_rows,
)

__all__ = ["SigmoidLoss"]


class SigmoidLoss(BaseMetricLossFunction):
    """Pairwise sigmoid loss (SigLIP; Zhai, Mustafa, Kolesnikov and Beyer, 2023, "Sigmoid Loss for Language Image
    Pre-Training", arXiv:2303.15343).

    Every pair ``(i, j)`` is an independent binary classification, ``z_ij = 1`` for a positive pair and ``-1``
    for a negative one, with a learnable temperature ``t = exp(t')`` and bias ``b``::

        loss_i = sum_j -log(sigmoid(z_ij * (t * s_ij + b))) = sum_j softplus(-z_ij * (t * s_ij + b))

    over the positive and negative pairs ``j`` of anchor ``i`` (``s`` the similarity). The default
    ``MeanReducer`` averages the anchors' values, the paper's ``1 / |B|`` normalisation. The paper's setting
    is images as ``embeddings`` and their captions as ``ref_emb`` with ``labels = ref_labels = arange(B)``, so
    the positives are the matching pairs; any labels, or a miner's pairs (a pair listed twice counts once),
    work alike. The paper starts from ``t' = log 10`` and ``b = -10``, so that the many negatives do not
    dominate the first steps.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): each anchor's sums are accumulated over
    ``chunk_size x chunk_size`` blocks of the matrix, recomputed in the backward pass (the gradients of ``t'``
    and ``b`` included), so no ``(batch, reference)`` matrix is held: memory ``O(B * D + chunk_size ** 2)``.
    Loss and gradients equal the dense path's, for every reducer.

    Args:
        temperature: the initial ``t = exp(t')``, ``> 0``; stored as the parameter ``log_temperature``.
        bias: the initial ``b``; stored as the parameter ``bias``.
        learnable: whether ``t'`` and ``b`` are trained (``requires_grad``); otherwise they stay fixed.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (a similarity; default ``CosineSimilarity()``, the paper's normalised dot
            product), ``reducer`` (default ``MeanReducer()``), ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> captions = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
        >>> labels = torch.arange(2)
        >>> loss = SigmoidLoss()(images, labels, ref_emb=captions, ref_labels=labels.clone())
        >>> round(loss.item(), 4)
        0.7243
    """

    default_distance = CosineSimilarity

    def __init__(
        self,
        temperature: float = 10.0,
        bias: float = -10.0,
        learnable: bool = True,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "temperature", temperature, low=0, low_inclusive=False)
        check_range(name, "bias", bias)
        check_type(name, "learnable", learnable, bool, "a bool")
        check_chunk_size(name, chunk_size)
        require_similarity(name, self.distance)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable)
        self.chunk_size = chunk_size

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        scale = self.log_temperature.exp().to(embeddings.dtype)
        bias = self.bias.to(embeddings.dtype)
        anchors = torch.arange(embeddings.shape[0], device=embeddings.device)
        block = tile_size(self.chunk_size, embeddings.shape[0], ref_emb.shape[0], indices_tuple)
        if block is not None:
            values = self._tiled_values(embeddings, labels, indices_tuple, ref_emb, ref_labels, block, scale, bias)
            return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
        mat = self.distance(embeddings, ref_emb)
        positive, negative = pair_masks(indices_tuple, labels, ref_labels, (mat.shape[0], mat.shape[1]))
        logits = mat * scale + bias
        zero = logits.new_zeros(())
        pos = torch.where(positive, F.softplus(-logits), zero).sum(dim=1)
        neg = torch.where(negative, F.softplus(logits), zero).sum(dim=1)
        return {"loss": Terms(pos + neg, anchors, TermKind.ELEMENT)}

    def _tiled_values(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
        scale: Tensor,
        bias: Tensor,
    ) -> Tensor:
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        num_query, num_ref = query.shape[0], ref.shape[0]
        blocks, listed, _, _ = plan_pair_blocks(labels, ref_labels, indices_tuple, num_query, num_ref, block)  # type: ignore[arg-type]
        # the (few) positive pairs from their list, the negatives over the tiles
        stats = [_PairSigmoid(PairSet.NEGATIVE, 1.0)]
        if listed is None:
            stats.append(_PairSigmoid(PairSet.POSITIVE, -1.0))
        sums = tiled_rows(RowStatKernel(stats), blocks, self.distance, query, ref, block, scale, bias)[0]
        values = sums.sum(dim=1)
        if listed is not None:
            pos_values = pair_distances(self.distance, query, ref, listed[0], listed[1])
            values = values.index_add(0, listed[0], F.softplus(-(pos_values * scale + bias)))
        return values

    def extra_repr(self) -> str:
        return f"temperature={self.log_temperature.exp().item():.4g}, bias={self.bias.item():.4g}"


class _PairSigmoid(CellStat):
    """``softplus(sign * (t * s + b))`` summed over a pair set; ``t`` and ``b`` are the kernel's extra inputs."""

    def __init__(self, pairs: PairSet, sign: float) -> None:
        super().__init__(pairs, Aggregate.SUM)
        self.sign = sign

    def value(self, tile: Tensor, extras: Sequence[Tensor]) -> Tensor:
        scale, bias = extras
        return F.softplus(tile * (self.sign * scale) + self.sign * bias)

    def backward(
        self, tile: Tensor, upstream: Tensor, extras: Sequence[Tensor], extra_grads: list[Tensor | None]
    ) -> Tensor:
        scale, bias = extras
        # d softplus(y) / dy = sigmoid(y), y = sign * (t * s + b)
        logit = upstream.mul_(torch.sigmoid(tile * (self.sign * scale) + self.sign * bias)).mul_(self.sign)
        if extra_grads[0] is not None:
            extra_grads[0] += (logit * tile).sum()
        if extra_grads[1] is not None:
            extra_grads[1] += logit.sum()
        return logit.mul_(scale)
