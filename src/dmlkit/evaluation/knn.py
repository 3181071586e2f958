"""Exact k-nearest-neighbour search in torch, streamed over blocks so memory stays bounded."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_embeddings, check_range, message
from ..types import Neighbors

__all__ = ["KnnDistance", "ExactKNN", "iter_knn", "knn"]

_OWNER = "knn"
#: queries per block of the streamed search: a (256, block_size) block of keys stays in cache.
_QUERY_ROWS = 256
#: references per step of the thresholded search: a (256, 1024) float32 block of keys, its difference to the
#: thresholds and the mask of hits fit together in a 2 MiB L2 cache, where each elementwise pass runs about
#: twice as fast as from main memory.
_FILTER_COLUMNS = 1024
#: references in the random sample that sets each query's threshold (fewer when the set is small).
_SAMPLE_SIZE = 4096
#: sample keys per group whose minimum stands for the group in the threshold's rank selection.
_SAMPLE_GROUP = 8
#: keys per panel on an accelerator (float32: 1 GiB): each query block is one matrix product and one
#: selection against every reference, since a launch per 256 x 1024 step would leave the device idle.
_ACCELERATOR_PANEL_CELLS = 2**28
#: rows per slice when the centre's spread is summed
_CENTER_ROWS = 65536


class KnnDistance(str, enum.Enum):
    """How ``knn`` compares embeddings.

    ``EUCLIDEAN`` ranks by the L2 distance (smallest first); ``COSINE`` by the cosine similarity and
    ``INNER_PRODUCT`` by the dot product (largest first).
    """

    EUCLIDEAN = "euclidean"
    COSINE = "cosine"
    INNER_PRODUCT = "inner_product"


class _Operand:
    """A block of rows prepared so that one matrix product gives the ranking keys (smaller = closer).

    For the Euclidean distance the key of (q, r) is ``||r||^2 - 2 q.r``: the squared distance minus the
    query's own ``||q||^2``, which does not change the ranking of a row. Appending a column of ones to the
    queries and ``||r||^2`` to the scaled references folds the whole key into one matrix product, so no
    separate pass adds the norms, clamps or takes square roots over the block.

    Both sides are first shifted by the same ``center`` (near the references' mean), which leaves every
    distance as it is. Without it, points close together but far from the origin (say ``1 + 0.01 * randn``)
    lose their differences in float32: ``||r||^2`` and ``2 q.r`` are both near ``||r||^2`` and their
    difference, which is what ranks the references, falls below the rounding of either.
    """

    @staticmethod
    def center(reference: Tensor, measure: KnnDistance, dtype: torch.dtype) -> Tensor | None:
        """The point both sides are shifted by, for the Euclidean distance (None for the others).

        Per dimension, the references' mean rounded to a multiple of the largest power of two not above
        their standard deviation (the mean itself where they are all equal). The shift removes the common
        offset, and data on a grid at least that coarse (integers, say) stay on it, so keys that tie
        exactly before the shift still tie after it and are still ordered by index.
        """
        if measure is not KnnDistance.EUCLIDEAN or reference.shape[0] == 0:
            return None
        values = reference if reference.dtype == dtype else reference.to(dtype)
        mean = values.mean(0)
        # the spread in slices of rows: 3x faster than one column-wise std_mean, without an (N, d) temporary
        squares = torch.zeros_like(mean)
        for start in range(0, values.shape[0], _CENTER_ROWS):
            squares += (values[start : start + _CENTER_ROWS] - mean).square_().sum(0)
        std = (squares / values.shape[0]).sqrt_()
        grid = torch.exp2(torch.floor(torch.log2(std)))
        rounded = torch.round(mean / grid) * grid
        # a constant dimension keeps its mean (and any non-finite rounding, which float data cannot reach)
        return torch.where((std > 0) & torch.isfinite(rounded), rounded, mean)

    @staticmethod
    def queries(x: Tensor, measure: KnnDistance, dtype: torch.dtype, center: Tensor | None = None) -> Tensor:
        x = x.to(dtype)
        if measure is KnnDistance.COSINE:
            return F.normalize(x, dim=1)
        if measure is KnnDistance.EUCLIDEAN:
            x = x if center is None else x - center.to(dtype)
            return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        return x

    @staticmethod
    def references(x: Tensor, measure: KnnDistance, dtype: torch.dtype, center: Tensor | None = None) -> Tensor:
        x = x.to(dtype)
        if measure is KnnDistance.COSINE:
            return F.normalize(x, dim=1).neg_()
        if measure is KnnDistance.EUCLIDEAN:
            shifted = x.clone() if center is None else x - center.to(dtype)
            norms = (shifted * shifted).sum(1, keepdim=True)
            return torch.cat([shifted.mul_(-2), norms], dim=1)
        return x.neg()


def _smallest(cand: Tensor, k: int, cand_idx: Tensor | None = None) -> Tensor:
    """Column positions (unordered) of the k smallest entries of each row, ties going to the lower index.

    ``cand_idx`` holds each entry's reference index; None means the column number is the index.
    """
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
        width = sub.shape[1]
        order_key = torch.arange(width, device=sub.device).expand_as(sub) if cand_idx is None else cand_idx[rows]
        # rank of each tied entry among its row's ties, by reference index
        order = torch.where(tie, order_key, torch.iinfo(torch.long).max).argsort(dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=sub.device).expand_as(order))
        take = below | (tie & (rank < room))
        cols[rows] = take.nonzero()[:, 1].view(-1, k)
    return cols


def _merge(run_keys: Tensor, run_idx: Tensor, keys: Tensor, start: int, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest of the running (``run_keys``, ``run_idx``) and a block's ``keys`` (column j is
    reference ``start + j``), ties going to the lower index."""
    block_idx = torch.arange(start, start + keys.shape[1], device=keys.device).expand(keys.shape[0], -1)
    return _select(run_keys, run_idx, [keys], [block_idx], k)


def _exclude_own(keys: Tensor, qs: int, rs: int) -> None:
    """Set the key of query ``qs + i`` against reference ``qs + i`` (when in this block) to +inf."""
    lo, hi = max(qs, rs), min(qs + keys.shape[0], rs + keys.shape[1])
    if lo < hi:
        own = torch.arange(lo, hi, device=keys.device)
        keys[own - qs, own - rs] = float("inf")


def _topk_streamed(
    q: Tensor, reference: Tensor, qs: int, k: int, own: bool, measure: KnnDistance, block_size: int
) -> tuple[Tensor, Tensor]:
    """Running top-k of the prepared query block ``q`` over reference blocks: (keys, indices), unsorted.

    Once every row holds k candidates, a block contributes only its entries strictly below the row's
    current k-th: an equal one has a higher index than every candidate held, so it loses the tie. These
    hits wait in a buffer that is merged once it is k columns wide, so the selection over ``k + buffer``
    columns is paid about once per k hits instead of once per block; meanwhile the k-th is stale (too
    high), which only admits a few extra hits.
    """
    rows = q.shape[0]
    run_keys = q.new_full((rows, k), float("inf"))
    run_idx = torch.full((rows, k), -1, dtype=torch.long, device=q.device)
    kth: Tensor | None = None
    buffer_keys: list[Tensor] = []
    buffer_idx: list[Tensor] = []
    buffered = 0
    for rs in range(0, reference.shape[0], block_size):
        keys = q @ reference[rs : rs + block_size].T
        if own:
            _exclude_own(keys, qs, rs)
        if kth is None:
            if rs == 0 and keys.shape[1] >= k:
                cols = _smallest(keys, k)
                run_keys, run_idx = keys.gather(1, cols), cols
            else:
                run_keys, run_idx = _merge(run_keys, run_idx, keys, rs, k)
            top = run_keys.amax(dim=1)
            if bool(torch.isfinite(top).all()):
                kth = top
            continue
        # One cheap row minimum tells whether the block has any hit at all; late blocks often have none.
        if not bool((keys.amin(dim=1) < kth).any()):
            continue
        hit_keys, hit_idx = _pad_hits(keys, (keys < kth[:, None]).nonzero(), rs, run_idx)
        buffer_keys.append(hit_keys)
        buffer_idx.append(hit_idx)
        buffered += hit_keys.shape[1]
        if buffered >= k:
            run_keys, run_idx = _select(run_keys, run_idx, buffer_keys, buffer_idx, k)
            kth = run_keys.amax(dim=1)
            buffer_keys, buffer_idx, buffered = [], [], 0
    if buffered:
        run_keys, run_idx = _select(run_keys, run_idx, buffer_keys, buffer_idx, k)
    return run_keys, run_idx


def _pad_hits(keys: Tensor, hits: Tensor, start: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The block entries at ``hits`` (row-major (row, column) pairs) packed left into (rows, width) arrays.

    Padding is +inf with index -1 and is never selected: every row already holds k finite candidates.
    """
    rows, cols = hits[:, 0], hits[:, 1]
    counts = torch.bincount(rows, minlength=keys.shape[0])
    width = int(counts.max())
    slot = torch.arange(rows.shape[0], device=rows.device) - (counts.cumsum(0) - counts)[rows]
    hit_keys = keys.new_full((keys.shape[0], width), float("inf"))
    hit_keys[rows, slot] = keys[rows, cols]
    hit_idx = like.new_full((keys.shape[0], width), -1)
    hit_idx[rows, slot] = cols + start
    return hit_keys, hit_idx


def _select(
    run_keys: Tensor, run_idx: Tensor, more_keys: list[Tensor], more_idx: list[Tensor], k: int
) -> tuple[Tensor, Tensor]:
    cand = torch.cat([run_keys, *more_keys], dim=1)
    cand_idx = torch.cat([run_idx, *more_idx], dim=1)
    chosen = _smallest(cand, k, cand_idx)
    return cand.gather(1, chosen), cand_idx.gather(1, chosen)


def _sample_threshold(q: Tensor, sample: Tensor, sample_idx: Tensor, qs: int, own: bool, k: int, total: int) -> Tensor:
    """Per query, a bound that very likely has at least k of the ``total`` references' keys strictly below it.

    The keys against a random sample of ``m`` references are cut at the sample rank that the k-th nearest
    reaches with 4 standard deviations to spare (binomial count of sample members among the k nearest).
    The sample is read in groups of up to ``_SAMPLE_GROUP`` members and the rank is taken among the group
    minima: each group whose minimum is at or below the cut holds at least one member there, so at least
    ``rank`` members are, as with a selection among all members, while the selection reads 8 times fewer
    values. The bound is the next float above the cut, so every key at or below the cut is strictly below it.
    """
    keys = q @ sample.T
    if own:
        # the sample members that are queries of this block: only these few entries are excluded
        pos = ((sample_idx >= qs) & (sample_idx < qs + q.shape[0])).nonzero().squeeze(1)
        keys[sample_idx[pos] - qs, pos] = float("inf")
    m = sample.shape[0]
    p = k / total
    wanted = m * p + 4 * math.sqrt(m * p * (1 - p)) + 2
    group = _SAMPLE_GROUP
    while group > 1 and m // group < 2 * wanted:
        group //= 2
    groups = m // group
    # group g holds the members g, g + groups, g + 2 * groups, ...: halving contiguous column ranges
    # reads memory in order (twice as fast as a reshape's strided minimum)
    minima = keys[:, : groups * group]
    while minima.shape[1] > groups:
        half = minima.shape[1] // 2
        minima = torch.minimum(minima[:, :half], minima[:, half:])
    rank = min(groups, int(wanted))
    cut = _rank_value(minima, rank)
    return torch.nextafter(cut, cut.new_tensor(float("inf")))


def _rank_value(values: Tensor, rank: int) -> Tensor:
    """Each row's ``rank``-th smallest value (1-based); numpy's introselect on the CPU, about 5x torch's topk."""
    if values.device.type == "cpu":
        import numpy as np

        chosen = np.partition(values.contiguous().numpy(), rank - 1, axis=1)[:, rank - 1]
        return torch.from_numpy(np.ascontiguousarray(chosen))
    return values.topk(rank, dim=1, largest=False, sorted=False).values.amax(dim=1)


def _topk_thresholded(
    q: Tensor, reference: Tensor, qs: int, k: int, own: bool, block_size: int, bound: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted top-k from the references whose key is strictly below ``bound``: one pass, one selection.

    Every reference below the bound is kept, so when a row keeps at least k of them its top-k (ties by
    index included) is among them. Returns (keys, indices, short): the rows of ``short`` kept fewer than k
    and hold garbage (the caller redoes them).

    Each step of ``rows x width`` keys costs a few passes: the difference to the bound, clamped at 0 and
    read as booleans (two fast elementwise passes; torch runs a broadcast comparison element by element),
    and a ``nonzero`` over the booleans read eight at a time as 64-bit words. A step keeps only the
    non-zero words and the eight keys under each; splitting the words into hits, and everything else per
    hit, is done once for the whole block, so the work per step is a fixed handful of torch calls.
    """
    rows, num_ref, device = q.shape[0], reference.shape[0], q.device
    width = min(block_size, _FILTER_COLUMNS)
    cells = rows * width
    # each step's cells are numbered from step * stride: a power of two, so the step is a shift away
    stride = 1 << max(3, (cells - 1).bit_length())
    keys_buf = q.new_full((stride,), float("inf"))
    keys = keys_buf[:cells].view(rows, width)
    diff = q.new_empty(rows, width)
    mask_buf = torch.zeros(stride, dtype=torch.bool, device=device)  # the padding stays False
    mask = mask_buf[:cells].view(rows, width)
    words = mask_buf.view(torch.int64)
    found_words, found_values, found_keys = [], [], []
    bound = bound[:, None].contiguous()
    compare = _numpy_less if device.type == "cpu" and torch.get_num_threads() == 1 else None
    for step, rs in enumerate(range(0, num_ref, width)):
        r = reference[rs : rs + width]
        if r.shape[0] < width:
            keys.fill_(float("inf"))
            torch.mm(q, r.T, out=keys[:, : r.shape[0]])
        else:
            torch.mm(q, r.T, out=keys)
        if own:
            _exclude_own(keys, qs, rs)
        if compare is None:
            torch.sub(keys, bound, out=diff).clamp_max_(0)
            mask.copy_(diff)
        else:
            compare(keys, bound, mask)
        w = words.nonzero().squeeze(1)
        found_words.append(w + step * (stride // 8))
        found_values.append(words.index_select(0, w))
        found_keys.append(keys_buf.view(-1, 8).index_select(0, w))
    # every hit: its byte among its word's eight, its key, its cell (step * stride + row * width + column)
    pos = _bytes_nonzero(torch.cat(found_values))
    hit_keys = torch.cat(found_keys).view(-1).index_select(0, pos)
    cell = (torch.cat(found_words).index_select(0, pos >> 3) << 3) | (pos & 7)
    local = cell & (stride - 1)
    step_of = cell >> (stride.bit_length() - 1)
    if width & (width - 1) == 0:
        shift = width.bit_length() - 1
        row, column = local >> shift, local & (width - 1)
    else:
        row = local // width
        column = local - row * width
    counts = torch.bincount(row, minlength=rows)
    short = counts < k
    if rows == 0 or bool(short.all()):
        return q.new_empty(rows, k), torch.zeros(rows, k, dtype=torch.long, device=device), short
    # hits ordered by (row, key, index); then each row's first k
    if q.dtype == torch.float32 and num_ref <= 2**24 and rows <= 256:
        ordered = _sort_packed(_packed(row, hit_keys, step_of * width + column))
        keys_sorted, col_sorted = _unpacked(ordered)
    else:
        col = step_of * width + column
        by_key = hit_keys.sort(stable=True).indices
        by_row = row.index_select(0, by_key).sort(stable=True).indices
        order = by_key.index_select(0, by_row)
        keys_sorted, col_sorted = hit_keys.index_select(0, order), col.index_select(0, order)
    starts = counts.cumsum(0) - counts
    take = (starts[:, None] + torch.arange(k, device=device)).clamp_(max=row.shape[0] - 1)
    return keys_sorted[take], col_sorted[take], short


def _numpy_less(keys: Tensor, bound: Tensor, mask: Tensor) -> None:
    """``mask = keys < bound`` on the CPU in one vectorised numpy pass (about 2x torch's three on one thread)."""
    import numpy as np

    np.less(keys.numpy(), bound.numpy(), out=mask.numpy())


def _bytes_nonzero(words: Tensor) -> Tensor:
    """Positions of the non-zero bytes of int64 ``words`` whose bytes are 0 or 1 (booleans read 8 at a time).

    On the CPU numpy's ``flatnonzero`` of a boolean array runs about 4 times faster than torch's ``nonzero``.
    """
    flags = words.view(torch.bool)
    if flags.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.flatnonzero(flags.numpy()))
    return flags.nonzero().squeeze(1)


def _packed(row: Tensor, keys: Tensor, col: Tensor) -> Tensor:
    """int64 whose signed order is the (row, key, index) order, for rows < 256, float32 keys, index < 2**24.

    The row is the top 8 bits (their sign bit flipped, so that signed order is unsigned order), the key's
    bits mapped to an unsigned 32-bit integer with the float order come next (-0.0 first made +0.0, so that
    it ties with +0.0 as floats do), and the index is the low 24 bits, so ties go to the lower index.
    """
    bits = (keys + 0.0).view(torch.int32)
    ordered = (bits ^ ((bits >> 31) | -(2**31))).to(torch.int64) & 0xFFFFFFFF
    return ((row << 56) | (ordered << 24) | col) ^ -(2**63)


def _unpacked(packed: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and indices of :func:`_packed` values."""
    ordered = ((packed >> 24) & 0xFFFFFFFF).to(torch.int32)
    keys = (ordered ^ (~(ordered >> 31) | -(2**31))).view(torch.float32)
    return keys, packed & 0xFFFFFF


def _sort_packed(values: Tensor) -> Tensor:
    """Ascending int64 values; on the CPU numpy's vectorised sort is several times faster than torch's."""
    if values.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sort(values.numpy()))
    return values.sort().values


def _sorted(keys: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Each row nearest first, equal keys by index: ordered by index, then stably by key."""
    by_index = idx.argsort(dim=1)
    keys, idx = keys.gather(1, by_index), idx.gather(1, by_index)
    order = keys.sort(dim=1, stable=True).indices
    return keys.gather(1, order), idx.gather(1, order)


def _topk_panel(
    q: Tensor, reference: Tensor, qs: int, k: int, own: bool, measure: KnnDistance, block_size: int
) -> tuple[Tensor, Tensor]:
    """Top-k of the prepared query block ``q`` from its keys against every reference at once."""
    panel = q.new_empty(q.shape[0], reference.shape[0])
    if q.device.type != "cpu":  # one product: the block size keeps CPU caches warm, a device has none to keep
        block_size = max(reference.shape[0], 1)
    for rs in range(0, reference.shape[0], block_size):
        r = reference[rs : rs + block_size]
        torch.mm(q, r.T, out=panel[:, rs : rs + r.shape[0]])
    if own:
        _exclude_own(panel, qs, 0)
    if k == panel.shape[1] - int(own):
        # Every available reference: a stable sort orders ties by index. The excluded own row sorts last.
        keys, idx = panel.sort(dim=1, stable=True)
        return keys[:, :k], idx[:, :k]
    cols = _smallest(panel, k)
    return panel.gather(1, cols), cols


def _search_block(
    query_block: Tensor,
    reference: Tensor,
    raw_reference: Tensor,
    qs: int,
    k: int,
    own: bool,
    measure: KnnDistance,
    dtype: torch.dtype,
    block_size: int,
    panel: bool,
    sample_idx: Tensor | None = None,
    sample: Tensor | None = None,
    center: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sorted (keys, indices) of one query block; falls back to a safe float64 pass if a key overflowed."""
    q = _Operand.queries(query_block, measure, dtype, center)
    found = None
    below_bound = False
    if sample is not None and sample_idx is not None:
        bound = _sample_threshold(q, sample, sample_idx, qs, own, k, reference.shape[0] - int(own))
        if bool(torch.isfinite(bound).all()):
            from . import self_search

            if self_search.rows_apply(reference.shape[0], q.dtype, q.device):
                keys, idx, short = self_search.topk_below_bounds(q, reference, qs, k, own, bound)
            else:
                keys, idx, short = _topk_thresholded(q, reference, qs, k, own, block_size, bound)
            # a row with fewer than k keys below its bound (about once in 30,000 rows) redoes the block
            if not bool(short.any()):
                found, below_bound = (keys, idx), True
    if found is None:
        search = _topk_panel if panel else _topk_streamed
        found = _sorted(*search(q, reference, qs, k, own, measure, block_size))
    keys, idx = found
    if below_bound:  # every key is below a finite bound: only an overflow to -inf, first in its row, can occur
        overflowed = keys.shape[1] > 0 and not bool(torch.isfinite(keys[:, 0]).all())
    else:
        overflowed = bool((idx < 0).any()) or not bool(torch.isfinite(keys).all())
    if overflowed:
        # Keys overflowed to inf (embeddings beyond ~1e19 in float32): redo this block in float64, where
        # every real key is finite and ranks below the +inf of an excluded row.
        q = _Operand.queries(query_block, measure, torch.float64, center)
        prepared = _Operand.references(raw_reference, measure, torch.float64, center)
        keys, idx = _sorted(*_topk_panel(q, prepared, qs, k, own, measure, block_size))
        keys = torch.nan_to_num(keys, posinf=torch.finfo(torch.float64).max)
    return keys, idx


def _keys_to_values(keys: Tensor, query_block: Tensor, measure: KnnDistance, center: Tensor | None) -> Tensor:
    if measure is KnnDistance.EUCLIDEAN:
        q = query_block.to(keys.dtype)
        q = q if center is None else q - center.to(keys.dtype)
        return (keys + (q * q).sum(1, keepdim=True)).clamp_(min=0).sqrt_()
    return keys.neg()


def _check_search(
    query: Tensor,
    k: int,
    reference: Tensor | None,
    ref_includes_query: bool,
    distance: KnnDistance | str,
    block_size: int,
) -> tuple[Tensor, bool, KnnDistance]:
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
    return reference, ref_includes_query, measure


def _iter_checked(
    query: Tensor,
    k: int,
    reference: Tensor,
    ref_includes_query: bool,
    measure: KnnDistance,
    block_size: int,
    wide_panels: bool | None = None,
    symmetric: bool = True,
) -> Iterator[tuple[int, Neighbors]]:
    """``iter_knn`` without the argument checks (the caller has made them).

    ``wide_panels`` (None: on any device but the CPU) selects each query block's top-k from one panel of
    up to ``_ACCELERATOR_PANEL_CELLS`` keys against every reference: few large launches, as an accelerator
    wants. Otherwise the search works in cache-sized steps. Both give the same neighbours. On the CPU, a
    float32 search of a set against itself computes each pair's key once (:mod:`.self_search`, with numba)
    unless ``symmetric`` is False; its keys round differently, so near-ties may order differently.
    """
    dtype = torch.float64 if torch.float64 in (query.dtype, reference.dtype) else torch.float32
    num_ref = reference.shape[0]
    if wide_panels is None:
        wide_panels = query.device.type != "cpu"
    if wide_panels:
        panel = True
        rows = max(1, min(max(query.shape[0], 1), _ACCELERATOR_PANEL_CELLS // max(num_ref, 1)))
    else:
        # When k is a large share of the references, keeping a running top-k costs more than selecting once
        # from a panel of the block's keys against every reference; the panel's rows are bounded so that it
        # holds at most block_size ** 2 entries.
        panel = 4 * k >= num_ref - int(ref_includes_query)
        rows = max(1, min(_QUERY_ROWS, block_size**2 // max(num_ref, 1))) if panel else min(_QUERY_ROWS, block_size)
    # A threshold from a fixed random sample of references lets one pass keep only the few references
    # that can be among the k nearest, instead of merging a running top-k block after block.
    size = min(_SAMPLE_SIZE, num_ref // 8)
    p = k / max(num_ref, 1)
    thresholded = not panel and num_ref > 2 * block_size and size * p + 4 * math.sqrt(size * p) + 2 < size / 4
    if symmetric and thresholded and ref_includes_query and num_ref == query.shape[0]:
        from . import self_search

        if self_search.applies(num_ref, k, dtype, query.device):
            yield from _iter_self(query, k, measure, block_size, size)
            return
    with torch.no_grad():
        # Prepared once: for float32 Euclidean search, a (Nr, d + 1) copy of the references.
        center = _Operand.center(reference, measure, dtype)
        prepared = _Operand.references(reference, measure, dtype, center)
        sample_idx = sample = None
        if thresholded:
            sample_idx = _sample_indices(num_ref, size).to(query.device)
            sample = prepared[sample_idx]
        for qs in range(0, query.shape[0], rows):
            block = query[qs : qs + rows]
            keys, idx = _search_block(
                block,
                prepared,
                reference,
                qs,
                k,
                ref_includes_query,
                measure,
                dtype,
                block_size,
                panel,
                sample_idx,
                sample,
                center,
            )
            yield qs, Neighbors(_keys_to_values(keys, block, measure, center), idx)


def _sample_indices(num_ref: int, size: int) -> Tensor:
    """The fixed random sample of ``size`` reference rows whose keys set each query's bound."""
    return torch.randperm(num_ref, generator=torch.Generator().manual_seed(0))[:size]


def _iter_self(
    x: Tensor, k: int, measure: KnnDistance, block_size: int, sample_size: int
) -> Iterator[tuple[int, Neighbors]]:
    """The search of ``x`` against itself, own rows excluded, by :mod:`.self_search` (float32, CPU, numba).

    Rows whose bound kept fewer than k keys (rare) are redone one at a time by the row-by-row search.
    """
    from . import self_search

    num = x.shape[0]
    with torch.no_grad():
        center = _Operand.center(x, measure, torch.float32)
        left, right = self_search.symmetric_operands(x, measure.value, center)
        sample_idx = _sample_indices(num, sample_size)
        sample = right[sample_idx]
        bounds = torch.cat(
            [
                _sample_threshold(left[s : s + _QUERY_ROWS], sample, sample_idx, s, True, k, num - 1)
                for s in range(0, num, _QUERY_ROWS)
            ]
        )
        if not bool(torch.isfinite(bounds).all()):  # keys beyond float32: the row-by-row search handles them
            yield from _iter_checked(x, k, x, True, measure, block_size, symmetric=False)
            return
        prepared = None
        for start, keys, idx, short in self_search.iter_self_search(left, right, k, bounds):
            values = keys.clamp_(min=0).sqrt_() if measure is KnnDistance.EUCLIDEAN else keys.neg_()
            for row in short.nonzero().flatten().tolist():
                if prepared is None:
                    prepared = _Operand.references(x, measure, torch.float32, center)
                g = start + row
                query = x[g : g + 1]
                row_keys, row_idx = _search_block(
                    query, prepared, x, g, k, True, measure, torch.float32, block_size, False, center=center
                )
                values[row] = _keys_to_values(row_keys, query, measure, center)[0]
                idx[row] = row_idx[0]
            yield start, Neighbors(values, idx)


def iter_knn(
    query: Tensor,
    k: int,
    reference: Tensor | None = None,
    ref_includes_query: bool = False,
    distance: KnnDistance | str = "euclidean",
    block_size: int = 4096,
) -> Iterator[tuple[int, Neighbors]]:
    """:func:`knn`, one block of consecutive queries at a time: yields ``(first_query_row, Neighbors)``.

    Consumers that reduce each query's neighbours to a few numbers (the retrieval metrics) never hold
    the (Nq, k) result: memory stays ``O(rows * (k + block_size))``, except in the search of a set against
    itself with each pair computed once (see :func:`knn`), which holds up to about ``N * k`` int64 hits.
    Arguments as in :func:`knn`; they are checked before the first block is yielded.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [1.0]])
        >>> [(start, n.indices.shape) for start, n in iter_knn(x, 2)]
        [(0, torch.Size([4, 2]))]
    """
    reference, ref_includes_query, measure = _check_search(
        query, k, reference, ref_includes_query, distance, block_size
    )
    return _iter_checked(query, k, reference, ref_includes_query, measure, block_size)


def knn(
    query: Tensor,
    k: int,
    reference: Tensor | None = None,
    ref_includes_query: bool = False,
    distance: KnnDistance | str = "euclidean",
    block_size: int = 4096,
) -> Neighbors:
    """Exact k nearest neighbours of each query row among the reference rows.

    The search takes 256 queries at a time, streams over blocks of ``block_size`` references and keeps a
    running top-k per query, so memory is ``O(len(query) * k + 256 * block_size)`` and the full
    query-by-reference matrix never exists. When ``k`` is at least a quarter of the references, each query
    block instead selects from its keys against all references at once, with the block's rows limited so
    that this holds at most ``block_size ** 2`` entries. Computation is in float32 (float64 when an input
    is float64) on the inputs' device; float16 / bfloat16 inputs are upcast block by block.

    A float32 set searched against itself on the CPU (``reference`` None, or equal to ``query`` with
    ``ref_includes_query``), with numba installed (``pip install "dmlkit[fast]"``) and ``N * k <= 2**28``,
    computes each pair's key once instead of twice (:mod:`dmlkit.evaluation.self_search`): about 1.7x
    faster, holding up to about ``N * k`` int64 hits (1 GiB at the limit) until their rows are complete.

    Results are sorted nearest first; equal keys are ordered by ascending reference index, so the output
    does not depend on ``block_size``. "Exact" means exhaustive: every reference is compared. Euclidean
    rankings come from ``||r||^2 - 2 q.r`` (one matrix product per block, as in faiss) and the reported
    distances from adding ``||q||^2``; in float32 a distance near 0 carries a rounding error of about
    ``1e-3 * ||x||``, so pass float64 inputs when that matters.

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
        block_size: references per block, ``>= 1`` (also caps the queries per block).

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
    reference, ref_includes_query, measure = _check_search(
        query, k, reference, ref_includes_query, distance, block_size
    )
    dtype = torch.float64 if torch.float64 in (query.dtype, reference.dtype) else torch.float32
    out_values = torch.empty(query.shape[0], k, dtype=dtype, device=query.device)
    out_idx = torch.empty(query.shape[0], k, dtype=torch.long, device=query.device)
    for qs, found in _iter_checked(query, k, reference, ref_includes_query, measure, block_size):
        out_values[qs : qs + found.indices.shape[0]] = found.distances
        out_idx[qs : qs + found.indices.shape[0]] = found.indices
    return Neighbors(out_values, out_idx)


class ExactKNN:
    """Exact, exhaustive k-nn search usable wherever pytorch-metric-learning accepts a ``knn_func``.

    ``ExactKNN()(query, k, reference, ref_includes_query)`` returns ``(distances, indices)`` like
    pytorch-metric-learning's ``FaissKNN``, from :func:`knn` (streamed blocks, ties by index, no faiss).
    Passed as :class:`~dmlkit.evaluation.AccuracyCalculator`'s ``knn_func`` (the default), it also lets
    the calculator stream per-query metrics without holding every query's neighbours.

    Args:
        distance: ``"euclidean"``, ``"cosine"`` or ``"inner_product"`` (see :func:`knn`).
        block_size: references per block, ``>= 1``.

    Example:
        >>> distances, indices = ExactKNN()(torch.tensor([[0.0], [1.0], [3.0]]), 1, None, False)
        >>> indices.flatten().tolist()
        [1, 0, 1]
    """

    def __init__(self, distance: KnnDistance | str = "euclidean", block_size: int = 4096) -> None:
        self.distance = check_choice("ExactKNN", "distance", distance, KnnDistance)
        check_range("ExactKNN", "block_size", block_size, low=1, integer=True)
        self.block_size = block_size

    def __call__(
        self, query: Tensor, k: int, reference: Tensor | None = None, ref_includes_query: bool = False
    ) -> tuple[Tensor, Tensor]:
        found = knn(query, k, reference, ref_includes_query, self.distance, self.block_size)
        return found.distances, found.indices

    def __repr__(self) -> str:
        return f"ExactKNN(distance={self.distance.value!r}, block_size={self.block_size})"
