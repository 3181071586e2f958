"""The uniformity loss of Wang and Isola: embeddings spread over the hypersphere."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import Described, check_range, message
from ..distances import BaseDistance, LpDistance
from ..reducers.base import zero_loss
from ..types import Terms
from .base import BaseMetricLossFunction
from .functional import require_distance
from .tiled import (
    AffineStat,
    Aggregate,
    EveryPairBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    normalized_inputs,
    tile_size,
    tiled_rows,
)

__all__ = ["UniformityLoss"]


class UniformityLoss(BaseMetricLossFunction):
    """Uniformity loss (Wang and Isola, 2020, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", arXiv:2005.10242)::

        L_uniform = log E_{x, y i.i.d.} exp(-t * ||f(x) - f(y)||_2 ** 2)

    the log of the mean Gaussian potential over every pair of distinct elements of the batch (over every
    ``(embedding, ref_emb)`` pair with a reference set). It is lowest when the embeddings are spread uniformly
    over the hypersphere; the paper uses ``t = 2`` on L2-normalised features (the default distance is the
    normalised squared Euclidean distance) and combines it with :class:`AlignmentLoss`. Labels are not used;
    a batch of one element has no pair and gives 0. The value is one number, which reducers pass through.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`): each row's log-sum-exp is accumulated over
    ``chunk_size x chunk_size`` blocks of the matrix (an online log-sum-exp), recomputed in the backward pass, so
    no ``(batch, reference)`` matrix is held: memory ``O(B * D + chunk_size ** 2)``. Loss and gradients equal the
    dense path's.

    Args:
        t: the potential's scale, ``> 0``.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled).
        **kwargs: ``distance`` (a distance, lower is closer; default ``LpDistance(power=2)``), ``reducer``,
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        >>> round(UniformityLoss()(square).item(), 4)  # log((8 exp(-4) + 4 exp(-8)) / 12)
        -4.3963
    """

    requires_labels: ClassVar[bool] = False

    def __init__(self, t: float = 2, chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "t", t, low=0, low_inclusive=False)
        check_chunk_size(name, chunk_size)
        require_distance(name, self.distance, "LpDistance(power=2)")
        self.t = t
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
        if indices_tuple is not None:
            rule = "None: the uniformity loss runs over every pair of the batch, not over mined pairs"
            raise ValueError(message(type(self).__name__, "indices_tuple", rule, Described("a tuple")))
        same_set = ref_emb is embeddings
        num_query, num_ref = embeddings.shape[0], ref_emb.shape[0]
        num_pairs = num_query * num_ref - (num_query if same_set else 0)
        if num_pairs == 0:
            return {"loss": Terms.reduced(zero_loss(embeddings))}
        block = tile_size(self.chunk_size, num_query, num_ref)
        if block is None:
            potentials = self.distance(embeddings, ref_emb) * -self.t
            if same_set:
                potentials = potentials.masked_fill(
                    torch.eye(num_query, dtype=torch.bool, device=potentials.device), float("-inf")
                )
            total = torch.logsumexp(potentials.reshape(-1), dim=0)
        else:
            query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
            kernel = RowStatKernel([AffineStat(PairSet.CANDIDATE, Aggregate.LOGSUMEXP, -self.t)])
            blocks = EveryPairBlocks(same_set, query.device)
            rows = tiled_rows(kernel, blocks, self.distance, query, ref, block)[0][:, 0]
            total = torch.logsumexp(rows, dim=0)
        return {"loss": Terms.reduced(total - math.log(num_pairs))}

    def extra_repr(self) -> str:
        return f"t={self.t}"
