"""PNP loss: penalise only the negatives ranked before each positive (Li et al., 2022)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice, check_range, message
from ..distances import CosineSimilarity
from ..indices import pair_masks, ref_is_query
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .smooth_ap import row_lists, soft_rank_sums

__all__ = ["PNPLoss", "PNPVariant"]


class PNPVariant(str, enum.Enum):
    """How the soft count ``N`` of negatives ranked before a positive is penalised.

    ``"O"``: ``N``; ``"Ds"``: ``log(1 + N)``; ``"Dq"``: ``1 - 1 / (1 + N) ** alpha``;
    ``"Iu"``: ``(1 + N) log(1 + N)``; ``"Ib"``: ``(b N - log(1 + b N)) / b**2``.
    """

    DS = "Ds"
    DQ = "Dq"
    IU = "Iu"
    IB = "Ib"
    O = "O"  # noqa: E741


class PNPLoss(BaseMetricLossFunction):
    """PNP loss (Li, Gao, Xie, Wang, Liu, Zhou and Tian, 2022, "Rethinking the Optimization of Average
    Precision: Only Penalizing Negative Instances before Positive Ones is Enough", AAAI, arXiv:2102.04640).

    For a query ``q`` and each of its positives ``i``, ``N_i = sum_{j in negatives} sigmoid((s_qj - s_qi) / anneal)``
    is a smooth count of the negatives ranked before ``i``. The query's loss is the mean over its positives of
    ``f(N_i)``, with ``f`` chosen by ``variant`` (see :class:`PNPVariant`: ``"O"`` is the plain count, ``"Ds"``
    and ``"Dq"`` decreasing-derivative variants, ``"Iu"`` and ``"Ib"`` increasing-derivative ones), and the loss
    is the mean over queries that have a positive (already reduced, so ``reducer`` does not apply).

    When the batch is its own reference, a query with at least one positive counts itself as a positive too,
    as in the authors' implementation and pytorch-metric-learning. Beyond pytorch-metric-learning, which rejects
    both: with ``ref_emb``/``ref_labels`` the positives and negatives come from the reference set, and with
    ``indices_tuple`` exactly the mined positive and negative pairs are used (no self-positive is added).
    The ``(batch x batch x batch)`` sigmoids are evaluated in blocks of (query, positive) pairs, forward and
    backward, in ``O(batch * reference)`` memory.

    Args:
        b: the ``"Ib"`` variant's scale, ``> 0``.
        alpha: the ``"Dq"`` variant's exponent, ``> 0``.
        anneal: the sigmoid's temperature, ``> 0``.
        variant: one of ``"O"``, ``"Ds"``, ``"Dq"``, ``"Iu"``, ``"Ib"`` (or a :class:`PNPVariant`).
        **kwargs: ``distance`` (a ``CosineSimilarity``, the default), ``reducer``, ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(PNPLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0
    """

    VARIANTS = [v.value for v in PNPVariant]

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(
        self, b: float = 2, alpha: float = 1, anneal: float = 0.01, variant: str | PNPVariant = "O", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "b", b, low=0, low_inclusive=False)
        check_range(name, "alpha", alpha, low=0, low_inclusive=False)
        check_range(name, "anneal", anneal, low=0, low_inclusive=False)
        self.variant = check_choice(name, "variant", variant, PNPVariant)
        self.b = b
        self.alpha = alpha
        self.anneal = anneal

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        shape = (embeddings.shape[0], ref_emb.shape[0])
        if indices_tuple is not None:
            positive, negative = pair_masks(indices_tuple, labels, ref_labels, shape)
        elif labels is None:
            raise ValueError(message(type(self).__name__, "labels", "given (queries are ranked by label)", None))
        else:
            reference = labels if ref_labels is None else ref_labels
            same = labels.unsqueeze(1) == reference.unsqueeze(0)
            positive = same.clone()
            if ref_is_query(labels, ref_labels):
                # a query is its own positive when it has another one
                positive.diagonal().copy_(same.sum(1) > 1)
        num_pos = positive.sum(1)
        queries = torch.nonzero(num_pos > 0).flatten()
        if queries.numel() == 0:
            return {"loss": Terms(embeddings.new_zeros(0), queries, TermKind.ELEMENT)}
        scores = self.distance(embeddings, ref_emb) / self.anneal
        rows, cols = torch.nonzero(positive, as_tuple=True)
        if indices_tuple is not None:
            before = soft_rank_sums(scores, rows, cols, negative)
        else:
            # negatives = everything but the same-label set (a short per-query list): one unmasked pass
            same_rows, same_cols = torch.nonzero(same, as_tuple=True)
            table = row_lists(same_rows, same_cols, shape[0])
            before = soft_rank_sums(scores, rows, cols) - soft_rank_sums(scores, rows, cols, table)
            before = before.clamp_min(0)
        per_query = scores.new_zeros(shape[0]).index_add_(0, rows, self._penalty(before))[queries]
        loss = (per_query / num_pos[queries].to(per_query.dtype)).mean()
        if self.variant is PNPVariant.DQ:
            loss = 1 - loss
        return {"loss": Terms.reduced(loss)}

    def _penalty(self, n: Tensor) -> Tensor:
        v = self.variant
        if v is PNPVariant.DS:
            return torch.log1p(n)
        if v is PNPVariant.DQ:
            # the loss is 1 - mean(...): the per-positive quantity is the precision-like 1 / (1 + N)^alpha
            return (1 + n) ** (-self.alpha)
        if v is PNPVariant.IU:
            return (1 + n) * torch.log1p(n)
        if v is PNPVariant.IB:
            return (self.b * n - torch.log1p(self.b * n)) / self.b**2
        return n
