from __future__ import annotations

from torch import Tensor

from ..types import Terms
from .base import BaseReducer

__all__ = ["SumReducer"]


class SumReducer(BaseReducer):
    """The sum of all values.

    Example:
        >>> from dmlkit.types import Terms
        >>> SumReducer()(Terms(torch.tensor([1.0, 0.0, 2.0]), torch.arange(3)), torch.zeros(3, 2))
        tensor(3.)
    """

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        return terms.values.sum()
