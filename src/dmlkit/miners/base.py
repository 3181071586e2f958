"""The miner family's base: picks informative pairs or triplets from a batch, without gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_embeddings, check_labels, check_reference, message
from ..distances import BaseDistance, LpDistance
from ..indices import check_indices_tuple
from ..types import Pairs, Triplets

__all__ = ["BaseMiner", "BaseTupleMiner"]


class BaseMiner(nn.Module):
    """Base of every miner.

    ``miner(embeddings, labels, ref_emb=None, ref_labels=None)`` validates its inputs, calls :meth:`mine`
    under ``torch.no_grad()``, checks the output and returns :class:`~dmlkit.types.Triplets` (a 3-tuple)
    or :class:`~dmlkit.types.Pairs` (a 4-tuple) of indices, ready for a loss's ``indices_tuple``.

    Args:
        distance: how embeddings are compared; defaults to the class's ``default_distance``.
        collect_stats: accepted for compatibility; statistics are not collected.
    """

    default_distance: ClassVar[Callable[[], BaseDistance]] = LpDistance

    def __init__(self, distance: BaseDistance | None = None, collect_stats: bool = False) -> None:
        super().__init__()
        if distance is not None and not isinstance(distance, BaseDistance):
            raise TypeError(
                message(
                    type(self).__name__, "distance", "a dmlkit distance (e.g. LpDistance())", type(distance).__name__
                )
            )
        self.distance = distance if distance is not None else self.get_default_distance()
        self.collect_stats = collect_stats

    def get_default_distance(self) -> BaseDistance:
        return type(self).default_distance()

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Pairs | Triplets:
        name = type(self).__name__
        check_embeddings(name, embeddings)
        if labels is None:
            raise ValueError(message(name, "labels", "given: miners need labels", None))
        check_labels(name, labels, embeddings.shape[0])
        labels = labels.to(embeddings.device)
        if ref_labels is not None:
            ref_labels = ref_labels.to(embeddings.device)
        check_reference(name, embeddings, labels, ref_emb, ref_labels)
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        assert ref_labels is not None  # check_reference requires ref_labels with ref_emb when labels are given
        with torch.no_grad():
            output = self.mine(embeddings.detach(), labels, ref_emb.detach(), ref_labels)
        checked = check_indices_tuple(name, tuple(output), embeddings.shape[0], ref_emb.shape[0], embeddings.device)
        assert checked is not None
        return Triplets(*checked) if len(checked) == 3 else Pairs(*checked)

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> tuple[Tensor, ...]:
        """Return ``(anchors, positives, negatives)`` or ``(anchors_pos, positives, anchors_neg, negatives)``."""
        raise NotImplementedError


BaseTupleMiner = BaseMiner
