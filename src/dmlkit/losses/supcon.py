from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..indices import pair_masks, ref_is_query
from ..reducers import AvgNonZeroReducer
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values

__all__ = ["SupConLoss"]


class SupConLoss(BaseMetricLossFunction):
    """Supervised contrastive loss (Khosla et al., 2020, arXiv:2004.11362), the "L_out" form.

    For every anchor ``i`` with positives ``P(i)`` (``|P(i)| > 0``) and candidates ``A(i) = P(i) + N(i)``
    (its positives and negatives; every other sample when pairs come from the labels)::

        -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T) )
            = logsumexp_{a in A(i)}(s_ia / T) - mean_{p in P(i)}(s_ip / T)

    with ``s`` the similarity (the negated distance for distances). An anchor without positives
    contributes 0 (and is then skipped by the default ``AvgNonZeroReducer``). When the pairs contain no
    negative at all (a single class), the loss is 0. Pairs from a miner restrict ``P(i)`` and ``A(i)``;
    a pair listed twice counts once.

    Args:
        temperature: ``T``, ``> 0``.
        **kwargs: ``distance`` (default ``CosineSimilarity()``), ``reducer`` (default
            ``AvgNonZeroReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(SupConLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0638
    """

    default_distance = CosineSimilarity
    default_reducer = AvgNonZeroReducer

    def __init__(self, temperature: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "temperature", temperature, low=0, low_inclusive=False)
        self.temperature = temperature

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = pair_masks(indices_tuple, labels, ref_labels, tuple(mat.shape))  # type: ignore[arg-type]
        anchors = torch.arange(mat.shape[0], device=mat.device)
        if not (bool(positive.any()) and bool(negative.any())):
            return {"loss": Terms(mat.new_zeros(0), anchors[:0], TermKind.ELEMENT)}
        scale = 1.0 / self.temperature if self.distance.higher_is_closer else -1.0 / self.temperature
        logits = mat * scale
        if indices_tuple is None:
            # from labels, the candidates A(i) are every reference but the query itself
            if ref_is_query(labels, ref_labels):  # type: ignore[arg-type]
                logits.fill_diagonal_(float("-inf"))
        else:
            candidates = positive | negative
            # a row without candidates has no positive either; leaving it whole keeps its softmax finite
            candidates |= ~candidates.any(dim=1, keepdim=True)
            logits.masked_fill_(~candidates, float("-inf"))
        # log of each candidate's softmax probability in one fused pass, then the mean over each row's positives
        log_prob = torch.log_softmax(logits, dim=1)
        rows, cols = torch.nonzero(positive, as_tuple=True)
        num_pos = torch.bincount(rows, minlength=mat.shape[0]).clamp(min=1)
        pos_sum = logits.new_zeros(mat.shape[0]).index_add(0, rows, pair_values(log_prob, rows, cols))
        return {"loss": Terms(-pos_sum / num_pos, anchors, TermKind.ELEMENT)}
