from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_range, message
from ..types import Terms
from .base import BaseReducer, zero_loss

__all__ = ["ThresholdReducer"]


class ThresholdReducer(BaseReducer):
    """The mean of the values strictly inside ``(low, high)``; 0 when none is.

    Args:
        low: values must be ``> low`` to count (``None``: no lower bound).
        high: values must be ``< high`` to count (``None``: no upper bound).
        At least one of the two bounds is required.

    Example:
        >>> from dmlkit.types import Terms
        >>> ThresholdReducer(low=0.5)(Terms(torch.tensor([0.0, 1.0, 2.0]), torch.arange(3)), torch.zeros(3, 2))
        tensor(1.5000)
    """

    def __init__(self, low: float | None = None, high: float | None = None, collect_stats: bool = False) -> None:
        super().__init__(collect_stats=collect_stats)
        name = type(self).__name__
        if low is None and high is None:
            raise ValueError(message(name, "low", "given when `high` is None (at least one bound is needed)", None))
        if low is not None:
            check_range(name, "low", low)
        if high is not None:
            check_range(name, "high", high)
        if low is not None and high is not None and not low < high:
            raise ValueError(message(name, "high", f"greater than `low` ({low})", high))
        self.low = low
        self.high = high

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        values = terms.values
        keep: Tensor | None = None
        if self.low is not None:
            keep = values > self.low
        if self.high is not None:
            below = values < self.high
            keep = below if keep is None else keep & below
        assert keep is not None  # the constructor requires a bound
        count = keep.sum()
        if int(count) == 0:
            return zero_loss(embeddings)
        # A masked sum: boolean indexing would gather (and scatter back) millions of values.
        return torch.where(keep, values, values.new_zeros(())).sum() / count
