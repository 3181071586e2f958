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

    Args:
        softmax_scale: the inverse temperature ``scale``, ``> 0``.
        **kwargs: ``distance`` (default ``LpDistance(power=2)``), ``reducer`` (default ``MeanReducer()``),
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(NCALoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.4302
    """

    def __init__(self, softmax_scale: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "softmax_scale", softmax_scale, low=0, low_inclusive=False)
        self.softmax_scale = softmax_scale

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
        mat = self.distance(embeddings, ref_emb)
        logits = mat * (self.softmax_scale if self.distance.higher_is_closer else -self.softmax_scale)
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
        weights = miner_weights(indices_tuple, size, mat.dtype, mat.device, anchors_only=not same_set)
        if weights is not None:
            values = values * weights[keep]
        return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
