"""Exact (exhaustive) search over the stored rows, in torch, with ties ordered by id.

The stored rows are kept sorted by id, so :func:`dmlkit.evaluation.knn`'s order for equal keys (ascending
row) is the order by id. The values of the selected neighbours are then recomputed pair by pair (a
difference or product and a sum along the embedding, the same operations for every pair), so identical
rows get bit-identical values wherever they sit in the search's blocks of matrix products, whose rounding
can differ in the last bit, and the Euclidean distances are exact rather than expanded as
``||q||^2 + ||r||^2 - 2 q.r``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..evaluation import knn

__all__ = ["exact_search", "exact_search_radius", "largest_row_norm", "missing_value"]

#: queries per block of the radius search
_QUERY_ROWS = 256
#: entries (queries x neighbours x dimension) per chunk of the pairwise recomputation
_PAIR_ENTRIES = 1 << 22
_KNN_DISTANCE = {"l2": "euclidean", "cosine": "cosine", "inner_product": "inner_product"}


def missing_value(metric: str) -> float:
    """The value reported for a missing neighbour: farther than any real one."""
    return float("inf") if metric == "l2" else float("-inf")


def exact_search(
    data: Tensor,
    data_ids: Tensor,
    queries: Tensor,
    k: int,
    metric: str,
    block_size: int,
    largest_norm: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(values, ids), each (len(queries), k): nearest first, ties by id, padded with id -1 past ``len(data)``.

    The candidates come from :func:`~dmlkit.evaluation.knn.knn`, whose matrix products round, and may round
    differently for two identical rows. One candidate more than needed shows whether the cut is certain: when
    the first row left out may be as near as the k-th (within the rounding bound), the query is redone as a
    search within the k-th exact value, so rows tied with the k-th are ranked by id like the others.
    The rounding bound needs the largest row norm of ``data``; pass ``largest_norm`` (any upper bound of it) to
    save that pass over the rows when searching the same data many times.
    """
    dtype = torch.promote_types(data.dtype, queries.dtype)
    values = torch.full((queries.shape[0], k), missing_value(metric), dtype=dtype, device=queries.device)
    ids = torch.full((queries.shape[0], k), -1, dtype=torch.long, device=queries.device)
    found = min(k, data.shape[0])
    if found == 0 or queries.shape[0] == 0:
        return values, ids
    q_all = queries.to(device=data.device)
    result = knn(q_all, min(found + 1, data.shape[0]), data, distance=_KNN_DISTANCE[metric], block_size=block_size)
    rows = max(1, _PAIR_ENTRIES // (found * max(data.shape[1], 1)))
    for start in range(0, q_all.shape[0], rows):
        idx = result.indices[start : start + rows, :found]
        exact = _pair_values(q_all[start : start + rows].to(dtype), data[idx].to(dtype), metric)
        exact, chosen = _nearest_then_by_id(exact, data_ids[idx], metric)
        values[start : start + rows, :found] = exact.to(queries.device)
        ids[start : start + rows, :found] = chosen.to(queries.device)
    if result.indices.shape[1] > found:
        kth = values[:, found - 1].to(data.device)
        slack = 2 * _query_slack(q_all.to(dtype), data, metric, largest_norm)
        left_out = result.distances[:, found].to(dtype)
        unsure = (left_out <= kth + slack) if metric == "l2" else (left_out >= kth - slack)
        if bool(unsure.any()):
            redo = unsure.nonzero().flatten()
            hits = exact_search_radius(data, data_ids, q_all[redo], kth[redo], metric, block_size)
            hit_rows, hit_values, hit_ids = hits
            rank = torch.arange(len(hit_rows), device=hit_rows.device) - torch.searchsorted(hit_rows, hit_rows)
            take = rank < found
            target = redo.to(queries.device)[hit_rows[take].to(queries.device)]
            values[target, rank[take].to(queries.device)] = hit_values[take].to(values.device, values.dtype)
            ids[target, rank[take].to(queries.device)] = hit_ids[take].to(queries.device)
    return values, ids


def _nearest_then_by_id(values: Tensor, ids: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """Each row of (values, ids) sorted nearest first, equal values by id (two stable sorts)."""
    by_id = ids.argsort(dim=1, stable=True)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    order = (values if metric == "l2" else -values).argsort(dim=1, stable=True)
    return values.gather(1, order), ids.gather(1, order)


def _pair_values(q: Tensor, r: Tensor, metric: str) -> Tensor:
    """Values of query ``i`` against its candidates ``r[i, j]``: (b, d) and (b, k, d) -> (b, k)."""
    if metric == "l2":
        return (q[:, None, :] - r).square_().sum(-1).sqrt_()
    if metric == "cosine":
        q, r = F.normalize(q, dim=-1), F.normalize(r, dim=-1)
    return (q[:, None, :] * r).sum(-1)


def largest_row_norm(data: Tensor) -> Tensor:
    """The largest Euclidean norm among the rows of ``data`` (0 without rows), a 0-d tensor of its dtype."""
    if data.shape[0] == 0:
        return data.new_zeros(())
    return torch.linalg.vector_norm(data, dim=1).max()


def _query_slack(q: Tensor, data: Tensor, metric: str, largest_norm: Tensor | None = None) -> Tensor:
    """Per query, the bound of :func:`_rounding_slack` against the largest row of ``data``: one for every row."""
    largest = largest_row_norm(data.to(q.dtype)) if largest_norm is None else largest_norm.to(q.dtype)
    return _slack(metric, q, torch.linalg.vector_norm(q, dim=1), largest)


def _rounding_slack(q: Tensor, r: Tensor, metric: str) -> Tensor:
    """A bound, generous by a wide factor, on how far :func:`_block_values` may stray from the exact value."""
    q_norm, r_norm = torch.linalg.vector_norm(q, dim=1), torch.linalg.vector_norm(r, dim=1)
    return _slack(metric, q, q_norm[:, None], r_norm[None, :])


def _slack(metric: str, q: Tensor, q_norm: Tensor, r_norm: Tensor) -> Tensor:
    tol = 64 * torch.finfo(q.dtype).eps * max(q.shape[1], 1) ** 0.5
    if metric == "cosine":
        return q.new_tensor(tol).expand_as(q_norm * r_norm)
    if metric == "inner_product":
        return tol * q_norm * r_norm
    # the expanded squared distance errs by about tol * (|q|^2 + |r|^2); its square root by at most the root of that
    return (tol * (q_norm**2 + r_norm**2)).sqrt_()


def _block_values(q: Tensor, r: Tensor, metric: str) -> Tensor:
    if metric == "cosine":
        return F.normalize(q, dim=1) @ F.normalize(r, dim=1).T
    if metric == "inner_product":
        return q @ r.T
    squared = (q * q).sum(1, keepdim=True) + (r * r).sum(1) - 2 * (q @ r.T)
    return squared.clamp_(min=0).sqrt_()


def exact_search_radius(
    data: Tensor, data_ids: Tensor, queries: Tensor, radius: float | Tensor, metric: str, block_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Every (query row, value, id) within ``radius`` (``<=`` for l2, ``>=`` for similarities), sorted by
    query row, then nearest first, then id. Values are exact (recomputed pair by pair): a row identical to the
    query is at distance 0 and within radius 0. ``radius`` may be one value per query (a tensor)."""
    dtype = torch.promote_types(data.dtype, queries.dtype)
    q_all = queries.to(device=data.device, dtype=dtype)
    radii = torch.as_tensor(radius, dtype=dtype, device=data.device).expand(q_all.shape[0])
    hit_rows, hit_values, hit_ids = [], [], []
    for qs in range(0, q_all.shape[0], _QUERY_ROWS):
        q = q_all[qs : qs + _QUERY_ROWS]
        bound = radii[qs : qs + _QUERY_ROWS, None]
        for rs in range(0, data.shape[0], block_size):
            block = data[rs : rs + block_size].to(dtype)
            vals = _block_values(q, block, metric)
            # candidates with a slack for the matrix products' rounding, then exact values pair by pair
            slack = _rounding_slack(q, block, metric)
            inside = vals <= bound + slack if metric == "l2" else vals >= bound - slack
            r, c = inside.nonzero(as_tuple=True)
            exact = _pair_values(q[r], block[c].unsqueeze(1), metric).squeeze(1)
            keep = exact <= bound[r, 0] if metric == "l2" else exact >= bound[r, 0]
            r, c = r[keep], c[keep]
            hit_rows.append(r + qs)
            hit_values.append(exact[keep])
            hit_ids.append(data_ids[c + rs])
    if not hit_rows:
        empty = torch.empty(0, dtype=torch.long, device=data.device)
        return empty, torch.empty(0, dtype=dtype, device=data.device), empty.clone()
    rows, values, ids = torch.cat(hit_rows), torch.cat(hit_values), torch.cat(hit_ids)
    # three stable sorts: by id, then by closeness, then by query row
    order = ids.argsort(stable=True)
    key = values[order] if metric == "l2" else -values[order]
    order = order[key.argsort(stable=True)]
    order = order[rows[order].argsort(stable=True)]
    return rows[order], values[order], ids[order]
