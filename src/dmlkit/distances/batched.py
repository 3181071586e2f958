"""Block-wise evaluation of a distance matrix, for reference sets too large for one matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .._validation import check_embeddings, check_range, check_type, message
from .base import BaseDistance

__all__ = ["BatchedDistance"]

IterFn = Callable[[Tensor, int, int], Any]


class BatchedDistance(nn.Module):
    """Computes ``distance(query_emb, ref_emb)`` one block of ``batch_size`` query rows at a time.

    Calling it returns nothing: for every block it calls ``iter_fn(mat, start, end)`` with the
    ``(end - start, len(ref_emb))`` block of the matrix for query rows ``start:end``, so the caller can keep
    what it needs (e.g. the k nearest neighbours) without holding the full matrix. ``end`` never exceeds
    ``len(query_emb)``. Any attribute the wrapper lacks is read from the wrapped distance
    (``batched.is_inverted``, ``batched.smallest_dist`` ...).

    Args:
        distance: the distance to evaluate.
        iter_fn: called as ``iter_fn(mat, start, end)`` for every block; required before calling.
        batch_size: number of query rows per block, an integer ``>= 1``.

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> blocks = []
        >>> batched = BatchedDistance(LpDistance(), lambda mat, s, e: blocks.append((s, e, mat.shape)), batch_size=2)
        >>> batched(torch.randn(5, 3))
        >>> blocks
        [(0, 2, torch.Size([2, 5])), (2, 4, torch.Size([2, 5])), (4, 5, torch.Size([1, 5]))]
        >>> batched.is_inverted
        False
    """

    def __init__(self, distance: BaseDistance, iter_fn: IterFn | None = None, batch_size: int = 32) -> None:
        super().__init__()
        check_type("BatchedDistance", "distance", distance, BaseDistance, "a dmlkit distance (e.g. LpDistance())")
        check_range("BatchedDistance", "batch_size", batch_size, low=1, integer=True)
        if iter_fn is not None and not callable(iter_fn):
            raise TypeError(message("BatchedDistance", "iter_fn", "callable as iter_fn(mat, start, end)", iter_fn))
        self.distance = distance
        self.iter_fn = iter_fn
        self.batch_size = batch_size

    def forward(self, query_emb: Tensor, ref_emb: Tensor | None = None) -> None:
        """Call ``iter_fn`` on each block of the ``(len(query_emb), len(ref_emb))`` matrix, in order."""
        if self.iter_fn is None:
            raise ValueError(
                message("BatchedDistance", "iter_fn", "set (pass iter_fn=... or assign .iter_fn) before calling", None)
            )
        check_embeddings("BatchedDistance", query_emb, "query_emb")
        reference = query_emb if ref_emb is None else ref_emb
        n = query_emb.shape[0]
        for start in range(0, n, self.batch_size):
            end = min(start + self.batch_size, n)
            self.iter_fn(self.distance(query_emb[start:end], reference), start, end)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "distance":
                raise
            return getattr(self.distance, name)

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}"
