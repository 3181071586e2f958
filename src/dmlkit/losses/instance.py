from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import CosineSimilarity
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import FusedReduction, fused_reduction
from .tiled import (
    AffineStat,
    Aggregate,
    EveryPairBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    normalized_inputs,
    pair_distances,
    tile_size,
    tiled_rows,
)

__all__ = ["InstanceLoss"]


class InstanceLoss(BaseMetricLossFunction):
    """Instance loss (Zheng et al., 2020, "Dual-Path Convolutional Image-Text Embeddings with Instance Loss",
    ACM TOMM, arXiv:1711.05535), in its classifier-free batch form.

    The paper treats every training instance as its own class and trains a softmax classifier over them.
    Here the classifier weights are the batch's own L2-normalised embeddings: sample ``i`` gets the logits
    ``gamma * cos(x_i, x_j)`` over the batch, and the cross entropy ``-log softmax_j(...)[t_i]`` with target
    column ``t_i``. Without labels ``t_i = i`` (each sample is its own instance). With labels ``t_i`` is the
    rank of ``labels[i]`` among the batch's distinct labels (sorted), as pytorch-metric-learning computes it;
    this is sample ``i`` itself when the labels are ``0, 1, ..., batch_size - 1`` in batch order. Cross
    entropy is computed with log-sum-exp, so large ``gamma`` stays finite.

    Neither ``indices_tuple`` nor ``ref_emb`` is supported: the logits are always the whole batch against
    itself.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): each row's log-sum-exp is accumulated over
    blocks of the matrix and recomputed block by block in the backward pass, and the target logits come from
    the list of ``(i, t_i)`` pairs, so no batch-by-batch matrix is held.

    Args:
        gamma: the logit scale, ``> 0``.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (must be a ``CosineSimilarity``, the default), ``reducer`` (default
            ``MeanReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(InstanceLoss(gamma=4)(emb).item(), 4)
        0.4487
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity
    supports_ref_emb: ClassVar[bool] = False
    requires_labels: ClassVar[bool] = False

    def __init__(self, gamma: float = 64, chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "gamma", gamma, low=0, low_inclusive=False)
        check_chunk_size(name, chunk_size)
        self.gamma = gamma
        self.chunk_size = chunk_size

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        if indices_tuple is not None:
            raise ValueError(
                message(
                    type(self).__name__,
                    "indices_tuple",
                    "None (the loss scores every sample against the whole batch)",
                    f"a {len(indices_tuple)}-tuple",
                )
            )
        d = self.distance
        rows = torch.arange(embeddings.shape[0], device=embeddings.device)
        targets = rows if labels is None else torch.unique(labels, return_inverse=True)[1]
        block = tile_size(self.chunk_size, len(rows), len(rows))
        if block is not None:
            unit, _ = normalized_inputs(d, embeddings, embeddings)
            kernel = RowStatKernel([AffineStat(PairSet.CANDIDATE, Aggregate.LOGSUMEXP, float(self.gamma))])
            # the softmax runs over the whole batch, the sample itself included: no self-pair is excluded
            every = EveryPairBlocks(same_set=False, device=unit.device)
            lse = tiled_rows(kernel, every, d, unit, unit, block)[0][:, 0]
            target_logits = pair_distances(d, unit, unit, rows, targets) * self.gamma
            return {"loss": Terms(lse - target_logits, rows, TermKind.ELEMENT)}
        plain_cosine = type(d) is CosineSimilarity and d.power == 1 and d.normalize_embeddings
        reduction = fused_reduction(self.reducer)
        if plain_cosine and reduction in (FusedReduction.MEAN, FusedReduction.SUM):
            scale = 1.0 / len(rows) if reduction is FusedReduction.MEAN else 1.0
            total = _BatchInstanceCrossEntropy.apply(d.normalize(embeddings), float(self.gamma), targets, scale)
            return {"loss": Terms.reduced(total)}
        if plain_cosine:
            # gamma scales the (batch, dim) operand instead of the (batch, batch) logits (and their gradient)
            unit = d.normalize(embeddings)
            logits = (unit * self.gamma) @ unit.T
        else:
            logits = d(embeddings) * self.gamma
        # cross entropy from log_softmax (F.cross_entropy's loss kernel stalls on small inputs with 2 threads)
        values = -torch.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
        return {"loss": Terms(values, rows, TermKind.ELEMENT)}


class _BatchInstanceCrossEntropy(torch.autograd.Function):
    """``scale * sum_i CE(gamma * U U^T [i], t_i)`` for unit rows ``U``, with a hand-written backward.

    With ``G = dL/dZ = scale (softmax(Z) - onehot(t))`` for the logits ``Z = gamma U U^T``, the gradient is
    ``gamma (G U + G^T U)``: two products that read ``G`` in place (forming ``G + G^T`` would cost a transposed
    copy of the batch-by-batch matrix), and ``softmax(Z)`` is the exponential of the saved log-probabilities.
    """

    @staticmethod
    def forward(ctx: Any, unit: Tensor, gamma: float, targets: Tensor, scale: float) -> Tensor:
        log_probs = torch.log_softmax((unit * gamma) @ unit.T, dim=1)
        ctx.save_for_backward(unit, log_probs, targets)
        ctx.gamma, ctx.scale = gamma, scale
        return log_probs.gather(1, targets.unsqueeze(1)).sum() * -scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        unit, log_probs, targets = ctx.saved_tensors
        weights = torch.exp(log_probs)
        weights.scatter_add_(1, targets.unsqueeze(1), torch.full_like(targets, -1, dtype=weights.dtype).unsqueeze(1))
        weights.mul_(grad * (ctx.scale * ctx.gamma))
        return torch.addmm(weights @ unit, weights.T, unit), None, None, None
