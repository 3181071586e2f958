"""The compiled (numba) filter pass of the exact CPU search, and the search of a set against itself with it.

When the queries are the references (query = reference, each row's own match excluded), the key of
``(a, b)`` is the key of ``(b, a)``: the squared distance ``||a||^2 + ||b||^2 - 2 a.b`` (both norms folded
into one matrix product by two extra columns) or the negated cosine / inner product. The search computes
only the tiles on and above the diagonal of the key matrix, half the matrix products of a row-by-row
search, and each tile serves its rows and its columns.

Every row first gets a bound from a random sample of references (as the row-by-row search does), a key
that very likely has at least k keys below it. One compiled pass over each tile (numba) then compares every
key with its row's bound and its column's bound and appends each hit as one int64: the local row in the
top 10 bits, the key's bits mapped to an unsigned integer with the float order, and the other side's index
in the low 22 bits, so that sorting the integers orders them by (row, key, index). The rows of a band of
1024 are complete once their own tiles are done: their column-side hits came from earlier bands. One sort
then gives each row its k nearest, equal keys by index. torch would need five or more passes over each
tile for the same work (compare, find, gather, decode, pack).

The column-side hits wait for their band, about ``N * k / 2`` int64 at the peak, so the search is used
where ``N * k`` is at most ``_PENDING_LIMIT``; larger searches, and queries against separate references,
go row by row (see ``knn``), where :func:`topk_below_bounds` does the same compiled pass for the rows alone.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: rows completed together, and the width of a column block: a band's local row fits in 10 bits.
_BAND = 1024
#: rows per tile: a (256, 1024) float32 tile is 1 MiB and stays in a 2 MiB L2 cache.
_TILE_ROWS = 256
#: bits of the index in a packed hit: up to 4,194,304 embeddings.
_INDEX_BITS = 22
#: the search's size range: below ``_MIN_SIZE`` rows one row-by-row pass is as fast; with ``N * k`` above
#: ``_PENDING_LIMIT``, the waiting column-side hits (8 bytes each) would hold more than about 1 GiB.
_MIN_SIZE = 4 * _BAND
_PENDING_LIMIT = 2**28
#: references per step of the row-by-row pass: fewer, larger steps leave less per-step overhead (a step of
#: 256 rows is 16 MiB of keys, in the last-level cache).
_ROW_STEP = 16384
#: hits per row that the buffers first hold room for, per neighbour asked (they grow when a tile needs more).
_ROOM_PER_NEIGHBOUR = 2


def _filter_tile(
    keys: Any,
    row_bounds: Any,
    col_bounds: Any,
    both_sides: bool,
    own_row0: int,
    local_row0: int,
    global_row0: int,
    col0: int,
    row_hits: Any,
    num_row: int,
    col_hits: Any,
    num_col: int,
) -> tuple[int, int]:
    """Append the hits of a tile of keys (rows ``global_row0 + i``, columns ``col0 + j``).

    Row side: key below the row's bound, packed as (local row ``local_row0 + i``, key, column index) at
    ``row_hits[num_row:]``. Column side (``both_sides``): key below the column's bound, packed as (column
    within its band, key, row index) at ``col_hits[num_col:]``. With ``own_row0 >= 0``, row ``i`` is reference
    ``own_row0 + i`` and its own column is skipped. Writes stop at each array's end but the counts go on, so a
    count beyond the capacity tells the caller to grow the array and run the tile again.

    Each row is compared in one vectorised pass into bytes (bit 0: row side, bit 1: column side); the bytes
    are read eight at a time as 64-bit words, the positions of the non-zero words gathered without a branch,
    and the set bytes of those (about one word in eight at the usual bounds) visited by their lowest set bit.
    Compiled by numba.
    """
    rows, width = keys.shape
    flags = np.zeros(8 * ((width + 7) // 8), dtype=np.uint8)  # the padding bytes stay 0
    words = flags.view(np.uint64)
    nonzero = np.empty(width // 8 + 1, dtype=np.int64)
    for i in range(rows):
        bound = row_bounds[i]
        row = keys[i]
        if both_sides:
            for j in range(width):
                flags[j] = np.uint8(row[j] < bound) | (np.uint8(row[j] < col_bounds[j]) << np.uint8(1))
        else:
            for j in range(width):
                flags[j] = row[j] < bound
        if own_row0 >= 0 and 0 <= own_row0 + i - col0 < width:
            flags[own_row0 + i - col0] = 0
        found = 0
        for w in range((width + 7) // 8):
            nonzero[found] = w
            found += words[w] != 0
        row_field = np.int64(local_row0 + i) << 54
        row_index = np.int64(global_row0 + i)
        for t in range(found):
            w = nonzero[t]
            word = words[w]
            while word:
                lowest = word & (~word + np.uint64(1))
                # the lowest set bit as a float64 power of two: its exponent is the bit's position
                shift = ((np.float64(lowest).view(np.int64) >> 52) - 1023) & ~np.int64(7)
                j = 8 * w + (shift >> 3)
                byte = (word >> np.uint64(shift)) & np.uint64(0xFF)
                key = row[j]
                # -0.0 + 0.0 is +0.0, so the two zeros tie; the float order as an unsigned 32-bit integer
                bits = np.int64(np.float32(key + np.float32(0.0)).view(np.int32))
                ordered = ((bits ^ ((bits >> 31) | np.int64(0x80000000))) & np.int64(0xFFFFFFFF)) << 22
                if byte & np.uint64(1):
                    if num_row < row_hits.shape[0]:
                        row_hits[num_row] = row_field | ordered | np.int64(col0 + j)
                    num_row += 1
                if byte & np.uint64(2):
                    if num_col < col_hits.shape[0]:
                        col_hits[num_col] = (np.int64(j) << 54) | ordered | row_index
                    num_col += 1
                word ^= byte << np.uint64(shift)
    return num_row, num_col


def _first_k(hits: Any, row0: int, keys: Any, indices: Any, counts: Any) -> None:
    """Each row's first hits, decoded: ``keys[r]``, ``indices[r]`` and ``counts[r]`` (all its hits) of local row
    ``row0 + r``, from ``hits`` sorted as unsigned integers that hold no other rows. A row with fewer than
    ``k = keys.shape[1]`` hits fills only its first ``counts[r]`` entries. Compiled by numba.
    """
    rows, k = keys.shape
    start = 0
    for r in range(rows):
        last = r == rows - 1
        stop = hits.shape[0] if last else np.searchsorted(hits, np.uint64(row0 + r + 1) << np.uint64(54))
        counts[r] = stop - start
        for t in range(min(k, stop - start)):
            value = hits[start + t]
            ordered = (value >> np.uint64(22)) & np.uint64(0xFFFFFFFF)
            if ordered & np.uint64(0x80000000):
                bits = ordered ^ np.uint64(0x80000000)
            else:
                bits = ~ordered & np.uint64(0xFFFFFFFF)
            keys[r, t] = np.uint32(bits).view(np.float32)
            indices[r, t] = np.int64(value & np.uint64((1 << 22) - 1))
        start = int(stop)


class Kernels(NamedTuple):
    """The compiled passes: :func:`_filter_tile` and :func:`_first_k`."""

    tile: Callable[..., tuple[int, int]]
    first_k: Callable[..., None]


@functools.lru_cache(maxsize=1)
def compiled_filter() -> Kernels | None:
    """The passes compiled by numba (cached on disk after the first compilation), or None without numba."""
    try:
        import numba
    except Exception:  # not installed, or not importable beside this numpy
        return None
    compile_ = numba.njit(cache=True, nogil=True, boundscheck=False)
    return Kernels(tile=compile_(_filter_tile), first_k=compile_(_first_k))


def warm_up() -> bool:
    """Import numba and load the compiled tile pass (compiling it on the first use after installation).

    The first search of a process does this itself (about 0.3 s and 100 MiB of resident memory for numba
    and LLVM); a program can pay it up front. Returns whether the pass is available.
    """
    kernels = compiled_filter()
    if kernels is None:
        return False
    keys = np.zeros((1, 1), dtype=np.float32)
    bounds = np.ones(1, dtype=np.float32)
    kernels.tile(keys, bounds, bounds, True, 0, 0, 0, 0, np.empty(1, dtype=np.int64), 0, np.empty(1, dtype=np.int64), 0)
    kernels.first_k(np.zeros(1, dtype=np.uint64), 0, keys, *(t.numpy() for t in _top_k_buffers(1, 1)[1:]))
    return True


def applies(num: int, k: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a self-search of ``num`` float rows for ``k`` neighbours takes this path."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and _MIN_SIZE <= num < 2**_INDEX_BITS
        and num * k <= _PENDING_LIMIT
        and compiled_filter() is not None
    )


def rows_apply(num_ref: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`topk_below_bounds` serves a row-by-row search of ``num_ref`` references."""
    small_enough = num_ref < 2**_INDEX_BITS
    return device.type == "cpu" and dtype == torch.float32 and small_enough and compiled_filter() is not None


def symmetric_operands(x: Tensor, measure: str, center: Tensor | None) -> tuple[Tensor, Tensor]:
    """(left, right) float32 operands whose product ``left @ right.T`` is the symmetric key matrix."""
    if measure == "euclidean":
        shifted = x.float() if center is None else x.float() - center
        norms = (shifted * shifted).sum(1, keepdim=True)
        ones = torch.ones_like(norms)
        return torch.cat([shifted, norms, ones], dim=1), torch.cat([shifted * -2, ones, norms], dim=1)
    left = F.normalize(x.float(), dim=1) if measure == "cosine" else x.float()
    return left, left.neg()


def iter_self_search(
    left: Tensor, right: Tensor, k: int, bounds: Tensor
) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """Bands of ``(first_row, keys, indices, short)``: each row's k smallest keys, ascending, ties by index.

    ``bounds`` holds one key per row; the rows of ``short`` had fewer than k keys below theirs and hold
    garbage (the caller redoes them).
    """
    kernels = compiled_filter()
    assert kernels is not None, "iter_self_search needs numba (see applies)"
    num = left.shape[0]
    bands = -(-num // _BAND)
    bound_values = bounds.numpy()
    pending: list[list[np.ndarray]] = [[] for _ in range(bands)]
    tile = torch.empty(_TILE_ROWS * _BAND)
    per_row = _ROOM_PER_NEIGHBOUR * k + 64
    row_hits = np.empty(_BAND * per_row, dtype=np.int64)
    col_hits = np.empty(_TILE_ROWS * per_row, dtype=np.int64)
    for band in range(bands):
        r0, r1 = band * _BAND, min((band + 1) * _BAND, num)
        num_row = 0
        for s0 in range(r0, r1, _TILE_ROWS):
            s1 = min(s0 + _TILE_ROWS, r1)
            for block in range(band, bands):
                c0, c1 = block * _BAND, min((block + 1) * _BAND, num)
                keys = tile[: (s1 - s0) * (c1 - c0)].view(s1 - s0, c1 - c0)  # contiguous, also at the edges
                torch.mm(left[s0:s1], right[c0:c1].T, out=keys)
                # the diagonal band: own columns out, row side only (both orders of each pair are here)
                diagonal = block == band
                own_row0 = s0 if diagonal else -1
                args = (keys.numpy(), bound_values[s0:s1], bound_values[c0:c1], not diagonal, own_row0, s0 - r0, s0, c0)
                row_hits, found_row, col_hits, found_col = _run_tile(kernels.tile, args, row_hits, num_row, col_hits)
                num_row = found_row
                if found_col:
                    pending[block].append(col_hits[:found_col].copy())
        keys, indices, short = _rows_top_k([row_hits[:num_row], *pending[band]], r1 - r0, k)
        pending[band] = []
        yield r0, keys, indices, short


def topk_below_bounds(
    q: Tensor, reference: Tensor, first_row: int, k: int, own: bool, bounds: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One block of at most 1024 query rows against every reference: (keys, indices, short) as in
    :func:`iter_self_search`, for searches that are not a set against itself (each pair computed once here).

    ``q`` and ``reference`` are prepared operands; ``first_row`` is the block's first row, whose own
    reference is excluded when ``own``. With more than one torch thread, the rows are split among as many
    threads for the compiled pass (it releases the GIL) and for the final sort.
    """
    kernels = compiled_filter()
    assert kernels is not None, "topk_below_bounds needs numba (see applies)"
    rows, num = q.shape[0], reference.shape[0]
    workers = max(1, min(torch.get_num_threads(), rows))
    edges = [rows * w // workers for w in range(workers + 1)]
    groups = list(zip(edges[:-1], edges[1:], strict=True))
    tile = torch.empty(rows * min(_ROW_STEP, num))
    bound_values = bounds.contiguous().numpy()
    hits = [np.empty((stop - start) * (_ROOM_PER_NEIGHBOUR * k + 64), dtype=np.int64) for start, stop in groups]
    found = [0] * workers
    no_hits = np.empty(0, dtype=np.int64)

    def filter_rows(group: int, keys: np.ndarray, c0: int) -> None:
        start, stop = groups[group]
        own_row0 = first_row + start if own else -1
        args = (keys[start:stop], bound_values[start:stop], bound_values, False, own_row0, start, first_row + start, c0)
        hits[group], found[group], _, _ = _run_tile(kernels.tile, args, hits[group], found[group], no_hits)

    with ThreadPoolExecutor(workers - 1) if workers > 1 else contextlib.nullcontext() as pool:
        for c0 in range(0, num, _ROW_STEP):
            width = min(_ROW_STEP, num - c0)
            keys = tile[: rows * width].view(rows, width)  # contiguous, also in the last step
            torch.mm(q, reference[c0 : c0 + width].T, out=keys)
            _each_group(pool, workers, filter_rows, keys.numpy(), c0)
        # each group holds its own rows: sorted apart, each gives its rows' first k
        top_k = _top_k_buffers(rows, k)

        def first_k(group: int) -> None:
            start, stop = groups[group]
            ordered = hits[group][: found[group]].view(np.uint64)
            ordered.sort()  # in place: the buffer is not needed again
            kernels.first_k(ordered, start, *(t[start:stop].numpy() for t in top_k))

        _each_group(pool, workers, first_k)
    keys, indices, counts = top_k
    return keys, indices, counts < k


def _each_group(pool: ThreadPoolExecutor | None, workers: int, work: Callable[..., None], *args: Any) -> None:
    """``work(group, *args)`` for every group: the last one in this thread, the others in ``pool``."""
    others = [pool.submit(work, group, *args) for group in range(workers - 1)] if pool else []
    work(workers - 1, *args)
    for other in others:
        other.result()


def _rows_top_k(parts: list[np.ndarray], rows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's k first hits in (key, index) order from packed hits of ``rows`` rows: (keys, indices, short)."""
    kernels = compiled_filter()
    assert kernels is not None
    hits = np.sort(np.concatenate(parts).view(np.uint64))
    keys, indices, counts = _top_k_buffers(rows, k)
    kernels.first_k(hits, 0, keys.numpy(), indices.numpy(), counts.numpy())
    return keys, indices, counts < k


def _top_k_buffers(rows: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Empty (keys, indices, counts) for :func:`_first_k` to fill."""
    return torch.empty(rows, k), torch.empty(rows, k, dtype=torch.long), torch.empty(rows, dtype=torch.long)


def _run_tile(
    tile_pass: Callable[..., tuple[int, int]],
    args: tuple[Any, ...],
    row_hits: np.ndarray,
    num_row: int,
    col_hits: np.ndarray,
) -> tuple[np.ndarray, int, np.ndarray, int]:
    """The tile pass with row hits appended after ``num_row`` and column hits from the start, both buffers
    grown (and the tile run again) until they hold every hit: ``(row_hits, found_row, col_hits, found_col)``."""
    while True:
        found_row, found_col = tile_pass(*args, row_hits, num_row, col_hits, 0)
        if found_row <= row_hits.shape[0] and found_col <= col_hits.shape[0]:
            return row_hits, found_row, col_hits, found_col
        row_hits = _grown(row_hits, found_row, num_row)
        col_hits = _grown(col_hits, found_col, 0)


def _grown(hits: np.ndarray, needed: int, keep: int) -> np.ndarray:
    """``hits`` with room for at least ``needed`` values, its first ``keep`` values kept."""
    if needed <= hits.shape[0]:
        return hits
    bigger = np.empty(max(needed, 2 * hits.shape[0]), dtype=np.int64)
    bigger[:keep] = hits[:keep]
    return bigger
