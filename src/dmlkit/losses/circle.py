from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range, check_type
from ..distances import CosineSimilarity
from ..reducers import AvgNonZeroReducer
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import masked_logsumexp
from .generalized_lifted_structure import checked_pair_masks

__all__ = ["CircleLoss"]


class CircleLoss(BaseMetricLossFunction):
    """Circle loss for pair-wise labels (Sun et al., 2020, "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR, arXiv:2002.10857).

    Each similarity is weighted by how far it is from its optimum, so pairs far from it get larger gradients.
    For anchor ``a`` with positive similarities ``s_p`` and negative similarities ``s_n`` (cosine)::

        loss_a = log(1 + sum_n exp(gamma * alpha_n * (s_n - delta_n)) * sum_p exp(-gamma * alpha_p * (s_p - delta_p)))
        alpha_p = relu(1 + m - s_p),  alpha_n = relu(s_n + m),  delta_p = 1 - m,  delta_n = m

    The weights ``alpha`` are constants for the gradient, as in the paper. The loss is evaluated as
    ``softplus(logsumexp_n + logsumexp_p)``, so it stays finite for any ``gamma``. An anchor without a
    positive or without a negative contributes 0; the default reducer averages the non-zero values.

    Args:
        m: the relaxation margin (the paper uses 0.25 for faces and re-identification, 0.4 for fine-grained
            retrieval).
        gamma: the scale, ``> 0`` (the paper uses 256, 128 and 80 in those settings).
        **kwargs: ``distance`` (must be a :class:`~dmlkit.distances.CosineSimilarity`, the default),
            ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
        >>> CircleLoss()(emb, torch.tensor([0, 0, 1, 1])).item() < 1e-4
        True
        >>> round(CircleLoss(m=0.4, gamma=80)(emb, torch.tensor([0, 1, 0, 1])).item(), 2)
        373.61
    """

    default_distance = CosineSimilarity
    default_reducer = AvgNonZeroReducer

    def __init__(self, m: float = 0.4, gamma: float = 80, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_type(name, "distance", self.distance, CosineSimilarity, "a CosineSimilarity (the loss is defined on it)")
        check_range(name, "m", m)
        check_range(name, "gamma", gamma, low=0, low_inclusive=False)
        self.m = m
        self.gamma = gamma

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = checked_pair_masks(type(self).__name__, indices_tuple, labels, ref_labels, mat.shape)
        m, gamma = self.m, self.gamma
        with torch.no_grad():
            # logit = weight * s - bias, with weight = -gamma * alpha_p, bias = weight * delta_p on positive
            # cells (gamma * alpha_n and its delta_n on the others); cells in neither mask are never read.
            detached = mat.detach()
            weight = torch.where(positive, (1 + m) - detached, detached + m).clamp_(min=0)
            weight.mul_(torch.where(positive, detached.new_tensor(-gamma), detached.new_tensor(gamma)))
            bias = weight * torch.where(positive, detached.new_tensor(1 - m), detached.new_tensor(m))
        logits = weight * mat - bias
        pos = masked_logsumexp(logits, positive, add_one=False).squeeze(1)
        neg = masked_logsumexp(logits, negative, add_one=False).squeeze(1)
        valid = positive.any(dim=1) & negative.any(dim=1)
        values = torch.where(valid, F.softplus(pos + neg), torch.zeros_like(pos))
        anchors = torch.arange(mat.shape[0], device=mat.device)
        return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
