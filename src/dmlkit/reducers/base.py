"""The reducer family: turns groups of un-reduced ``Terms`` into one scalar loss."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..types import TermKind, Terms

__all__ = ["BaseReducer", "zero_loss"]


def zero_loss(embeddings: Tensor) -> Tensor:
    """A scalar 0 that stays connected to the graph, so ``backward()`` works and yields zero gradients."""
    return (embeddings * 0).sum()


class BaseReducer(nn.Module):
    """Base of every reducer.

    Subclasses implement :meth:`reduce`, which receives one non-empty group of terms. Empty groups reduce
    to a graph-connected zero and already-reduced scalars pass through unchanged, for every reducer.
    Called with a mapping of named groups, a reducer reduces each group and sums the results.

    Args:
        collect_stats: accepted for compatibility; statistics are not collected.
    """

    def __init__(self, collect_stats: bool = False) -> None:
        super().__init__()
        self.collect_stats = collect_stats

    def forward(self, terms: Terms | Mapping[str, Terms], embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        if isinstance(terms, Terms):
            return self.reduce_group(terms, embeddings, labels)
        total: Tensor | None = None
        for group in terms.values():
            value = self.reduce_group(group, embeddings, labels)
            total = value if total is None else total + value
        return total if total is not None else zero_loss(embeddings)

    def reduce_group(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        """Reduce one group, handling the already-reduced and empty cases for every subclass."""
        if terms.kind is TermKind.ALREADY_REDUCED:
            return terms.values.reshape(())
        if terms.is_empty:
            return zero_loss(embeddings)
        return self.reduce(terms, embeddings, labels)

    def reduce(self, terms: Terms, embeddings: Tensor, labels: Tensor | None) -> Tensor:
        """Reduce one non-empty group of terms to a scalar."""
        raise NotImplementedError
