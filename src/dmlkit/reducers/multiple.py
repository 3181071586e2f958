from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from .._validation import _Described, check_type, message
from ..types import Terms
from .base import BaseReducer, zero_loss
from .mean import MeanReducer

__all__ = ["MultipleReducers"]


class MultipleReducers(BaseReducer):
    """Reduces each named group of terms with its own reducer and sums the results.

    A loss with several groups (e.g. ``"pos_loss"`` and ``"neg_loss"``) can average one and threshold the
    other. Groups without an entry in ``reducers`` use ``default_reducer``.

    Args:
        reducers: group name -> reducer.
        default_reducer: the reducer of every other group; a fresh ``MeanReducer()`` when ``None``.
        collect_stats: accepted for compatibility; statistics are not collected.

    Example:
        >>> from dmlkit.reducers import SumReducer
        >>> from dmlkit.types import Terms
        >>> reducer = MultipleReducers({"pos_loss": SumReducer()})
        >>> groups = {"pos_loss": Terms(torch.tensor([1.0, 2.0]), torch.arange(2)),
        ...           "neg_loss": Terms(torch.tensor([1.0, 2.0]), torch.arange(2))}
        >>> reducer(groups, torch.zeros(2, 3))
        tensor(4.5000)
    """

    def __init__(
        self,
        reducers: Mapping[str, BaseReducer],
        default_reducer: BaseReducer | None = None,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(collect_stats=collect_stats)
        name = "MultipleReducers"
        if not isinstance(reducers, Mapping):
            raise TypeError(message(name, "reducers", "a dict of name -> reducer", _Described(type(reducers).__name__)))
        for key, reducer in reducers.items():
            check_type(name, f"reducers[{key!r}]", reducer, BaseReducer, "a dmlkit reducer (e.g. MeanReducer())")
        if default_reducer is not None:
            check_type(name, "default_reducer", default_reducer, BaseReducer, "a dmlkit reducer (e.g. MeanReducer())")
        self.reducers = nn.ModuleDict(dict(reducers))
        self.default_reducer = default_reducer if default_reducer is not None else MeanReducer()

    def forward(self, terms: Terms | Mapping[str, Terms], embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        if isinstance(terms, Terms):
            return self.default_reducer(terms, embeddings, labels)
        total: Tensor | None = None
        for key, group in terms.items():
            # ModuleDict has no .get()
            reducer = self.reducers[key] if key in self.reducers else self.default_reducer  # noqa: SIM401
            value = reducer({key: group}, embeddings, labels)
            total = value if total is None else total + value
        return total if total is not None else zero_loss(embeddings)

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        return self.default_reducer(terms, embeddings, labels)
