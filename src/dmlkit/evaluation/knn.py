"""Exact k-nearest-neighbour search in torch, streamed over blocks so memory stays bounded."""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_embeddings, check_range, message
from ..types import Neighbors

__all__ = ["KnnDistance", "knn"]

_OWNER = "knn"


class KnnDistance(str, enum.Enum):
    """How ``knn`` compares embeddings.

    ``EUCLIDEAN`` ranks by the L2 distance (smallest first); ``COSINE`` by the cosine similarity and
    ``INNER_PRODUCT`` by the dot product (largest first).
    """

    EUCLIDEAN = "euclidean"
    COSINE = "cosine"
    INNER_PRODUCT = "inner_product"


def _block_keys(query: Tensor, reference: Tensor, measure: KnnDistance) -> Tensor:
    """A (len(query), len(reference)) matrix in which smaller means closer."""
    if measure is KnnDistance.EUCLIDEAN:
        # ||q||^2 + ||r||^2 - 2 q.r: one matrix product instead of a (bq, br, d) difference tensor.
        squared = (query * query).sum(1, keepdim=True) + (reference * reference).sum(1)
        keys = torch.addmm(squared, query, reference.T, alpha=-2).clamp_(min=0).sqrt_()
    else:
        keys = (query @ reference.T).neg_()
    # Real candidates must stay strictly below the +inf used for excluded and not-yet-filled slots.
    big = torch.finfo(keys.dtype).max
    return torch.nan_to_num_(keys, nan=big, posinf=big, neginf=-big)


def _smallest(cand: Tensor, k: int) -> Tensor:
    """Ascending column positions of the k smallest entries of each row, ties going to the lower column."""
    vals, cols = torch.topk(cand, k, dim=1, largest=False, sorted=False)
    kth = vals.amax(dim=1, keepdim=True)
    # topk picks arbitrarily among values equal to the k-th one; redo the rows where it had a choice.
    ambiguous = (cand == kth).sum(1) > (vals == kth).sum(1)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        sub, sub_kth = cand[rows], kth[rows]
        below = sub < sub_kth
        tie = sub == sub_kth
        room = k - below.sum(1, keepdim=True)
        take = below | (tie & (tie.cumsum(1) <= room))
        cols[rows] = take.nonzero()[:, 1].view(-1, k)
    return cols.sort(dim=1).values


def _merge(run_keys: Tensor, run_idx: Tensor, keys: Tensor, start: int, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest of the running ``run_keys`` and a block's ``keys``, ties going to the lower index.

    Invariant: each row of ``run_idx`` is ascending and below ``start``, and column ``j`` of ``keys`` is
    reference ``start + j``; so in ``cat([run, block])`` column order is index order, and resolving ties
    by column resolves them by index. The result keeps the invariant.
    """
    num_run = run_keys.shape[1]
    kth = run_keys.amax(dim=1, keepdim=True)
    if bool(torch.isfinite(kth).all()):
        # Once every row holds k real candidates, only block entries strictly below the running k-th can
        # enter (an equal one has a higher index). After the first blocks these are few: gather them
        # instead of selecting over the whole block.
        hits = (keys < kth).nonzero()
        if hits.shape[0] * 8 <= keys.numel():
            return _merge_hits(run_keys, run_idx, keys, start, k, hits)
    cand = torch.cat([run_keys, keys], dim=1)
    cols = _smallest(cand, k)
    from_run = cols < num_run
    idx = torch.where(from_run, run_idx.gather(1, cols.clamp(max=num_run - 1)), cols - num_run + start)
    return cand.gather(1, cols), idx


def _merge_hits(
    run_keys: Tensor, run_idx: Tensor, keys: Tensor, start: int, k: int, hits: Tensor
) -> tuple[Tensor, Tensor]:
    """``_merge`` when only the block entries at ``hits`` (row-major (row, column) pairs) can enter."""
    if hits.shape[0] == 0:
        return run_keys, run_idx
    rows, cols = hits[:, 0], hits[:, 1]
    counts = torch.bincount(rows, minlength=keys.shape[0])
    width = int(counts.max())
    slot = torch.arange(rows.shape[0], device=rows.device) - (counts.cumsum(0) - counts)[rows]
    # Padding is +inf and never chosen: every row already has k finite candidates.
    hit_keys = keys.new_full((keys.shape[0], width), float("inf"))
    hit_keys[rows, slot] = keys[rows, cols]
    hit_idx = run_idx.new_full((keys.shape[0], width), -1)
    hit_idx[rows, slot] = cols + start
    cand = torch.cat([run_keys, hit_keys], dim=1)
    chosen = _smallest(cand, k)
    return cand.gather(1, chosen), torch.cat([run_idx, hit_idx], dim=1).gather(1, chosen)


def knn(
    query: Tensor,
    k: int,
    reference: Tensor | None = None,
    ref_includes_query: bool = False,
    distance: KnnDistance | str = "euclidean",
    block_size: int = 4096,
) -> Neighbors:
    """Exact k nearest neighbours of each query row among the reference rows.

    The search streams over blocks of ``block_size`` queries and ``block_size`` references and keeps a
    running top-k per query, so memory is ``O(len(query) * k + block_size ** 2)`` and the full
    query-by-reference matrix never exists. Computation is in float32 (float64 when an input is float64)
    on the inputs' device; float16 / bfloat16 inputs are upcast block by block.

    Results are sorted nearest first; equal distances are ordered by ascending reference index, so the
    output does not depend on ``block_size``. "Exact" means exhaustive: every reference is compared.
    Euclidean distances come from ``||q||^2 + ||r||^2 - 2 q.r`` (one matrix product per block, as in
    faiss), so in float32 a distance near 0 carries a rounding error of about ``1e-3 * ||x||``; pass
    float64 inputs when that matters.

    Args:
        query: (Nq, d) floating-point embeddings.
        k: neighbours per query, ``1 <= k <=`` the number of available references.
        reference: (Nr, d) embeddings searched; None searches ``query`` itself with each query's own row
            excluded (``ref_includes_query`` is then implied).
        ref_includes_query: query ``i`` is reference row ``i`` (``query == reference[:Nq]``, checked), and
            that row is excluded from query ``i``'s neighbours. The exclusion is by index, never by
            distance: other rows at distance 0 (duplicates) are kept.
        distance: ``"euclidean"`` (``distances`` are L2 distances, ascending; the ranking of
            pytorch-metric-learning's default ``FaissKNN``, which reports squared distances),
            ``"cosine"`` (cosine similarities, descending) or ``"inner_product"`` (dot products, descending).
        block_size: rows per query block and per reference block, ``>= 1``.

    Returns:
        ``Neighbors(distances, indices)``, both (Nq, k); ``indices`` are long reference row numbers.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [1.0]])
        >>> knn(x, 2)
        Neighbors(distances=tensor([[1., 1.],
                [0., 1.],
                [2., 2.],
                [0., 1.]]), indices=tensor([[1, 3],
                [3, 0],
                [1, 3],
                [1, 0]]))
    """
    measure = check_choice(_OWNER, "distance", distance, KnnDistance)
    check_embeddings(_OWNER, query, "query")
    if reference is None:
        reference, ref_includes_query = query, True
    else:
        check_embeddings(_OWNER, reference, "reference")
        if reference.shape[1] != query.shape[1]:
            rule = f"of shape (num_references, {query.shape[1]}) like `query`"
            raise ValueError(message(_OWNER, "reference", rule, tuple(reference.shape)))
        if reference.device != query.device:
            rule = f"on the same device as `query` ({query.device})"
            raise ValueError(message(_OWNER, "reference", rule, reference.device))
    check_range(_OWNER, "k", k, low=1, integer=True)
    check_range(_OWNER, "block_size", block_size, low=1, integer=True)
    num_query, num_ref = query.shape[0], reference.shape[0]
    if ref_includes_query and reference is not query:
        prefix = reference[:num_query]
        if num_ref < num_query or prefix.dtype != query.dtype or not torch.equal(prefix, query):
            rule = f"a tensor whose first len(query) = {num_query} rows equal `query` when ref_includes_query"
            raise ValueError(message(_OWNER, "reference", rule, "a tensor that does not start with `query`"))
    available = num_ref - int(ref_includes_query)
    if k > available:
        rule = f"<= the number of available references ({available})"
        raise ValueError(message(_OWNER, "k", rule, k))

    dtype = torch.float64 if torch.float64 in (query.dtype, reference.dtype) else torch.float32
    device = query.device
    out_keys = torch.empty(num_query, k, dtype=dtype, device=device)
    out_idx = torch.empty(num_query, k, dtype=torch.long, device=device)
    with torch.no_grad():
        for qs in range(0, num_query, block_size):
            qe = min(qs + block_size, num_query)
            q = query[qs:qe].to(dtype)
            if measure is KnnDistance.COSINE:
                q = F.normalize(q, dim=1)
            run_keys = torch.full((qe - qs, k), float("inf"), dtype=dtype, device=device)
            run_idx = torch.full((qe - qs, k), -1, dtype=torch.long, device=device)
            for rs in range(0, num_ref, block_size):
                re = min(rs + block_size, num_ref)
                r = reference[rs:re].to(dtype)
                if measure is KnnDistance.COSINE:
                    r = F.normalize(r, dim=1)
                keys = _block_keys(q, r, measure)
                lo, hi = max(qs, rs), min(qe, re)
                if ref_includes_query and lo < hi:
                    own = torch.arange(lo, hi, device=device)
                    keys[own - qs, own - rs] = float("inf")
                run_keys, run_idx = _merge(run_keys, run_idx, keys, rs, k)
            order = run_keys.sort(dim=1, stable=True).indices
            out_keys[qs:qe] = run_keys.gather(1, order)
            out_idx[qs:qe] = run_idx.gather(1, order)
    if measure is not KnnDistance.EUCLIDEAN:
        out_keys = out_keys.neg_()
    return Neighbors(out_keys, out_idx)
