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

    Args:
        alpha: weight (inverse temperature) of the positive term, ``> 0``.
        beta: weight of the negative term, ``> 0``.
        base: the similarity threshold ``lambda`` both terms are measured from.
        **kwargs: ``distance`` (default ``CosineSimilarity()``), ``reducer`` (default ``MeanReducer()``),
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(MultiSimilarityLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.2688
    """

    default_distance = CosineSimilarity

    def __init__(self, alpha: float = 2, beta: float = 50, base: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "alpha", alpha, low=0, low_inclusive=False)
        check_range(name, "beta", beta, low=0, low_inclusive=False)
        check_range(name, "base", base)
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
