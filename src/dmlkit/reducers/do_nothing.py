from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..types import Terms
from .base import BaseReducer

__all__ = ["DoNothingReducer"]


class DoNothingReducer(BaseReducer):
    """Returns the terms unchanged, for code that wants the un-reduced per-element, per-pair or per-triplet losses.

    Called with a mapping ``{name: Terms}`` (as a loss does) it returns that same mapping; called with one
    ``Terms`` group it returns that group. A loss built with it therefore returns its named groups of
    ``Terms`` instead of a scalar. Each group also answers pytorch-metric-learning's keys: ``out[name]["losses"]``
    and ``out[name]["reduction_type"]`` (see :meth:`~dmlkit.types.Terms.__getitem__`).

    Example:
        >>> from dmlkit.types import Terms
        >>> terms = Terms(torch.tensor([1.0, 2.0]), torch.arange(2))
        >>> DoNothingReducer()({"loss": terms}, torch.zeros(2, 3))["loss"] is terms
        True
    """

    def forward(  # type: ignore[override]
        self, terms: Terms | Mapping[str, Terms], embeddings: Tensor, labels: Tensor | None = None
    ) -> Terms | Mapping[str, Terms]:
        return terms

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        raise TypeError("DoNothingReducer: terms are returned un-reduced, so there is no scalar to compute.")
