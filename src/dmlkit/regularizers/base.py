"""The regularizer family: a penalty on a matrix of embeddings or class weights, reduced to a scalar."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_embeddings, message
from ..distances import BaseDistance, LpDistance
from ..reducers import BaseReducer, MeanReducer
from ..types import Terms

__all__ = ["BaseRegularizer"]


class BaseRegularizer(nn.Module):
    """Base of every regularizer: ``regularizer(x)`` with ``x`` of shape ``(N, D)`` returns a scalar.

    Subclasses implement :meth:`compute_terms`, returning one group of per-row ``Terms``.

    Args:
        distance: the distance some regularizers use; defaults to the class's ``default_distance``.
        reducer: how the per-row penalties become a scalar; defaults to the class's ``default_reducer``.
        collect_stats: accepted for compatibility; statistics are not collected.
    """

    default_distance: ClassVar[Callable[[], BaseDistance]] = LpDistance
    default_reducer: ClassVar[Callable[[], BaseReducer]] = MeanReducer

    def __init__(
        self,
        distance: BaseDistance | None = None,
        reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if distance is not None and not isinstance(distance, BaseDistance):
            raise TypeError(message(name, "distance", "a dmlkit distance (e.g. LpDistance())", type(distance).__name__))
        if reducer is not None and not isinstance(reducer, BaseReducer):
            raise TypeError(message(name, "reducer", "a dmlkit reducer (e.g. MeanReducer())", type(reducer).__name__))
        self.distance = distance if distance is not None else type(self).default_distance()
        self.reducer = reducer if reducer is not None else type(self).default_reducer()
        self.collect_stats = collect_stats

    def forward(self, x: Tensor) -> Tensor:
        check_embeddings(type(self).__name__, x, "x")
        terms = self.compute_terms(x)
        return self.reducer(terms, x, torch.arange(x.shape[0], device=x.device))

    def compute_terms(self, x: Tensor) -> Terms:
        raise NotImplementedError
