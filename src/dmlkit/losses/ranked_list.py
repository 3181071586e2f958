"""Ranked list loss (Wang et al., 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import LpDistance
from ..indices import pair_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values

__all__ = ["RankedListLoss"]


def _weighted_mean(values: Tensor, temperature: float, active: Tensor) -> Tensor:
    """Row-wise ``sum(w * values) / sum(w)`` over the ``active`` entries, ``w = exp(temperature * values)``;
    0 for a row with no active entry. Computed as a softmax, so large temperatures cannot overflow."""
    if temperature == 0:
        count = active.sum(1)
        total = torch.where(active, values, 0.0).sum(1)
        return total / count.clamp(min=1).to(values.dtype)
    logits = (values * temperature).masked_fill_(~active, float("-inf"))
    shift = logits.detach().amax(1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    weights = torch.exp(logits - shift)
    total = weights.sum(1)
    weighted = (weights * values).sum(1)
    return torch.where(total > 0, weighted / torch.where(total > 0, total, 1.0), 0.0)


def _weighted_mean_of_list(values: Tensor, rows: Tensor, num_rows: int, temperature: float) -> Tensor:
    """The same for a list of entries ``values`` of ``rows`` (all active), per row: ``(num_rows,)``."""
    logits = values.detach() * temperature
    shift = logits.new_zeros(num_rows).scatter_reduce_(0, rows, logits, "amax", include_self=False)
    weights = torch.exp(values * temperature - shift[rows])
    total = values.new_zeros(num_rows).index_add(0, rows, weights)
    weighted = values.new_zeros(num_rows).index_add(0, rows, weights * values)
    return torch.where(total > 0, weighted / torch.where(total > 0, total, 1.0), 0.0)


class RankedListLoss(BaseMetricLossFunction):
    """Ranked list loss (Wang, Hua, Kodirov, Hu, Garnier and Robertson, 2019, "Ranked List Loss for Deep
    Metric Learning", CVPR, arXiv:1903.03238).

    For each query, the positives farther than ``alpha - margin`` and the negatives closer than ``alpha`` are
    the violating ones. The positive part is their weighted mean excess ``d - (alpha - margin)`` with weights
    ``exp(Tp * (d - (alpha - margin)))``, the negative part the weighted mean shortfall ``alpha - d`` with
    weights ``exp(Tn * (alpha - d))``; a part with no violating pair is 0. Each query contributes
    ``(1 - imbalance) * positive part + imbalance * negative part`` and the default reducer averages over all
    queries. ``Tp = 0`` (the default) weights violating positives equally (the paper's "RLL-Simpler").

    Differences from pytorch-metric-learning, which follows the same definition: the weighted means are
    exact softmax-weighted means (pytorch-metric-learning adds ``1e-5`` per reference element to each
    denominator, which lowers every value slightly, and overflows for large temperatures, hence its warning
    above 5); pairs at distance exactly 0 are not dropped (pytorch-metric-learning ignores a negative that
    coincides with the query, the most violating one); ``ref_emb``/``ref_labels`` and ``indices_tuple`` are
    supported (a miner's pairs restrict the positive and negative sets) where pytorch-metric-learning rejects them;
    a similarity as ``distance`` is rejected (pytorch-metric-learning would read it as a distance).

    Args:
        margin: the gap ``m`` between the positive boundary ``alpha - m`` and the negative boundary ``alpha``,
            ``>= 0``.
        Tn: temperature of the negative weights.
        imbalance: weight ``lambda`` of the negative part, in ``[0, 1]``.
        alpha: the negative boundary; ``1 + margin / 2`` when ``None``.
        Tp: temperature of the positive weights.
        **kwargs: ``distance`` (a distance, not a similarity; default ``LpDistance()``), ``reducer``,
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> RankedListLoss(margin=0.4, Tn=10)(emb, torch.tensor([0, 0, 1, 1])).item()
        0.0
    """

    def __init__(
        self,
        margin: float,
        Tn: float,  # noqa: N803 (the paper's and pytorch-metric-learning's name)
        imbalance: float = 0.5,
        alpha: float | None = None,
        Tp: float = 0,  # noqa: N803
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        check_range(name, "Tn", Tn)
        check_range(name, "Tp", Tp)
        check_range(name, "imbalance", imbalance, low=0, high=1)
        if alpha is not None:
            check_range(name, "alpha", alpha)
        if self.distance.higher_is_closer:
            rule = "a distance (lower is closer), e.g. LpDistance()"
            raise TypeError(message(name, "distance", rule, type(self.distance).__name__))
        self.margin = margin
        self.imbalance = imbalance
        self.alpha = alpha if alpha is not None else 1 + margin / 2
        self.Tp = Tp
        self.Tn = Tn

    def get_default_distance(self) -> LpDistance:
        return LpDistance()

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        if labels is None and indices_tuple is None:
            raise ValueError(message(type(self).__name__, "labels", "given (or an `indices_tuple`)", None))
        mat = self.distance(embeddings, ref_emb)
        positive, negative = pair_masks(indices_tuple, labels, ref_labels, tuple(mat.shape))  # type: ignore[arg-type]
        # Positives violate beyond alpha - margin, negatives inside alpha; both as positive amounts. The
        # positives are few: they are scored from their list.
        rows, cols = torch.nonzero(positive, as_tuple=True)
        pos_excess = pair_values(mat, rows, cols) - (self.alpha - self.margin)
        violating = pos_excess > 0
        pos_part = _weighted_mean_of_list(pos_excess[violating], rows[violating], mat.shape[0], self.Tp)
        neg_shortfall = self.alpha - mat
        neg_part = _weighted_mean(neg_shortfall, self.Tn, negative & (neg_shortfall > 0))
        values = (1 - self.imbalance) * pos_part + self.imbalance * neg_part
        anchors = torch.arange(values.shape[0], device=values.device)
        return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
