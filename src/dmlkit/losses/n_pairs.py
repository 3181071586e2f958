from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from .._validation import message
from ..distances import DotProductSimilarity
from ..indices import convert_to_pairs, label_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction

__all__ = ["NPairsLoss"]


def _first_pair_per_label(anchors: Tensor, positives: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each distinct anchor label, the first listed positive pair whose anchor has it, ordered by label."""
    if anchors.numel() == 0:
        return anchors, positives
    _, group = torch.unique(labels[anchors], return_inverse=True)
    position = torch.arange(anchors.numel(), device=anchors.device)
    first = torch.full((int(group.max()) + 1,), anchors.numel(), dtype=torch.long, device=anchors.device)
    first = first.scatter_reduce(0, group, position, reduce="amin")
    return anchors[first], positives[first]


class NPairsLoss(BaseMetricLossFunction):
    """Multi-class N-pair loss (Sohn, 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss
    Objective", NeurIPS 29).

    One positive pair ``(a_k, p_k)`` is taken per class: for each label, the first positive pair (in
    row-major order, or in the miner's order) whose anchor has that label. Each anchor then classifies its
    own positive among the ``N`` positives of all the classes::

        -log( exp(s(a_k, p_k)) / sum_{l=1..N} exp(s(a_k, p_l)) )

    with ``s`` the similarity (the negated distance for distances); values are per anchor. The choice of
    pairs is deterministic. Classes with a single sample have no pair and are left out. The paper adds an
    L2 penalty on the embeddings: pass ``embedding_regularizer=LpRegularizer()`` for it. ``ref_emb`` is not
    supported: the pairs and the classification targets both come from the one labelled batch.

    Args:
        **kwargs: ``distance`` (default ``DotProductSimilarity()``, on L2-normalised embeddings), ``reducer``
            (default ``MeanReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> round(NPairsLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.4093
    """

    default_distance = DotProductSimilarity
    supports_ref_emb: ClassVar[bool] = False

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
        if indices_tuple is None:
            # only the positive pairs are needed: skip the (much larger) list of negative pairs
            a, p = torch.nonzero(label_masks(labels)[0], as_tuple=True)
        else:
            a, p = convert_to_pairs(indices_tuple, labels)[:2]
        a, p = _first_pair_per_label(a, p, labels)
        if a.numel() == 0:
            return {"loss": Terms(embeddings.new_zeros(0), a, TermKind.ELEMENT)}
        sim = self.distance(embeddings[a], embeddings[p])
        if not self.distance.higher_is_closer:
            sim = -sim
        # cross entropy with target k for row k (F.cross_entropy's loss kernel stalls on small inputs)
        values = -torch.diagonal(torch.log_softmax(sim, dim=1))
        return {"loss": Terms(values, a, TermKind.ELEMENT)}
