"""Retrieval metrics over k-nearest-neighbour labels: precision@1, R-precision and MAP@R.

The definitions follow Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check",
arXiv:2003.08505, and pytorch-metric-learning's ``AccuracyCalculator``: for a query with label ``y``, ``R``
is the number of references labelled ``y`` (not counting the query itself when the reference set includes
the queries), and ``rel_i`` is 1 when the ``i``-th nearest reference is labelled ``y``.

* precision@1 = ``rel_1``
* R-precision = ``(1 / R) * sum_{i <= R} rel_i``
* MAP@R = ``(1 / R) * sum_{i <= R} rel_i * P(i)``, with ``P(i) = (1 / i) * sum_{j <= i} rel_j``

Each metric is the mean over the queries with ``R >= 1``; queries whose label has no other reference are
left out (as in pytorch-metric-learning), and the result is NaN when no query is left.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice, check_embeddings, check_labels, check_range, check_type, message
from .knn import KnnDistance, knn

__all__ = [
    "count_relevant",
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "retrieval_metrics",
]


def count_relevant(
    query_labels: Tensor, reference_labels: Tensor | None = None, ref_includes_query: bool = False
) -> Tensor:
    """``R`` per query: the number of references sharing its label, itself excluded.

    Counts by sorting the reference labels and binary search, in ``O((Nq + Nr) log Nr)`` time and
    ``O(Nq + Nr)`` memory.

    Args:
        query_labels: (Nq,) integer labels.
        reference_labels: (Nr,) integer labels; None means the queries are their own references
            (``ref_includes_query`` is then implied).
        ref_includes_query: query ``i`` is reference ``i`` and is not counted among its own relevant items.

    Returns:
        (Nq,) long tensor.

    Example:
        >>> count_relevant(torch.tensor([0, 0, 1, 2]))
        tensor([1, 1, 0, 0])
        >>> count_relevant(torch.tensor([0, 3]), torch.tensor([0, 0, 1]))
        tensor([2, 0])
    """
    owner = "count_relevant"
    check_labels(owner, query_labels, query_labels.shape[0] if isinstance(query_labels, Tensor) else 0, "query_labels")
    if reference_labels is None:
        reference_labels, ref_includes_query = query_labels, True
    else:
        size = reference_labels.shape[0] if isinstance(reference_labels, Tensor) else 0
        check_labels(owner, reference_labels, size, "reference_labels")
    ordered = reference_labels.sort().values
    query = query_labels.to(ordered.dtype)
    counts = torch.searchsorted(ordered, query, right=True) - torch.searchsorted(ordered, query)
    # clamp: a query missing from a reference said to include it would otherwise get R = -1
    return (counts - int(ref_includes_query)).clamp_(min=0)


def _check_metric_inputs(owner: str, knn_labels: Tensor, query_labels: Tensor, num_relevant: Tensor) -> None:
    check_type(owner, "knn_labels", knn_labels, Tensor, "a torch.Tensor")
    if knn_labels.ndim != 2:
        raise ValueError(message(owner, "knn_labels", "2-D of shape (num_queries, k)", tuple(knn_labels.shape)))
    num_query = knn_labels.shape[0]
    check_labels(owner, query_labels, num_query, "query_labels", "knn_labels")
    check_labels(owner, num_relevant, num_query, "num_relevant", "knn_labels")
    if num_relevant.numel() and int(num_relevant.min()) < 0:
        raise ValueError(message(owner, "num_relevant", "non-negative", int(num_relevant.min())))


def _mean_over_valid(per_query: Tensor, valid: Tensor) -> float:
    if not bool(valid.any()):
        return float("nan")
    return float(per_query[valid].mean())


def _relevance(owner: str, knn_labels: Tensor, query_labels: Tensor, num_relevant: Tensor) -> tuple[Tensor, Tensor]:
    """rel_i for i <= R (0 beyond R) as float64, and the valid-query mask; checks that k covers every R."""
    _check_metric_inputs(owner, knn_labels, query_labels, num_relevant)
    max_r = int(num_relevant.max()) if num_relevant.numel() else 0
    if knn_labels.shape[1] < max_r:
        rule = f"of at least max(num_relevant) = {max_r} columns"
        raise ValueError(message(owner, "knn_labels", rule, knn_labels.shape[1]))
    knn_labels = knn_labels[:, :max_r]
    within_r = torch.arange(max_r, device=knn_labels.device) < num_relevant[:, None]
    rel = ((knn_labels == query_labels[:, None]) & within_r).to(torch.float64)
    return rel, num_relevant > 0


def precision_at_1(knn_labels: Tensor, query_labels: Tensor, num_relevant: Tensor) -> float:
    """Fraction of queries whose nearest reference shares their label.

    Args:
        knn_labels: (Nq, k) labels of each query's neighbours, nearest first, ``k >= 1``.
        query_labels: (Nq,) labels.
        num_relevant: (Nq,) ``R`` per query (see :func:`count_relevant`); queries with ``R == 0`` are left out.

    Returns:
        The mean over queries with ``R >= 1``, NaN if there are none.

    Example:
        >>> precision_at_1(torch.tensor([[0, 1], [0, 1], [1, 0]]), torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]))
        0.5
    """
    _check_metric_inputs("precision_at_1", knn_labels, query_labels, num_relevant)
    if knn_labels.shape[1] < 1:
        raise ValueError(message("precision_at_1", "knn_labels", "of at least 1 column", 0))
    hit = (knn_labels[:, 0] == query_labels).to(torch.float64)
    return _mean_over_valid(hit, num_relevant > 0)


def r_precision(knn_labels: Tensor, query_labels: Tensor, num_relevant: Tensor) -> float:
    """Mean over queries of the fraction of the ``R`` nearest references that share the query's label.

    Args:
        knn_labels: (Nq, k) labels of each query's neighbours, nearest first, ``k >= max(num_relevant)``.
        query_labels: (Nq,) labels.
        num_relevant: (Nq,) ``R`` per query (see :func:`count_relevant`); queries with ``R == 0`` are left out.

    Returns:
        The mean over queries with ``R >= 1``, NaN if there are none.

    Example:
        >>> r_precision(torch.tensor([[0, 1, 0], [1, 1, 1]]), torch.tensor([0, 1]), torch.tensor([2, 3]))
        0.75
    """
    rel, valid = _relevance("r_precision", knn_labels, query_labels, num_relevant)
    return _mean_over_valid(rel.sum(1) / num_relevant.clamp(min=1), valid)


def mean_average_precision_at_r(knn_labels: Tensor, query_labels: Tensor, num_relevant: Tensor) -> float:
    """MAP@R: mean over queries of ``(1 / R) * sum_{i <= R} rel_i * precision@i``.

    Args:
        knn_labels: (Nq, k) labels of each query's neighbours, nearest first, ``k >= max(num_relevant)``.
        query_labels: (Nq,) labels.
        num_relevant: (Nq,) ``R`` per query (see :func:`count_relevant`); queries with ``R == 0`` are left out.

    Returns:
        The mean over queries with ``R >= 1``, NaN if there are none.

    Example:
        >>> # rel = [0, 1, 1] with R = 3: (1/3) * (1/2 + 2/3) = 0.3888...
        >>> round(mean_average_precision_at_r(torch.tensor([[1, 0, 0]]), torch.tensor([0]), torch.tensor([3])), 4)
        0.3889
    """
    rel, valid = _relevance("mean_average_precision_at_r", knn_labels, query_labels, num_relevant)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64, device=rel.device)
    precision_at_i = rel.cumsum(1) / ranks
    return _mean_over_valid((precision_at_i * rel).sum(1) / num_relevant.clamp(min=1), valid)


def retrieval_metrics(
    query: Tensor,
    query_labels: Tensor,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    ref_includes_query: bool = False,
    distance: KnnDistance | str = "euclidean",
    block_size: int = 4096,
) -> dict[str, float]:
    """precision@1, R-precision and MAP@R of ``query`` against ``reference`` (Musgrave et al., 2020, arXiv:2003.08505).

    Counts ``R`` per query from the labels, runs an exact :func:`~dmlkit.evaluation.knn.knn` with
    ``k = max(R)`` (only the ``R`` nearest references enter these metrics), and averages over the queries
    with ``R >= 1``. With the default ``"euclidean"`` distance the values equal those of
    pytorch-metric-learning's ``AccuracyCalculator`` (whose default ``FaissKNN`` ranks by L2 distance) up to
    the order of exactly tied neighbours, which is by ascending reference index here.

    Args:
        query: (Nq, d) embeddings.
        query_labels: (Nq,) integer labels.
        reference: (Nr, d) embeddings; None evaluates ``query`` against itself (``ref_includes_query`` implied).
        reference_labels: (Nr,) integer labels, required with ``reference``.
        ref_includes_query: the first Nq references are the queries, in order (checked); each query's
            own row is not a neighbour and is not counted in its ``R``.
        distance: ``"euclidean"``, ``"cosine"`` or ``"inner_product"``, see :func:`~dmlkit.evaluation.knn.knn`.
        block_size: block size of the k-nn search, bounding its memory to ``O(block_size ** 2)``.

    Returns:
        ``{"precision_at_1": ..., "r_precision": ..., "mean_average_precision_at_r": ...}``, each NaN when
        no query has a relevant reference.

    Example:
        >>> emb = torch.tensor([[0.0], [0.1], [1.0], [1.2], [0.6]])
        >>> retrieval_metrics(emb, torch.tensor([0, 0, 1, 1, 1]))
        {'precision_at_1': 1.0, 'r_precision': 0.9, 'mean_average_precision_at_r': 0.9}
    """
    owner = "retrieval_metrics"
    check_choice(owner, "distance", distance, KnnDistance)
    check_range(owner, "block_size", block_size, low=1, integer=True)
    check_embeddings(owner, query, "query")
    check_labels(owner, query_labels, query.shape[0], "query_labels", "query")
    if reference is None:
        if reference_labels is not None:
            rule = "None when `reference` is None"
            raise ValueError(message(owner, "reference_labels", rule, "a tensor"))
        reference, reference_labels, ref_includes_query = query, query_labels, True
    else:
        check_embeddings(owner, reference, "reference")
        if reference_labels is None:
            raise ValueError(message(owner, "reference_labels", "a tensor when `reference` is given", None))
        check_labels(owner, reference_labels, reference.shape[0], "reference_labels", "reference")
        if ref_includes_query:
            prefix = reference_labels[: query_labels.shape[0]]
            if prefix.shape != query_labels.shape or not torch.equal(prefix.to(query_labels.device), query_labels):
                num_query = query_labels.shape[0]
                rule = f"a tensor whose first {num_query} entries equal `query_labels` when ref_includes_query"
                raise ValueError(message(owner, "reference_labels", rule, "a tensor that does not start with them"))

    num_relevant = count_relevant(query_labels, reference_labels.to(query_labels.device), ref_includes_query)
    max_r = int(num_relevant.max()) if num_relevant.numel() else 0
    if max_r == 0:
        nan = float("nan")
        return {"precision_at_1": nan, "r_precision": nan, "mean_average_precision_at_r": nan}
    neighbors = knn(query, max_r, reference, ref_includes_query, distance, block_size)
    knn_labels = reference_labels.to(query_labels.device)[neighbors.indices]
    return {
        "precision_at_1": precision_at_1(knn_labels, query_labels, num_relevant),
        "r_precision": r_precision(knn_labels, query_labels, num_relevant),
        "mean_average_precision_at_r": mean_average_precision_at_r(knn_labels, query_labels, num_relevant),
    }
