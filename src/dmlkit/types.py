"""Plain data types passed between the families.

``Pairs`` and ``Triplets`` are NamedTuples, so they are also the 4-tuples ``(a1, p, a2, n)`` and 3-tuples
``(a, p, n)`` that pytorch-metric-learning code expects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Pairs", "Triplets", "LabelPairs", "IndicesTuple", "TermKind", "Terms", "Neighbors"]


class Pairs(NamedTuple):
    """Positive pairs ``(anchors_pos[i], positives[i])`` and negative pairs ``(anchors_neg[j], negatives[j])``."""

    anchors_pos: Tensor
    positives: Tensor
    anchors_neg: Tensor
    negatives: Tensor

    @property
    def num_pos(self) -> int:
        return int(self.anchors_pos.numel())

    @property
    def num_neg(self) -> int:
        return int(self.anchors_neg.numel())


class LabelPairs(NamedTuple):
    """Every pair of a query and a reference element by labels (positive: the same label, negative: another),
    except the positive pairs ``(i, excluded_ref[i])``: the pairs that
    :class:`~dmlkit.wrappers.CrossBatchMemory` scores when each query's own copy is in the memory, described
    instead of listed. A loss whose ``accepts_label_pairs`` is True forms these pairs itself (tile by tile);
    any other loss receives them listed (:func:`dmlkit.indices.list_label_pairs`).

    Example:
        >>> LabelPairs(torch.tensor([2, 0])).excluded_ref.tolist()
        [2, 0]
    """

    excluded_ref: Tensor


class Triplets(NamedTuple):
    """Triplets ``(anchors[i], positives[i], negatives[i])``."""

    anchors: Tensor
    positives: Tensor
    negatives: Tensor

    @property
    def num_triplets(self) -> int:
        return int(self.anchors.numel())


IndicesTuple = tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]


class TermKind(str, enum.Enum):
    """What each value of a ``Terms`` group belongs to; reducers that group values need it."""

    ELEMENT = "element"
    POS_PAIR = "pos_pair"
    NEG_PAIR = "neg_pair"
    TRIPLET = "triplet"
    ALREADY_REDUCED = "already_reduced"


@dataclass(frozen=True)
class Terms:
    """A group of un-reduced loss values.

    Args:
        values: 1-D tensor of per-element / per-pair / per-triplet losses, or a 0-D tensor when
            ``kind`` is ``ALREADY_REDUCED``.
        anchors: for each value, the index of the query-batch element it belongs to (the element itself,
            or the anchor of a pair or triplet). ``None`` only for already-reduced values.
        kind: what a value stands for.
        divisor: for ``DivisorReducer``: the sum of the values is divided by it.
    """

    values: Tensor
    anchors: Tensor | None = None
    kind: TermKind = TermKind.ELEMENT
    divisor: float | Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind is TermKind.ALREADY_REDUCED:
            if self.values.numel() != 1:
                raise ValueError(
                    f"Terms: already-reduced values must hold one number, got shape {tuple(self.values.shape)}."
                )
            return
        if self.values.ndim != 1:
            raise ValueError(f"Terms: `values` must be 1-D, got shape {tuple(self.values.shape)}.")
        if self.anchors is None or self.anchors.shape != self.values.shape:
            got = None if self.anchors is None else tuple(self.anchors.shape)
            raise ValueError(f"Terms: `anchors` must have the shape of `values` {tuple(self.values.shape)}, got {got}.")

    @classmethod
    def reduced(cls, value: Tensor) -> Terms:
        """A scalar that reducers pass through unchanged."""
        if value.numel() != 1:
            raise ValueError(f"Terms: already-reduced values must hold one number, got shape {tuple(value.shape)}.")
        return cls(value.reshape(()), None, TermKind.ALREADY_REDUCED)

    @property
    def is_empty(self) -> bool:
        return self.kind is not TermKind.ALREADY_REDUCED and self.values.numel() == 0

    def __getitem__(self, key: str) -> Any:
        """pytorch-metric-learning's keys for a loss group, for code written against its ``DoNothingReducer``.

        ``"losses"`` is ``values``, ``"reduction_type"`` the kind's name (``"element"``, ``"pos_pair"``...), and
        ``"indices"`` the elements of element terms. Pair and triplet terms keep only their anchors (in
        ``anchors``), not the full index tuples that pytorch-metric-learning lists there, so ``"indices"``
        raises a ``KeyError`` that says so.

        Example:
            >>> terms = Terms(torch.tensor([0.5, 0.0]), torch.tensor([3, 1]))
            >>> terms["losses"], terms["reduction_type"], terms["indices"]
            (tensor([0.5000, 0.0000]), 'element', tensor([3, 1]))
        """
        if key == "losses":
            return self.values
        if key == "reduction_type":
            return self.kind.value
        if key == "indices":
            if self.kind in (TermKind.ELEMENT, TermKind.ALREADY_REDUCED):
                return self.anchors
            raise KeyError(
                f"Terms: {self.kind.value} terms keep only their anchors (`terms.anchors`), not the "
                "(anchor, other...) index tuple that pytorch-metric-learning returns under 'indices'."
            )
        raise KeyError(f"Terms: no key {key!r}; the keys are 'losses', 'indices' and 'reduction_type'.")


class Neighbors(NamedTuple):
    """k-nearest-neighbour results: ``distances[i, j]`` to the ``j``-th neighbour ``indices[i, j]`` of query ``i``."""

    distances: Tensor
    indices: Tensor


def empty_index(device: torch.device | None = None) -> Tensor:
    return torch.empty(0, dtype=torch.long, device=device)
