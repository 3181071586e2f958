"""Groups of near-duplicate embeddings: the connected components of the "within a threshold" graph."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_embeddings, check_range, message
from .embedding_index import EmbeddingIndex, IndexMetric

__all__ = ["find_near_duplicates", "DuplicateBackend"]

_OWNER = "find_near_duplicates"


class DuplicateBackend(str, enum.Enum):
    """How :func:`find_near_duplicates` searches: ``EXACT`` in torch, ``FAISS`` with faiss's exhaustive
    (flat) index, so both find the same neighbours up to float32 rounding at the threshold."""

    EXACT = "exact"
    FAISS = "faiss"


def find_near_duplicates(
    embeddings: Tensor | np.ndarray,
    threshold: float,
    *,
    metric: IndexMetric | str = "cosine",
    backend: DuplicateBackend | str = "exact",
    query_batch_size: int = 4096,
    block_size: int = 4096,
) -> list[list[int]]:
    """Group the rows that are near duplicates of each other, directly or through a chain of them.

    Two rows are linked when their cosine similarity (or inner product) is ``>= threshold``, or their
    Euclidean distance ``<= threshold`` for ``metric="l2"``; the groups are the connected components of that
    graph (the single-linkage clusters cut at ``threshold``, found by union-find: Tarjan, 1975), so two rows
    of a group may be farther apart than the threshold when rows between them link them. The neighbours of
    each row come from :meth:`EmbeddingIndex.search_radius`.

    Args:
        embeddings: ``(N, D)`` finite floating-point rows (torch or NumPy).
        threshold: the linking cut: a cosine similarity in ``[-1, 1]``, an inner product (any finite number)
            or a Euclidean distance ``>= 0``.
        metric: ``"cosine"`` (default), ``"inner_product"`` or ``"l2"``.
        backend: ``"exact"`` (torch; float64 rows are compared in float64) or ``"faiss"`` (faiss's exhaustive
            index in float32; it compares strictly, so a pair exactly at the threshold may differ).
        query_batch_size: rows whose neighbours are searched at once, ``>= 1`` (bounds the memory).
        block_size: stored rows per block of the exact search, ``>= 1``.

    Returns:
        The groups of at least two rows: each a sorted list of row indices, the groups sorted by their first
        row. Rows without a near duplicate are in no group.

    Raises:
        ValueError: embeddings that are not 2-D or hold NaN / Inf, a threshold outside its range or NaN, an
            unknown metric or backend.
        TypeError: embeddings that are not floating point, a threshold that is not a number.
        MissingDependencyError: ``backend="faiss"`` without faiss installed.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.05, 1.0], [-1.0, 0.0]])
        >>> find_near_duplicates(x, 0.99)
        [[0, 1], [2, 3]]
    """
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(embeddings)
    check_embeddings(_OWNER, embeddings)
    measure = check_choice(_OWNER, "metric", metric, IndexMetric)
    search = check_choice(_OWNER, "backend", backend, DuplicateBackend)
    check_range(_OWNER, "query_batch_size", query_batch_size, low=1, integer=True)
    check_range(_OWNER, "block_size", block_size, low=1, integer=True)
    if measure is IndexMetric.COSINE:
        check_range(_OWNER, "threshold", threshold, low=-1, high=1)
    elif measure is IndexMetric.L2:
        check_range(_OWNER, "threshold", threshold, low=0)
    else:
        check_range(_OWNER, "threshold", threshold)
    if isinstance(threshold, float) and not np.isfinite(threshold):
        raise ValueError(message(_OWNER, "threshold", "finite", threshold))
    n = embeddings.shape[0]
    if n < 2:
        return []
    index_backend = "exact" if search is DuplicateBackend.EXACT else "faiss-flat"
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    index = EmbeddingIndex(
        embeddings.shape[1], measure, index_backend, block_size=block_size, dtype=dtype, device=embeddings.device
    )
    index.add(embeddings)
    sources, targets = [], []
    for start in range(0, n, query_batch_size):
        found = index.search_radius(embeddings[start : start + query_batch_size], threshold)
        counts = torch.tensor([result.ids.shape[0] for result in found], dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(start, start + len(found)), counts)
        ids = torch.cat([result.ids.cpu() for result in found]) if found else torch.empty(0, dtype=torch.long)
        sources.append(rows)
        targets.append(ids)
    return _components(torch.cat(sources).numpy(), torch.cat(targets).numpy(), n)


def _components(sources: np.ndarray, targets: np.ndarray, n: int) -> list[list[int]]:
    """The connected components of at least two nodes of the undirected graph with these edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keep = sources != targets
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (sources[keep], targets[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="weak")
    sizes = np.bincount(labels)
    grouped = np.flatnonzero(sizes[labels] >= 2)
    if grouped.size == 0:
        return []
    # stable sort by component keeps the rows ascending inside each group
    order = grouped[np.argsort(labels[grouped], kind="stable")]
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    groups: list[Any] = np.split(order, cuts)
    return sorted((group.tolist() for group in groups), key=lambda group: group[0])
