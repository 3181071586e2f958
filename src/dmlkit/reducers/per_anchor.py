from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import check_type, message
from ..types import TermKind, Terms
from .base import BaseReducer
from .mean import MeanReducer

__all__ = ["PerAnchorReducer"]

AggregationFn = Callable[[Tensor, Tensor], Tensor]


class PerAnchorReducer(BaseReducer):
    """Averages the pair (or triplet) values of each anchor, then reduces the per-anchor values.

    For a group of pairs or triplets, element ``i`` of the query batch gets the mean of the values whose
    anchor is ``i`` (0 when it anchors none); these ``len(embeddings)`` per-anchor values are then reduced
    by ``reducer`` as an element group. Every anchor thus weighs the same, however many pairs it has.
    Element groups go straight to ``reducer``.

    The per-anchor mean is a scatter-add over the values (memory linear in their number). Repeated
    ``(anchor, other)`` pairs each count, as every other reducer counts them. (pytorch-metric-learning writes
    the pairs into an (anchor, other) matrix, so a repeated pair counts once in its value, yet each copy
    still receives that entry's gradient; the two agree wherever no pair repeats.)

    Args:
        reducer: reduces the per-anchor values; a fresh ``MeanReducer()`` when ``None``.
        aggregation_func: replaces the per-anchor mean. It is called as ``aggregation_func(x, num_per_row)``
            with ``x`` a ``(len(embeddings), width)`` matrix whose row ``i`` holds anchor ``i``'s values first,
            then zeros (``width >= len(embeddings)``), and ``num_per_row`` the number of values per row
            (int64); it returns one value per row. Building ``x`` costs memory quadratic in the batch.
            Unlike pytorch-metric-learning, the columns are not indexed by the pair's other element (the
            terms do not carry it) and triplets are supported, so the function must not depend on the order
            of a row's values (sum, mean, max ... do not).
        collect_stats: accepted for compatibility; statistics are not collected.

    Example:
        >>> from dmlkit.types import TermKind, Terms
        >>> terms = Terms(torch.tensor([1.0, 3.0, 4.0]), torch.tensor([0, 0, 1]), TermKind.POS_PAIR)
        >>> PerAnchorReducer()(terms, torch.zeros(3, 2))  # anchors 0, 1, 2 -> 2, 4, 0
        tensor(2.)
    """

    def __init__(
        self,
        reducer: BaseReducer | None = None,
        aggregation_func: AggregationFn | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(collect_stats=collect_stats)
        if reducer is not None:
            check_type("PerAnchorReducer", "reducer", reducer, BaseReducer, "a dmlkit reducer (e.g. MeanReducer())")
        if aggregation_func is not None and not callable(aggregation_func):
            raise TypeError(
                message(
                    "PerAnchorReducer",
                    "aggregation_func",
                    "None or callable as aggregation_func(x, num_per_row)",
                    aggregation_func,
                )
            )
        self.reducer = reducer if reducer is not None else MeanReducer()
        self.aggregation_func = aggregation_func

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        if terms.kind is TermKind.ELEMENT:
            return self.reducer(terms, embeddings, labels)
        values, anchors = terms.values, terms.anchors
        assert anchors is not None  # guaranteed by Terms for every kind but ALREADY_REDUCED
        num_anchors = embeddings.shape[0]
        counts = torch.bincount(anchors, minlength=num_anchors)
        if self.aggregation_func is None:
            sums = values.new_zeros(num_anchors).index_add(0, anchors, values)
            per_anchor = sums / counts.clamp(min=1).to(values.dtype)
        else:
            per_anchor = self.aggregation_func(_rows_by_anchor(values, anchors, counts, num_anchors), counts)
        element_terms = Terms(per_anchor, torch.arange(num_anchors, device=values.device), TermKind.ELEMENT)
        return self.reducer(element_terms, embeddings, labels)


def _rows_by_anchor(values: Tensor, anchors: Tensor, counts: Tensor, num_anchors: int) -> Tensor:
    """A zero-padded matrix whose row ``i`` starts with the values anchored at ``i``, in their given order."""
    order = torch.sort(anchors, stable=True).indices
    sorted_anchors = anchors[order]
    row_starts = torch.cumsum(counts, dim=0) - counts
    column = torch.arange(anchors.numel(), device=anchors.device) - row_starts[sorted_anchors]
    width = max(num_anchors, int(counts.max()))
    rows = values.new_zeros(num_anchors, width)
    return rows.index_put((sorted_anchors, column), values[order])
