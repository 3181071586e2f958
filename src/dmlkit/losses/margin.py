from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import Described, check_range, is_real_number, message
from ..indices import label_masks, ref_is_query
from ..reducers import DivisorReducer
from ..types import TermKind, Terms, empty_index
from .base import BaseMetricLossFunction
from .functional import pair_values

__all__ = ["MarginLoss"]


class MarginLoss(BaseMetricLossFunction):
    """Margin loss (Wu, Manmatha, Smola and Krähenbühl, 2017, "Sampling Matters in Deep Embedding Learning",
    arXiv:1706.07567).

    A boundary ``beta`` separates positive from negative pairs, with a margin on either side. For a
    distance ``d`` each triplet ``(a, p, n)`` costs::

        relu(d(a, p) - beta + margin) + relu(beta - d(a, n) + margin)

    (for a similarity ``s``: ``relu(beta - s(a, p) + margin) + relu(s(a, n) - beta + margin)``). As in
    pytorch-metric-learning the pairs come in triplets (all of them, ``triplets_per_anchor`` random ones per
    anchor, or a miner's), so a pair counts once per triplet it is in. The default reducer divides the sum
    over the triplets by the number of non-zero hinges (positive and negative counted apart), the paper's
    average over the pairs that violate the margin. With that reducer, all triplets (or a miner's, when they
    are many) are not scored one by one: each (anchor, reference) hinge is weighted by the number of triplets
    it is in.

    With ``learn_beta`` the boundary is an ``nn.Parameter`` trained with the embeddings (give it to the
    optimiser: ``loss.parameters()``); with ``num_classes`` there is one boundary per class, picked by the
    anchor's label. The paper's penalty ``nu * beta`` (against shrinking ``beta`` to satisfy every pair) is the
    sub-loss ``"beta_reg_loss"``: a scalar for a single ``beta``, or one ``nu * beta[label(a)]`` per triplet
    reduced like the triplets for per-class boundaries; it is 0 when ``beta`` is not learned. The hinges are
    the sub-loss ``"margin_loss"``, one value per triplet.

    Args:
        margin: half the width of the band around ``beta``, ``>= 0``.
        nu: weight of the ``beta`` penalty, ``>= 0``; used only when ``learn_beta``.
        beta: initial boundary between positive and negative distances (similarities).
        triplets_per_anchor: ``"all"`` triplets, or this many random triplets per anchor.
        learn_beta: make ``beta`` a learnable parameter.
        num_classes: one ``beta`` per class (labels must lie in ``[0, num_classes)``); ``None`` for a single
            one. A positive integer.
        generator: random source for ``triplets_per_anchor`` sampling.
        **kwargs: ``distance`` (default ``LpDistance()``), ``reducer`` (default ``DivisorReducer()``),
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(MarginLoss(margin=0.2, beta=1.2)(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0943
        >>> loss_fn = MarginLoss(learn_beta=True, nu=0.1, num_classes=2)
        >>> loss_fn(emb, torch.tensor([0, 0, 1, 1])).backward()
        >>> loss_fn.beta.grad.shape
        torch.Size([2])
    """

    default_reducer = DivisorReducer
    beta: Tensor

    def __init__(
        self,
        margin: float = 0.2,
        nu: float = 0,
        beta: float = 1.2,
        triplets_per_anchor: int | str = "all",
        learn_beta: bool = False,
        num_classes: int | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        check_range(name, "nu", nu, low=0)
        check_range(name, "beta", beta)
        valid_count = is_real_number(triplets_per_anchor, integer=True)
        if triplets_per_anchor != "all" and not (valid_count and triplets_per_anchor >= 1):  # type: ignore[operator]
            raise ValueError(message(name, "triplets_per_anchor", '"all" or a positive integer', triplets_per_anchor))
        if num_classes is not None and (
            not is_real_number(num_classes, integer=True) or num_classes < 1
        ):
            raise ValueError(message(name, "num_classes", "None or a positive integer", num_classes))
        self.margin = margin
        self.nu = nu
        self.learn_beta = bool(learn_beta)
        self.num_classes = num_classes
        self.triplets_per_anchor = triplets_per_anchor
        self.generator = generator
        size = (num_classes or 1,)
        if self.learn_beta:
            self.beta = nn.Parameter(torch.full(size, float(beta)))
        else:
            # Not in the state dict (as in pytorch-metric-learning), but moved by .to(device); float64 so that
            # float64 inputs see beta exactly as given.
            self.register_buffer("beta", torch.full(size, float(beta), dtype=torch.float64), persistent=False)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        per_class = self.num_classes is not None
        if per_class:
            self._check_class_labels(labels)
        beta = self.beta.to(device=embeddings.device, dtype=embeddings.dtype)
        mat = self.distance(embeddings, ref_emb)
        # The default reducer only needs sums and counts, which need no list of triplets.
        summed = type(self.reducer) is DivisorReducer
        if indices_tuple is None and self.triplets_per_anchor == "all":
            if summed:
                return self._all_triplets_summed(mat, beta, labels, ref_labels)
            return self._all_triplets(mat, beta, labels, ref_labels)
        a, p, n = self.triplets(labels, indices_tuple, ref_labels, self.triplets_per_anchor, self.generator)
        if a.numel() == 0:
            return self._empty(embeddings)
        if summed and 2 * a.numel() >= mat.numel():
            return self._given_triplets_summed(mat, beta, labels, a, p, n)
        anchor_beta = beta[labels[a]] if per_class else beta  # type: ignore[index]
        pos = self._pos_hinge(pair_values(mat, a, p), anchor_beta)
        neg = self._neg_hinge(pair_values(mat, a, n), anchor_beta)
        divisor = (pos > 0).sum() + (neg > 0).sum()
        terms = {"margin_loss": Terms(pos + neg, a, TermKind.TRIPLET, divisor)}
        terms["beta_reg_loss"] = self._beta_penalty(anchor_beta, a, divisor, embeddings)
        return terms

    # -------------------------------------------------------------------------------------------------

    def _pos_hinge(self, d_ap: Tensor, beta: Tensor) -> Tensor:
        return F.relu(self.distance.margin(d_ap, beta) + self.margin)

    def _neg_hinge(self, d_an: Tensor, beta: Tensor) -> Tensor:
        return F.relu(self.distance.margin(beta, d_an) + self.margin)

    def _check_class_labels(self, labels: Tensor | None) -> None:
        name = type(self).__name__
        if labels is None:
            raise ValueError(
                message(name, "labels", "given when `num_classes` is set (each anchor's class picks its beta)", None)
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):  # type: ignore[operator]
            raise ValueError(
                message(
                    name,
                    "labels",
                    f"in [0, num_classes) = [0, {self.num_classes}) to index the per-class beta",
                    Described(f"labels from {int(labels.min())} to {int(labels.max())}"),
                )
            )

    def _empty(self, embeddings: Tensor) -> dict[str, Terms]:
        empty = Terms(embeddings.new_zeros(0), empty_index(embeddings.device), TermKind.TRIPLET)
        return {"margin_loss": empty, "beta_reg_loss": Terms(empty.values, empty.anchors, TermKind.ELEMENT)}

    def _beta_penalty(self, anchor_beta: Tensor, anchors: Tensor, divisor: Tensor, embeddings: Tensor) -> Terms:
        """``nu * beta``: one scalar for a single beta, else one value per anchor entry, divided like the hinges."""
        if not self.learn_beta:
            return Terms(embeddings.new_zeros(0), empty_index(embeddings.device), TermKind.ELEMENT)
        if self.num_classes is None:
            return Terms.reduced(anchor_beta * self.nu)
        return Terms(anchor_beta * self.nu, anchors, TermKind.ELEMENT, divisor)

    def _all_triplets(
        self, mat: Tensor, beta: Tensor, labels: Tensor | None, ref_labels: Tensor | None
    ) -> dict[str, Terms]:
        """One value per triplet, scored as (positive pair) x (reference) rows rather than gathered triples."""
        positive, negative = label_masks(labels, ref_labels)  # type: ignore[arg-type]
        a, p = torch.nonzero(positive, as_tuple=True)
        keep = negative[a]
        if not bool(keep.any()):
            return self._empty(mat)
        row_beta = beta[labels] if self.num_classes is not None else beta.expand(mat.shape[0])  # type: ignore[index]
        pos = self._pos_hinge(mat[a, p], row_beta[a])
        neg_rows = self._neg_hinge(mat, row_beta.unsqueeze(1))[a]
        values = (pos.unsqueeze(1) + neg_rows)[keep]
        anchors = a.unsqueeze(1).expand_as(keep)[keep]
        divisor = ((pos > 0).unsqueeze(1) & keep).sum() + ((neg_rows > 0) & keep).sum()
        terms = {"margin_loss": Terms(values, anchors, TermKind.TRIPLET, divisor)}
        anchor_beta = row_beta[anchors] if self.num_classes is not None else beta
        terms["beta_reg_loss"] = self._beta_penalty(anchor_beta, anchors, divisor, mat)
        return terms

    def _all_triplets_summed(
        self, mat: Tensor, beta: Tensor, labels: Tensor | None, ref_labels: Tensor | None
    ) -> dict[str, Terms]:
        """Every triplet for a divisor reduction, in (query x reference) memory.

        Summed over all triplets, the positive hinge of ``(a, p)`` counts once per negative of ``a`` and the
        negative hinge of ``(a, n)`` once per positive of ``a``; so do their non-zero counts. The group holds one
        weighted sum per anchor, whose total and divisor equal those of the per-triplet values.
        """
        assert labels is not None  # the base requires labels when there is no indices_tuple
        same_set = ref_is_query(labels, ref_labels)
        ref = labels if ref_labels is None else ref_labels
        num_pos, num_neg = _label_counts(labels, ref, same_set)
        per_anchor = num_pos * num_neg
        if int(per_anchor.sum()) == 0:
            return self._empty(mat)
        dtype = mat.dtype
        positive = labels.unsqueeze(1) == ref.unsqueeze(0)
        if same_set:
            positive.fill_diagonal_(False)
        row_beta = beta[labels] if self.num_classes is not None else beta.expand(mat.shape[0])
        # One hinge per cell: relu(margin(d, beta) + m) on positive pairs, relu(margin(beta, d) + m) =
        # relu(-margin(d, beta) + m) elsewhere, each weighted by how many triplets it is in.
        pos_float = positive.to(dtype)
        sign = pos_float * 2 - 1
        hinge = (self.distance.margin(mat, row_beta.unsqueeze(1)) * sign).add_(self.margin).relu_()
        weight = pos_float.mul_((num_neg - num_pos).to(dtype).unsqueeze(1)).add_(num_pos.to(dtype).unsqueeze(1))
        if same_set:
            weight.fill_diagonal_(0)  # an element and itself form no pair
        sums = _row_dot(hinge, weight)
        # integer counts (a float32 sum of tens of millions of ones would not be exact)
        active = hinge > 0
        pos_active = (active & positive).sum(dim=1, dtype=torch.int32).long()
        neg_active = active.sum(dim=1, dtype=torch.int32).long() - pos_active
        if same_set:
            neg_active -= active.diagonal().long()
        divisor = (pos_active * num_neg).sum() + (neg_active * num_pos).sum()
        anchors = torch.arange(mat.shape[0], device=mat.device)
        terms = {"margin_loss": Terms(sums, anchors, TermKind.TRIPLET, divisor)}
        if self.learn_beta and self.num_classes is not None:
            penalty = row_beta * self.nu * per_anchor.to(dtype)
            terms["beta_reg_loss"] = Terms(penalty, anchors, TermKind.ELEMENT, divisor)
        else:
            terms["beta_reg_loss"] = self._beta_penalty(beta, anchors, divisor, mat)
        return terms

    def _given_triplets_summed(
        self, mat: Tensor, beta: Tensor, labels: Tensor | None, a: Tensor, p: Tensor, n: Tensor
    ) -> dict[str, Terms]:
        """Many given triplets (as many as half the matrix cells or more) for a divisor reduction.

        Each (anchor, reference) hinge is weighted by how many triplets list it as their positive pair, or as
        their negative pair; counting them is one pass over the triplets, and the rest is dense, without
        gathering or scattering a value per triplet.
        """
        num_rows, num_cols = mat.shape
        dtype = mat.dtype
        pos_count = torch.bincount(torch.add(p, a, alpha=num_cols), minlength=mat.numel()).view(mat.shape)
        neg_count = torch.bincount(torch.add(n, a, alpha=num_cols), minlength=mat.numel()).view(mat.shape)
        row_beta = beta[labels] if self.num_classes is not None else beta.expand(num_rows)  # type: ignore[index]
        excess = self.distance.margin(mat, row_beta.unsqueeze(1))
        pos = (excess + self.margin).relu_()
        neg = (self.margin - excess).relu_()
        sums = _row_dot(pos, pos_count.to(dtype)) + _row_dot(neg, neg_count.to(dtype))
        # integer counts (a float32 sum of tens of millions of ones would not be exact)
        divisor = pos_count.masked_fill_(pos <= 0, 0).sum() + neg_count.masked_fill_(neg <= 0, 0).sum()
        anchors = torch.arange(num_rows, device=mat.device)
        terms = {"margin_loss": Terms(sums, anchors, TermKind.TRIPLET, divisor)}
        if self.learn_beta and self.num_classes is not None:
            per_anchor = torch.bincount(a, minlength=num_rows).to(dtype)
            terms["beta_reg_loss"] = Terms(row_beta * self.nu * per_anchor, anchors, TermKind.ELEMENT, divisor)
        else:
            terms["beta_reg_loss"] = self._beta_penalty(beta, anchors, divisor, mat)
        return terms


def _row_dot(x: Tensor, y: Tensor) -> Tensor:
    """``(x * y).sum(dim=1)`` as batched dot products, without the product matrix."""
    return torch.bmm(x.unsqueeze(1), y.unsqueeze(2)).view(-1)


def _label_counts(labels: Tensor, ref_labels: Tensor, same_set: bool) -> tuple[Tensor, Tensor]:
    """Per query element, its number of positives and of negatives in the reference (from sorted labels,
    without a (query x reference) pass)."""
    sorted_ref = torch.sort(ref_labels).values
    same = torch.searchsorted(sorted_ref, labels, right=True) - torch.searchsorted(sorted_ref, labels)
    num_neg = ref_labels.shape[0] - same
    return (same - 1 if same_set else same), num_neg
