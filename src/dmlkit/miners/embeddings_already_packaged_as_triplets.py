"""For batches that already consist of (anchor, positive, negative) triplets."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import Described, message
from ..types import Triplets
from .base import BaseMiner

__all__ = ["EmbeddingsAlreadyPackagedAsTriplets"]


class EmbeddingsAlreadyPackagedAsTriplets(BaseMiner):
    """Returns the triplets of a batch laid out as consecutive (anchor, positive, negative) rows.

    Some data pipelines build triplets themselves (as in Schroff, Kalenichenko and Philbin, 2015, FaceNet,
    arXiv:1503.03832, or Hoffer and Ailon, 2015, "Deep metric learning using Triplet network",
    arXiv:1412.6622): rows ``3i, 3i + 1, 3i + 2`` are the anchor, positive and negative of triplet ``i``.
    This miner hands exactly those triplets to a loss, which then ignores the labels' own pairs. The
    labels are not checked against the layout.

    The batch size must be a multiple of 3, and there is no separate reference set (``ref_emb`` must be
    ``None``), since the positives and negatives are rows of the batch itself.

    Example:
        >>> a, p, n = EmbeddingsAlreadyPackagedAsTriplets()(torch.randn(6, 4), torch.tensor([0, 0, 1, 2, 2, 0]))
        >>> a.tolist(), p.tolist(), n.tolist()
        ([0, 3], [1, 4], [2, 5])
    """

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets:
        name = type(self).__name__
        if ref_emb is not None:
            got = f"a tensor of shape {tuple(ref_emb.shape)}" if isinstance(ref_emb, Tensor) else type(ref_emb).__name__
            raise ValueError(
                message(name, "ref_emb", "None (the positives and negatives are rows of `embeddings`)", Described(got))
            )
        out = super().forward(embeddings, labels, None, ref_labels)
        assert isinstance(out, Triplets)
        return out

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Triplets:
        size = embeddings.shape[0]
        if size % 3:
            raise ValueError(
                message(
                    type(self).__name__,
                    "embeddings",
                    "consecutive (anchor, positive, negative) rows, so the batch size must be a multiple of 3",
                    Described(f"batch size {size}"),
                )
            )
        starts = torch.arange(0, size, 3, device=embeddings.device)
        return Triplets(starts, starts + 1, starts + 2)
