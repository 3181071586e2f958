"""Threshold-consistent margin (TCM) loss (Zhang et al., 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..indices import label_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values

__all__ = ["ThresholdConsistentMarginLoss"]


def _mean_violation(violation: Tensor, active: Tensor) -> Tensor:
    """Mean of ``violation`` over the ``active`` entries (0 when none is active)."""
    count = active.sum()
    return torch.where(active, violation, 0.0).sum() / count.clamp(min=1).to(violation.dtype)


class ThresholdConsistentMarginLoss(BaseMetricLossFunction):
    """Threshold-consistent margin loss (Zhang, Xu, Sun, Gao, Chen, Lin and Wipf, 2023, "Threshold-Consistent
    Margin Loss for Open-World Deep Metric Learning", arXiv:2307.04047).

    A regulariser that pushes positive pairs' cosine similarities above ``margin_plus`` and negative pairs'
    below ``margin_minus``, so that one distance threshold suits every class:
    ``lambda_plus * mean_{pos, s <= m+} (m+ - s) + lambda_minus * mean_{neg, s >= m-} (s - m-)``, each mean over
    the pairs on the wrong side of their margin (0 when there is none). It is already reduced, so ``reducer``
    does not apply. Pairs are all positive and negative pairs from the labels, or a miner's pairs (each
    occurrence counted, as in pytorch-metric-learning).

    With ``ref_emb``/``ref_labels``, pairs join a query to a reference element and the similarities are
    computed against the reference set. pytorch-metric-learning indexes ``embeddings`` with the reference
    indices instead (ignoring ``ref_emb``), which gives wrong pairs or an index error; this is the fix.
    Without a miner, the pairs are scored on the similarity matrix with masks, in ``O(batch * reference)``
    memory, instead of gathering ``(pairs x dim)`` embeddings.

    Args:
        lambda_plus: weight of the positive term, ``>= 0``.
        lambda_minus: weight of the negative term, ``>= 0``.
        margin_plus: similarity the positive pairs should exceed, in ``[-1, 1]``.
        margin_minus: similarity the negative pairs should stay below, in ``[-1, 1]``.
        **kwargs: ``distance`` (a ``CosineSimilarity``, the default), ``reducer``, ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
        >>> round(ThresholdConsistentMarginLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.6533
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(
        self,
        lambda_plus: float = 1.0,
        lambda_minus: float = 1.0,
        margin_plus: float = 0.9,
        margin_minus: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "lambda_plus", lambda_plus, low=0)
        check_range(name, "lambda_minus", lambda_minus, low=0)
        check_range(name, "margin_plus", margin_plus, low=-1, high=1)
        check_range(name, "margin_minus", margin_minus, low=-1, high=1)
        self.lambda_plus = lambda_plus
        self.lambda_minus = lambda_minus
        self.margin_plus = margin_plus
        self.margin_minus = margin_minus

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        sims = self.distance(embeddings, ref_emb)
        if indices_tuple is None:
            # the few positive pairs from their list, the negatives with a mask over the similarity matrix
            same, negative = label_masks(labels, ref_labels)  # type: ignore[arg-type]
            rows, cols = torch.nonzero(same, as_tuple=True)
            pos_sims, neg_sims = pair_values(sims, rows, cols), sims
            positive = torch.ones_like(pos_sims, dtype=torch.bool)
        else:
            a1, p, a2, n = self.pairs(labels, indices_tuple, ref_labels)
            pos_sims, neg_sims = pair_values(sims, a1, p), pair_values(sims, a2, n)
            positive = torch.ones_like(pos_sims, dtype=torch.bool)
            negative = torch.ones_like(neg_sims, dtype=torch.bool)
        if not bool(positive.any()) and not bool(negative.any()):
            empty = torch.zeros(0, dtype=torch.long, device=sims.device)
            return {"loss": Terms(sims.new_zeros(0), empty, TermKind.ELEMENT)}
        pos_term = _mean_violation(self.margin_plus - pos_sims, positive & (pos_sims <= self.margin_plus))
        neg_term = _mean_violation(neg_sims - self.margin_minus, negative & (neg_sims >= self.margin_minus))
        return {"loss": Terms.reduced(self.lambda_plus * pos_term + self.lambda_minus * neg_term)}
