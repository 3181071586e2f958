"""The alignment loss of Wang and Isola: positive pairs close together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..indices import convert_to_pairs, label_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values, require_distance
from .tiled import check_chunk_size, label_pairs, normalized_inputs, pair_distances, tile_size

__all__ = ["AlignmentLoss"]


class AlignmentLoss(BaseMetricLossFunction):
    """Alignment loss (Wang and Isola, 2020, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", arXiv:2005.10242)::

        L_align = E_{(x, y) positive pair} ||f(x) - f(y)||_2 ** alpha

    the mean over the positive pairs (from the labels, or a miner's positive pairs as listed) of the distance
    raised to ``alpha``. The paper's features are L2-normalised (the default distance's setting) and
    ``alpha = 2``; it is meant to be combined with :class:`UniformityLoss`, e.g. in ``MultipleLosses``. Pairs of
    a single class are positive, so a single-class batch is fine; no positive pair gives 0.

    Large batches (or a positive ``chunk_size``) evaluate the positive pairs from their embeddings, in chunks,
    instead of reading them from a ``(batch, reference)`` matrix: memory ``O(B * D + P)`` for ``P`` positive
    pairs. Loss and gradients equal the dense path's, for every reducer.

    Args:
        alpha: the exponent, ``> 0``.
        chunk_size: ``None`` (automatic: the matrix up to 3072 x 3072 cells, the pairs alone above), ``0``
            (always the matrix) or a positive value (always the pairs alone).
        **kwargs: ``distance`` (a distance, lower is closer; default ``LpDistance()``, normalised Euclidean),
            ``reducer`` (default ``MeanReducer()``, over the positive pairs), ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.0]])
        >>> round(AlignmentLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)  # (2 + 2 + 0 + 0) / 4
        1.0
    """

    def __init__(self, alpha: float = 2, chunk_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "alpha", alpha, low=0, low_inclusive=False)
        check_chunk_size(name, chunk_size)
        require_distance(name, self.distance)
        self.alpha = alpha
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
        if block is None:
            mat = self.distance(embeddings, ref_emb)
            if indices_tuple is None:
                assert labels is not None
                a, p = torch.nonzero(label_masks(labels, ref_labels)[0], as_tuple=True)
            else:
                a, p = convert_to_pairs(indices_tuple, labels, ref_labels)[:2]  # type: ignore[arg-type]
            distances = pair_values(mat, a, p)
        else:
            query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
            if indices_tuple is None:
                a, p = label_pairs(labels, ref_labels)  # type: ignore[arg-type]
            else:
                a, p = convert_to_pairs(indices_tuple, labels, ref_labels)[:2]  # type: ignore[arg-type]
            distances = pair_distances(self.distance, query, ref, a, p)
        return {"loss": Terms(distances**self.alpha, a, TermKind.POS_PAIR)}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
