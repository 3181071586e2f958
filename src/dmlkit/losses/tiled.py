"""Tiled evaluation of pair losses: the (query, reference) matrix one block at a time, recomputed in backward.

A loss over every pair of a batch of ``B`` embeddings normally holds the ``B x B`` distance matrix and, for
autograd, several more tensors of its size, so its memory grows with ``B ** 2``. Every pair loss of dmlkit
that has a tiled path is, once its pairs are fixed, a function of per-row aggregates of the matrix over a set
of pairs: a log-sum-exp (the softmax losses), a sum of an element-wise function (hinges, sigmoids), or a sum
per positive pair over the anchor's row (triplets). Such aggregates can be accumulated one
``block x block`` tile at a time: tiles of the same rows are merged with an online log-sum-exp (Milakov and
Gimelshein, 2018, "Online normalizer calculation for softmax", arXiv:1805.02867) or added up. The forward pass
keeps only the aggregates; the backward pass recomputes each tile from the embeddings and turns the
aggregates' gradients into gradients of the embeddings, as Cheng et al. (2024, "Breaking the Memory Barrier:
Near Infinite Batch Size Scaling for Contrastive Loss", arXiv:2410.17243) do for the InfoNCE loss. Memory is
``O(B * D + block ** 2)``; time is one more matrix product per tile than the dense path.

The pieces: a :class:`PairBlocks` says which cells of a tile belong to the positive, negative or candidate
pairs (from labels, from a miner's pair lists, or every pair); a :class:`TileKernel` says what to aggregate
(:class:`RowStatKernel` covers aggregates of element-wise functions, :class:`CellStat`); :func:`tiled_rows`
runs the tiles under a custom autograd function. :func:`pair_distances` evaluates listed pairs only, in chunks,
and :func:`label_pairs` lists the positive pairs of labels without a ``B x B`` mask.

Every distance of dmlkit computes each entry of its matrix from one query row and one reference row, which is
what evaluating tiles separately needs; inputs are the already normalised embeddings.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import BaseDistance, DotProductSimilarity
from ..indices import convert_to_pairs, list_label_pairs, pair_counts, ref_is_query, select_in_place
from ..types import LabelPairs
from .functional import segment_logsumexp

__all__ = [
    "AUTO_TILE_BATCH",
    "DENSE_LISTED_CELLS",
    "DEFAULT_BLOCK",
    "check_chunk_size",
    "tile_size",
    "PairSet",
    "Aggregate",
    "Count",
    "PairBlocks",
    "LabelBlocks",
    "ListedBlocks",
    "MaskBlocks",
    "listed_blocks",
    "EveryPairBlocks",
    "TileKernel",
    "CellStat",
    "AffineStat",
    "RowStatKernel",
    "tiled_rows",
    "pair_distances",
    "label_pairs",
    "positive_label_pairs",
    "listed_pairs",
    "sorted_by_row",
    "listed_in_both",
    "normalized_inputs",
    "few_pairs",
    "BlockPlan",
    "plan_pair_blocks",
    "negative_and_positive_logsumexp",
    "distinct_pairs",
    "label_pair_counts",
    "listed_pair_counts",
    "labels_have_negative",
    "ExceptSelf",
    "masked",
    "masked_log",
    "spread",
]

#: with ``chunk_size=None`` the tiled path is taken when the matrix has more cells than ``AUTO_TILE_BATCH ** 2``
#: (below that the dense path is about as fast; at 4096 x 4096 the tiled one is faster and far leaner).
AUTO_TILE_BATCH = 3072
#: mined pairs denser than one per this many cells are held as whole-matrix masks instead of lists bucketed by
#: tile (16 bytes a pair): see :func:`listed_blocks`.
DENSE_LISTED_CELLS = 16
#: the tile side used with ``chunk_size=None``: a float32 tile is 4 MiB.
DEFAULT_BLOCK = 1024
#: listed pairs evaluated at once by :func:`pair_distances`.
PAIR_CHUNK = 1 << 16
#: positive pairs are evaluated from a list (instead of masks on every tile) when there are at most this many
#: per query and reference element: then the list is small and the tiles need no label comparison.
LISTED_PER_ELEMENT = 32


class ExceptSelf:
    """Every cell of a tile but its self-pairs ``(i, i + offset)`` (a tile of a batch against itself).

    Example:
        >>> masked(torch.ones(2, 3), ExceptSelf(1))
        tensor([[1., 0., 1.],
                [1., 1., 0.]])
    """

    def __init__(self, offset: int) -> None:
        self.offset = offset


#: which cells of a tile belong to a pair set: ``None`` is every cell, :class:`ExceptSelf` every cell but the
#: self-pairs, a bool tensor marks them, a float tensor gives each cell a multiplicity (a pair listed ``k`` times
#: weighs ``k``).
Mask = Tensor | ExceptSelf | None


def check_chunk_size(owner: str, chunk_size: int | None) -> None:
    """Validate a loss's ``chunk_size``: ``None`` (automatic), ``0`` (never tile) or a tile side ``>= 1``.

    Example:
        >>> check_chunk_size("NTXentLoss", 512)
    """
    if chunk_size is not None:
        check_range(owner, "chunk_size", chunk_size, low=0, integer=True)


def tile_size(
    chunk_size: int | None, num_query: int, num_ref: int, indices_tuple: Sequence[Tensor] | None = None
) -> int | None:
    """The tile side for a ``(num_query, num_ref)`` matrix, or ``None`` for the dense path.

    ``chunk_size=None`` tiles matrices of more than ``AUTO_TILE_BATCH ** 2`` cells with ``DEFAULT_BLOCK``, unless
    a miner's ``indices_tuple`` lists more than one positive pair (one per triplet) per ``DENSE_LISTED_CELLS``
    cells (a :class:`~dmlkit.types.LabelPairs` description lists nothing): the tiled path evaluates listed
    positive pairs one by one from the embeddings, which then costs more than the matrix (negatives are masked
    per tile however many they are). ``0`` never tiles; a positive value always tiles with that side.

    Example:
        >>> tile_size(None, 100, 100) is None, tile_size(None, 8192, 8192), tile_size(64, 100, 100)
        (True, 1024, 64)
        >>> triplets = (torch.zeros(8192 * 8192 // 8, dtype=torch.long),) * 3
        >>> tile_size(None, 8192, 8192, triplets) is None
        True
    """
    if chunk_size is None:
        cells = num_query * num_ref
        if cells <= AUTO_TILE_BATCH**2:
            return None
        listed = indices_tuple is not None and not isinstance(indices_tuple, LabelPairs)
        positives = indices_tuple[0].numel() if listed else 0  # type: ignore[index]
        return None if positives * DENSE_LISTED_CELLS > cells else DEFAULT_BLOCK
    return chunk_size if chunk_size > 0 else None


class PairSet(str, enum.Enum):
    """The pairs an aggregate runs over: positive pairs, negative pairs, or candidates (either kind; from labels
    or with no labels, every pair but the self-pairs).

    Example:
        >>> PairSet("negative") is PairSet.NEGATIVE
        True
    """

    POSITIVE = "positive"
    NEGATIVE = "negative"
    CANDIDATE = "candidate"


class Aggregate(str, enum.Enum):
    """How a row's cells are combined: ``log(sum(w * exp(v)))`` (``-inf`` for no cell) or ``sum(w * v)``.

    Example:
        >>> [a.value for a in Aggregate]
        ['logsumexp', 'sum']
    """

    LOGSUMEXP = "logsumexp"
    SUM = "sum"


class Count(str, enum.Enum):
    """What is counted alongside an aggregate (not differentiable): nothing, the cells (with their multiplicity),
    or the cells whose value is positive (the non-zero mean's divisor).

    Example:
        >>> Count("positive") is Count.POSITIVE
        True
    """

    NONE = "none"
    CELLS = "cells"
    POSITIVE = "positive"


def _self_offset(rows: tuple[int, int], cols: tuple[int, int]) -> int | None:
    """The diagonal ``(i, i + offset)`` of a tile of a batch against itself that holds its self-pairs, or ``None``
    when the tile has none."""
    (r0, r1), (c0, c1) = rows, cols
    return r0 - c0 if max(r0, c0) < min(r1, c1) else None


class PairBlocks:
    """Which cells of each tile belong to each :class:`PairSet`.

    Example:
        >>> blocks = EveryPairBlocks(same_set=False, device=torch.device("cpu"))
        >>> blocks.block((0, 2), (0, 2), [PairSet.CANDIDATE])
        [None]
    """

    def block(self, rows: tuple[int, int], cols: tuple[int, int], sets: Sequence[PairSet]) -> list[Mask] | None:
        """The masks of ``sets`` on the tile ``rows x cols``; ``None`` when none of them has a cell there."""
        raise NotImplementedError


class LabelBlocks(PairBlocks):
    """Pairs from labels: positives share a label (self-pairs excluded when the reference set is the batch,
    i.e. ``ref_labels`` is ``None`` or ``labels`` itself), negatives do not, candidates are both.

    Example:
        >>> blocks = LabelBlocks(torch.tensor([0, 0, 1]))
        >>> positive, negative = blocks.block((0, 2), (0, 3), [PairSet.POSITIVE, PairSet.NEGATIVE])
        >>> positive.int().tolist(), negative.int().tolist()
        ([[0, 1, 0], [1, 0, 0]], [[0, 0, 1], [0, 0, 1]])
    """

    def __init__(self, labels: Tensor, ref_labels: Tensor | None = None) -> None:
        self.same_set = ref_is_query(labels, ref_labels)
        ref = labels if ref_labels is None else ref_labels
        # compact label ids in the narrowest integer type: the per-tile comparisons are then cheaper
        ids = torch.unique(torch.cat([labels, ref]), return_inverse=True)[1]
        dtype = torch.int16 if ids.numel() == 0 or int(ids.max()) < 2**15 else torch.int32
        ids = ids.to(dtype)
        self.labels = ids[: labels.shape[0]]
        self.ref_labels = self.labels if self.same_set else ids[labels.shape[0] :]

    def block(self, rows: tuple[int, int], cols: tuple[int, int], sets: Sequence[PairSet]) -> list[Mask] | None:
        query = self.labels[rows[0] : rows[1]].unsqueeze(1)
        ref = self.ref_labels[cols[0] : cols[1]].unsqueeze(0)
        offset = _self_offset(rows, cols) if self.same_set else None
        same: Tensor | None = None
        masks: list[Mask] = []
        for kind in sets:
            if kind is PairSet.CANDIDATE:
                masks.append(None if offset is None else ExceptSelf(offset))
                continue
            if same is None:
                same = query == ref
            if kind is PairSet.NEGATIVE:
                masks.append(~same)
            else:
                positive = same.clone() if PairSet.NEGATIVE in sets else same
                if offset is not None:
                    positive.diagonal(offset).fill_(False)
                masks.append(positive)
        return masks


class EveryPairBlocks(PairBlocks):
    """Every pair, without labels (only :attr:`PairSet.CANDIDATE`); self-pairs excluded when ``same_set``.

    Example:
        >>> mask = EveryPairBlocks(True, torch.device("cpu")).block((0, 2), (1, 3), [PairSet.CANDIDATE])[0]
        >>> mask.offset  # cell (1, 0) of this tile is the self-pair (1, 1)
        -1
    """

    def __init__(self, same_set: bool, device: torch.device) -> None:
        self.same_set = same_set
        self.device = device

    def block(self, rows: tuple[int, int], cols: tuple[int, int], sets: Sequence[PairSet]) -> list[Mask] | None:
        if any(kind is not PairSet.CANDIDATE for kind in sets):
            raise ValueError("EveryPairBlocks: only candidate pairs exist without labels.")
        offset = _self_offset(rows, cols) if self.same_set else None
        return [None if offset is None else ExceptSelf(offset) for _ in sets]


class ListedBlocks(PairBlocks):
    """Pairs listed by a miner: positive pairs ``(a1, p)`` and negative pairs ``(a2, n)``, bucketed by tile once.

    Args:
        shape: the matrix's ``(num_query, num_ref)``.
        block: the tile side.
        positive: ``(a1, p)``, or ``None`` for no positive pair.
        negative: ``(a2, n)``, or ``None`` for no negative pair.
        multiplicity: a pair listed ``k`` times weighs ``k`` (float masks of ``dtype``); otherwise the pairs are
            a set (bool masks). Candidates are always a set.
        dtype: the float type of multiplicity masks.

    Example:
        >>> negative = (torch.tensor([0, 0, 3]), torch.tensor([2, 2, 1]))
        >>> blocks = ListedBlocks((4, 4), 2, None, negative, multiplicity=True)
        >>> blocks.block((0, 2), (2, 4), [PairSet.NEGATIVE])[0]
        tensor([[2., 0.],
                [0., 0.]])
        >>> blocks.block((0, 2), (0, 2), [PairSet.NEGATIVE]) is None
        True
    """

    def __init__(
        self,
        shape: tuple[int, int],
        block: int,
        positive: tuple[Tensor, Tensor] | None,
        negative: tuple[Tensor, Tensor] | None,
        multiplicity: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.block_size = block
        self.col_blocks = -(-shape[1] // block)
        self.num_tiles = -(-shape[0] // block) * self.col_blocks
        self.multiplicity = multiplicity
        self.dtype = dtype
        self.buckets = {PairSet.POSITIVE: self._bucket(positive), PairSet.NEGATIVE: self._bucket(negative)}

    def _bucket(self, pairs: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, list[int]] | None:
        if pairs is None or pairs[0].numel() == 0:
            return None
        rows, cols = pairs
        tiles = torch.div(rows, self.block_size, rounding_mode="floor") * self.col_blocks
        tiles += torch.div(cols, self.block_size, rounding_mode="floor")
        tiles, order = torch.sort(tiles, stable=True)
        bounds = torch.arange(self.num_tiles + 1, device=tiles.device)
        starts = torch.searchsorted(tiles, bounds).tolist()
        return rows[order], cols[order], starts

    def _mask(self, kind: PairSet, rows: tuple[int, int], cols: tuple[int, int], weighted: bool) -> Tensor | None:
        bucket = self.buckets[kind]
        if bucket is None:
            return None
        tile = (rows[0] // self.block_size) * self.col_blocks + cols[0] // self.block_size
        lo, hi = bucket[2][tile], bucket[2][tile + 1]
        if hi == lo:
            return None
        r, c = bucket[0][lo:hi] - rows[0], bucket[1][lo:hi] - cols[0]
        shape = (rows[1] - rows[0], cols[1] - cols[0])
        if weighted:
            return pair_counts(shape, r, c, self.dtype)
        mask = torch.zeros(shape, dtype=torch.bool, device=r.device)
        mask[r, c] = True
        return mask

    def block(self, rows: tuple[int, int], cols: tuple[int, int], sets: Sequence[PairSet]) -> list[Mask] | None:
        found: dict[PairSet, Tensor | None] = {}
        for kind in set(sets):
            if kind is PairSet.CANDIDATE:
                pos = self._mask(PairSet.POSITIVE, rows, cols, False)
                neg = self._mask(PairSet.NEGATIVE, rows, cols, False)
                found[kind] = pos if neg is None else (neg if pos is None else pos | neg)
            else:
                found[kind] = self._mask(kind, rows, cols, self.multiplicity)
        if all(mask is None for mask in found.values()):
            return None
        shape = (rows[1] - rows[0], cols[1] - cols[0])
        masks: list[Mask] = []
        for kind in sets:
            mask = found[kind]
            if mask is None:  # a set without a cell in this tile (the tile is evaluated for the others)
                weighted = self.multiplicity and kind is not PairSet.CANDIDATE
                device = next(b[0].device for b in self.buckets.values() if b is not None)
                mask = torch.zeros(shape, dtype=self.dtype if weighted else torch.bool, device=device)
            masks.append(mask)
        return masks


class MaskBlocks(PairBlocks):
    """Listed pairs held as whole-matrix masks, sliced per tile: for miners' outputs that cover a large share of
    the matrix (see :func:`listed_blocks`). Bool masks for sets; with ``multiplicity``, float masks of ``dtype``
    counting how often each pair is listed (candidates stay a set).

    Example:
        >>> blocks = MaskBlocks((3, 3), None, (torch.tensor([0, 2, 0]), torch.tensor([1, 1, 1])), multiplicity=True)
        >>> blocks.block((0, 2), (0, 3), [PairSet.NEGATIVE])[0].tolist()
        [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]
    """

    def __init__(
        self,
        shape: tuple[int, int],
        positive: tuple[Tensor, Tensor] | None,
        negative: tuple[Tensor, Tensor] | None,
        multiplicity: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.weighted = multiplicity
        mask_type = dtype if multiplicity else torch.bool
        self.masks = {
            PairSet.POSITIVE: _pair_mask(shape, positive, mask_type),
            PairSet.NEGATIVE: _pair_mask(shape, negative, mask_type),
        }
        self.mask_type = mask_type

    def block(self, rows: tuple[int, int], cols: tuple[int, int], sets: Sequence[PairSet]) -> list[Mask] | None:
        tiles = {}
        for kind, mask in self.masks.items():
            if mask is not None:
                tile = mask[rows[0] : rows[1], cols[0] : cols[1]]
                if bool(tile.any()):
                    tiles[kind] = tile
        if not tiles:
            return None
        masks: list[Mask] = []
        for kind in sets:
            if kind is PairSet.CANDIDATE:
                found = [tile != 0 if self.weighted else tile for tile in tiles.values()]
                masks.append(found[0] if len(found) == 1 else found[0] | found[1])
            elif kind in tiles:
                masks.append(tiles[kind])
            else:  # a set without a cell in this tile (the tile is evaluated for the others)
                shape = (rows[1] - rows[0], cols[1] - cols[0])
                device = next(iter(tiles.values())).device
                masks.append(torch.zeros(shape, dtype=self.mask_type, device=device))
        return masks


def _pair_mask(shape: tuple[int, int], pairs: tuple[Tensor, Tensor] | None, dtype: torch.dtype) -> Tensor | None:
    if pairs is None or pairs[0].numel() == 0:
        return None
    if dtype != torch.bool:
        return pair_counts(shape, pairs[0], pairs[1], dtype)
    mask = torch.zeros(shape, dtype=dtype, device=pairs[0].device)
    mask[pairs[0], pairs[1]] = True
    return mask


def listed_blocks(
    shape: tuple[int, int],
    block: int,
    positive: tuple[Tensor, Tensor] | None,
    negative: tuple[Tensor, Tensor] | None,
    multiplicity: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PairBlocks:
    """The blocks of a miner's pairs: :class:`MaskBlocks` when they are more than one per ``DENSE_LISTED_CELLS``
    cells (whole-matrix masks then cost less than the lists, and nothing is sorted into tiles),
    :class:`ListedBlocks` otherwise. The arguments are those of :class:`ListedBlocks`.

    Example:
        >>> pairs = (torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]))
        >>> type(listed_blocks((3, 3), 2, None, pairs)).__name__, type(listed_blocks((64, 64), 8, None, pairs)).__name__
        ('MaskBlocks', 'ListedBlocks')
    """
    listed = sum(pairs[0].numel() for pairs in (positive, negative) if pairs is not None)
    if listed * DENSE_LISTED_CELLS > shape[0] * shape[1]:
        blocks = MaskBlocks(shape, positive, negative)
        distinct = sum(int(torch.count_nonzero(mask)) for mask in blocks.masks.values() if mask is not None)
        if not multiplicity or distinct == listed:
            return blocks  # no pair is listed twice: a set, whatever the multiplicity rule
        return MaskBlocks(shape, positive, negative, multiplicity, dtype)
    return ListedBlocks(shape, block, positive, negative, multiplicity, dtype)


def masked_log(values: Tensor, mask: Mask) -> Tensor:
    """``values + log(mask)``: ``-inf`` outside the mask, ``+ log k`` for a multiplicity ``k``. ``values`` may be
    modified in place."""
    if mask is None:
        return values
    if isinstance(mask, ExceptSelf):
        values.diagonal(mask.offset).fill_(float("-inf"))
        return values
    if mask.dtype == torch.bool:
        return select_in_place(mask, values, float("-inf"))
    return values.add_(mask.log())


def masked(values: Tensor, mask: Mask) -> Tensor:
    """``values * mask``: 0 outside the mask, times the multiplicity inside. ``values`` may be modified in place."""
    if mask is None:
        return values
    if isinstance(mask, ExceptSelf):
        values.diagonal(mask.offset).fill_(0.0)
        return values
    if mask.dtype == torch.bool:
        return select_in_place(mask, values, 0.0)
    return values.mul_(mask)


def _row_count(mask: Mask, shape: torch.Size, like: Tensor) -> Tensor:
    if mask is None or isinstance(mask, ExceptSelf):
        counts = like.new_full((shape[0],), float(shape[1]))
        if isinstance(mask, ExceptSelf):
            rows = torch.arange(shape[0], device=like.device) + mask.offset
            counts -= ((rows >= 0) & (rows < shape[1])).to(like.dtype)
        return counts
    return mask.sum(dim=1, dtype=like.dtype)


def spread(grad: Tensor, mask: Mask, shape: torch.Size) -> Tensor:
    """A new ``shape`` tensor holding ``grad[i]`` on row ``i``'s cells of the mask (times their multiplicity), 0
    elsewhere."""
    column = grad.unsqueeze(1)
    if mask is None or isinstance(mask, ExceptSelf):
        return masked(column.expand(shape).clone(), mask)
    if mask.dtype == torch.bool:
        return torch.where(mask, column, column.new_zeros(()))
    return mask * column


class TileKernel:
    """What a tiled pass computes: ``len(aggregates)`` values per query row, accumulated tile by tile (see
    :class:`RowStatKernel` for an example).

    ``forward_block`` returns a tile's partial values (merged across the row's tiles by each output's
    :class:`Aggregate`) and counts; ``backward_block`` returns ``d loss / d tile`` given the finished outputs of
    the tile's rows and their gradients, adding the gradients of any extra inputs into ``extra_grads``.
    """

    #: the pair sets whose masks the kernel reads, in this order.
    pair_sets: tuple[PairSet, ...] = ()
    #: one per output column.
    aggregates: tuple[Aggregate, ...] = ()

    def skips(self, rows: tuple[int, int]) -> bool:
        """Whether the rows contribute nothing (their tiles are not evaluated)."""
        return False

    def forward_block(
        self, tile: Tensor, masks: list[Mask], rows: tuple[int, int], extras: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def backward_block(
        self,
        tile: Tensor,
        masks: list[Mask],
        rows: tuple[int, int],
        extras: Sequence[Tensor],
        outputs: Tensor,
        grads: Tensor,
        extra_grads: list[Tensor | None],
    ) -> Tensor | None:
        raise NotImplementedError


class CellStat:
    """One per-row aggregate of an element-wise function ``value(s)`` of the matrix ``s`` over a pair set (see
    :class:`AffineStat` for an example).

    Subclasses implement :meth:`value` (returning a new tensor, which the kernel may modify) and :meth:`backward`.
    """

    def __init__(self, pairs: PairSet, aggregate: Aggregate, count: Count = Count.NONE) -> None:
        self.pairs = pairs
        self.aggregate = aggregate
        self.count = count

    #: ``d value / d s`` when it is a constant (the kernel then folds it into each row's gradient).
    constant_slope: float | None = None

    def value(self, tile: Tensor, extras: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def shifted_value(self, tile: Tensor, shift: Tensor, extras: Sequence[Tensor]) -> Tensor:
        """``value(s) - shift`` with ``shift`` one number per row (a new tensor)."""
        return self.value(tile, extras).sub_(shift.unsqueeze(1))

    def backward(
        self, tile: Tensor, upstream: Tensor, extras: Sequence[Tensor], extra_grads: list[Tensor | None]
    ) -> Tensor:
        """``d loss / d s`` from ``upstream = d loss / d value`` per cell (0 outside the set); adds the gradients of
        the extra inputs the value depends on into ``extra_grads``."""
        if self.constant_slope is None:
            raise NotImplementedError
        return upstream.mul_(self.constant_slope)


class AffineStat(CellStat):
    """``value(s) = scale * s + shift``.

    Example:
        >>> AffineStat(PairSet.NEGATIVE, Aggregate.LOGSUMEXP, 2.0, 1.0).value(torch.tensor([[0.5]]), ())
        tensor([[2.]])
    """

    def __init__(
        self, pairs: PairSet, aggregate: Aggregate, scale: float, shift: float = 0.0, count: Count = Count.NONE
    ) -> None:
        super().__init__(pairs, aggregate, count)
        self.scale = scale
        self.shift = shift
        self.constant_slope = scale

    def value(self, tile: Tensor, extras: Sequence[Tensor]) -> Tensor:
        out = tile * self.scale
        return out.add_(self.shift) if self.shift else out

    def shifted_value(self, tile: Tensor, shift: Tensor, extras: Sequence[Tensor]) -> Tensor:
        # one pass: scale * s + (shift - row shift)
        return torch.add((self.shift - shift).unsqueeze(1), tile, alpha=self.scale)


class RowStatKernel(TileKernel):
    """Per-row aggregates (:class:`CellStat`) of element-wise functions of the matrix, one output column each.

    For a log-sum-exp ``L_i = log sum_j w_ij exp(v_ij)`` the gradient of a cell is ``w_ij exp(v_ij - L_i)`` times
    the gradient of ``L_i`` (and of ``v``); for a sum it is ``w_ij``. Rows without a cell give ``-inf`` (a
    log-sum-exp) or 0 (a sum) and pass no gradient.

    Example:
        >>> from dmlkit.distances import DotProductSimilarity
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> kernel = RowStatKernel([AffineStat(PairSet.CANDIDATE, Aggregate.LOGSUMEXP, 1.0)])
        >>> out, _ = tiled_rows(kernel, EveryPairBlocks(True, emb.device), DotProductSimilarity(), emb, emb, 2)
        >>> out[:, 0]  # log(exp(0) + exp(1)) twice, then log(2 exp(1))
        tensor([1.3133, 1.3133, 1.6931])
    """

    def __init__(self, stats: Sequence[CellStat]) -> None:
        self.stats = list(stats)
        self.pair_sets = tuple(dict.fromkeys(stat.pairs for stat in self.stats))
        self.aggregates = tuple(stat.aggregate for stat in self.stats)
        self._mask_index = [self.pair_sets.index(stat.pairs) for stat in self.stats]
        self.counts = any(stat.count is not Count.NONE for stat in self.stats)

    def forward_block(
        self, tile: Tensor, masks: list[Mask], rows: tuple[int, int], extras: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        values = tile.new_empty((tile.shape[0], len(self.stats)))
        counts = tile.new_zeros((tile.shape[0], len(self.stats))) if self.counts else None
        for column, (stat, index) in enumerate(zip(self.stats, self._mask_index, strict=True)):
            mask = masks[index]
            cell = stat.value(tile, extras)
            if stat.aggregate is Aggregate.LOGSUMEXP:
                values[:, column] = torch.logsumexp(masked_log(cell, mask), dim=1)
            else:
                values[:, column] = masked(cell, mask).sum(dim=1)
            if counts is not None and stat.count is Count.CELLS:
                counts[:, column] = _row_count(mask, tile.shape, tile)
            elif counts is not None and stat.count is Count.POSITIVE:
                counts[:, column] = masked((cell > 0).to(tile.dtype), mask).sum(dim=1)
        return values, counts

    def backward_block(
        self,
        tile: Tensor,
        masks: list[Mask],
        rows: tuple[int, int],
        extras: Sequence[Tensor],
        outputs: Tensor,
        grads: Tensor,
        extra_grads: list[Tensor | None],
    ) -> Tensor | None:
        total: Tensor | None = None
        for column, (stat, index) in enumerate(zip(self.stats, self._mask_index, strict=True)):
            grad = grads[:, column]
            if not bool(grad.any()):
                continue
            mask = masks[index]
            slope = stat.constant_slope
            if stat.aggregate is Aggregate.LOGSUMEXP:
                # empty rows (-inf) have no cell: any finite stand-in keeps exp(-inf - L) at 0
                lse = outputs[:, column]
                lse = lse.masked_fill(lse == float("-inf"), 0.0)
                upstream = masked_log(stat.shifted_value(tile, lse, extras), mask).exp_()
                upstream.mul_((grad if slope is None else grad * slope).unsqueeze(1))
            else:
                upstream = spread(grad if slope is None else grad * slope, mask, tile.shape)
            part = upstream if slope is not None else stat.backward(tile, upstream, extras, extra_grads)
            total = part if total is None else total.add_(part)
        return total


def _is_plain_dot(distance: BaseDistance) -> bool:
    """Whether the distance's matrix is ``query @ ref.T`` (its gradient is then two matrix products in place)."""
    cls = type(distance)
    return (
        isinstance(distance, DotProductSimilarity)
        and distance.power == 1
        and cls.compute_mat is DotProductSimilarity.compute_mat
        and cls.compute_powered_mat is BaseDistance.compute_powered_mat
    )


def _ranges(size: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, size)) for start in range(0, size, block)]


class _Plan:
    """The non-tensor arguments of a tiled pass."""

    def __init__(self, kernel: TileKernel, blocks: PairBlocks, distance: BaseDistance, block: int) -> None:
        self.kernel = kernel
        self.blocks = blocks
        self.distance = distance
        self.block = block
        self.dot = _is_plain_dot(distance)

    def tile(self, query: Tensor, ref: Tensor) -> Tensor:
        return query @ ref.T if self.dot else self.distance.compute_powered_mat(query, ref)


class _TiledRows(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, plan: _Plan, query: Tensor, ref: Tensor, *extras: Tensor
    ) -> tuple[Tensor, Tensor]:
        kernel = plan.kernel
        width = len(kernel.aggregates)
        outputs = query.new_zeros((query.shape[0], width))
        for column, aggregate in enumerate(kernel.aggregates):
            if aggregate is Aggregate.LOGSUMEXP:
                outputs[:, column] = float("-inf")
        counts = query.new_zeros((query.shape[0], width))
        col_ranges = _ranges(ref.shape[0], plan.block)
        for rows in _ranges(query.shape[0], plan.block):
            if kernel.skips(rows):
                continue
            query_block = query[rows[0] : rows[1]]
            row_out = outputs[rows[0] : rows[1]]
            for cols in col_ranges:
                masks = plan.blocks.block(rows, cols, kernel.pair_sets)
                if masks is None:
                    continue
                tile = plan.tile(query_block, ref[cols[0] : cols[1]])
                values, block_counts = kernel.forward_block(tile, masks, rows, extras)
                for column, aggregate in enumerate(kernel.aggregates):
                    if aggregate is Aggregate.LOGSUMEXP:
                        row_out[:, column] = torch.logaddexp(row_out[:, column], values[:, column])
                    else:
                        row_out[:, column] += values[:, column]
                if block_counts is not None:
                    counts[rows[0] : rows[1]] += block_counts
        ctx.plan = plan
        ctx.same = query is ref
        ctx.save_for_backward(query, ref, outputs, *extras)
        ctx.mark_non_differentiable(counts)
        return outputs, counts

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        query, ref, outputs, *extras = ctx.saved_tensors
        need_query, need_ref = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_query = torch.zeros_like(query) if need_query or (ctx.same and need_ref) else None
        grad_ref = grad_query if ctx.same else (torch.zeros_like(ref) if need_ref else None)
        extra_grads: list[Tensor | None] = [
            torch.zeros_like(extra) if ctx.needs_input_grad[3 + i] else None for i, extra in enumerate(extras)
        ]
        col_ranges = _ranges(ref.shape[0], plan.block)
        for rows in _ranges(query.shape[0], plan.block):
            row_grad = grad[rows[0] : rows[1]]
            if plan.kernel.skips(rows) or not bool(row_grad.any()):
                continue
            query_block = query[rows[0] : rows[1]]
            for cols in col_ranges:
                masks = plan.blocks.block(rows, cols, plan.kernel.pair_sets)
                if masks is None:
                    continue
                ref_block = ref[cols[0] : cols[1]]
                if plan.dot:
                    tile = query_block @ ref_block.T
                else:
                    with torch.enable_grad():
                        query_var = query_block.detach().requires_grad_()
                        ref_var = ref_block.detach().requires_grad_()
                        tile = plan.distance.compute_powered_mat(query_var, ref_var)
                tile_grad = plan.kernel.backward_block(
                    tile.detach(), masks, rows, extras, outputs[rows[0] : rows[1]], row_grad, extra_grads
                )
                if tile_grad is None:
                    continue
                if plan.dot:
                    if grad_query is not None:
                        grad_query[rows[0] : rows[1]].addmm_(tile_grad, ref_block)
                    if grad_ref is not None:
                        grad_ref[cols[0] : cols[1]].addmm_(tile_grad.T, query_block)
                else:
                    query_part, ref_part = torch.autograd.grad(tile, (query_var, ref_var), tile_grad)
                    if grad_query is not None:
                        grad_query[rows[0] : rows[1]] += query_part
                    if grad_ref is not None:
                        grad_ref[cols[0] : cols[1]] += ref_part
        if ctx.same:
            return (None, grad_query, None, *extra_grads)
        return (None, grad_query, grad_ref, *extra_grads)


def tiled_rows(
    kernel: TileKernel,
    blocks: PairBlocks,
    distance: BaseDistance,
    query: Tensor,
    ref: Tensor,
    block: int,
    *extras: Tensor,
) -> tuple[Tensor, Tensor]:
    """Run ``kernel`` over ``block x block`` tiles of ``distance``'s ``(query, ref)`` matrix.

    ``query`` and ``ref`` are already normalised (``distance.maybe_normalize``); pass the same tensor twice for a
    batch against itself. ``extras`` are further differentiable inputs of the kernel (e.g. a learnable scale).
    Returns ``(outputs, counts)``, both ``(len(query), len(kernel.aggregates))``; ``counts`` is not
    differentiable. Memory is ``outputs`` plus a few tiles; the backward pass recomputes every tile.
    """
    outputs, counts = _TiledRows.apply(_Plan(kernel, blocks, distance, block), query, ref, *extras)
    return outputs, counts


def _pair_values(distance: BaseDistance, query: Tensor, ref: Tensor, dot: bool) -> Tensor:
    if dot:
        return (query * ref).sum(dim=1)
    values = distance.pairwise_distance(query, ref)
    return values**distance.power if distance.power != 1 else values


class _PairDistances(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, distance: BaseDistance, chunk: int, query: Tensor, ref: Tensor, rows: Tensor, cols: Tensor
    ) -> Tensor:
        dot = _is_plain_dot(distance)
        out = query.new_empty(rows.shape)
        for start in range(0, rows.numel(), chunk):
            end = start + chunk
            pair_query, pair_ref = query.index_select(0, rows[start:end]), ref.index_select(0, cols[start:end])
            out[start:end] = _pair_values(distance, pair_query, pair_ref, dot)
        ctx.settings = (distance, chunk, dot, query is ref)
        ctx.save_for_backward(query, ref, rows, cols)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        distance, chunk, dot, same = ctx.settings
        query, ref, rows, cols = ctx.saved_tensors
        need_query, need_ref = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        grad_query = torch.zeros_like(query) if need_query or (same and need_ref) else None
        grad_ref = grad_query if same else (torch.zeros_like(ref) if need_ref else None)
        for start in range(0, rows.numel(), chunk):
            end = start + chunk
            row, col, weight = rows[start:end], cols[start:end], grad[start:end].unsqueeze(1)
            pair_query, pair_ref = query.index_select(0, row), ref.index_select(0, col)
            if dot:
                query_part, ref_part = pair_ref.mul_(weight), pair_query.mul_(weight)
            else:
                with torch.enable_grad():
                    pair_query.requires_grad_()
                    pair_ref.requires_grad_()
                    values = _pair_values(distance, pair_query, pair_ref, dot)
                query_part, ref_part = torch.autograd.grad(values, (pair_query, pair_ref), grad[start:end])
            if grad_query is not None:
                grad_query.index_add_(0, row, query_part)
            if grad_ref is not None:
                grad_ref.index_add_(0, col, ref_part)
        if same:
            return None, None, grad_query, None, None, None
        return None, None, grad_query, grad_ref, None, None


def pair_distances(
    distance: BaseDistance, query: Tensor, ref: Tensor, rows: Tensor, cols: Tensor, chunk: int = PAIR_CHUNK
) -> Tensor:
    """``distance``'s entry for each listed pair ``(query[rows[k]], ref[cols[k]])``, ``chunk`` pairs at a time.

    Equal to ``distance(query, ref)[rows, cols]`` for embeddings already normalised, without the matrix: memory
    is the output plus one chunk, in the backward pass too.

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> pair_distances(LpDistance(), emb, emb, torch.tensor([0, 1]), torch.tensor([1, 1]))
        tensor([5., 0.])
    """
    return _PairDistances.apply(distance, chunk, query, ref, rows, cols)


def few_pairs(num_pairs: int, num_query: int, num_ref: int) -> bool:
    """Whether ``num_pairs`` positive pairs are few enough to be listed (see ``LISTED_PER_ELEMENT``)."""
    return num_pairs <= LISTED_PER_ELEMENT * (num_query + num_ref)


class BlockPlan(NamedTuple):
    """How a pair loss's tiles are laid out: the blocks, the positive pairs evaluated from their list (when they
    are few, or mined: distinct, sorted by row) or None, and each query's number of positive pairs."""

    blocks: PairBlocks
    listed: tuple[Tensor, Tensor] | None
    num_pos: Tensor
    mined: tuple[Tensor, Tensor, Tensor, Tensor] | None


def plan_pair_blocks(
    labels: Tensor,
    ref_labels: Tensor | None,
    indices_tuple: Sequence[Tensor] | None,
    num_query: int,
    num_ref: int,
    block: int,
) -> BlockPlan:
    """Blocks from the labels (positives listed when few) or from a miner's pairs (positives listed, distinct).

    Example:
        >>> plan = plan_pair_blocks(torch.tensor([0, 1, 0, 0]), None, None, 4, 4, 2)
        >>> plan.listed, plan.num_pos.tolist()
        ((tensor([0, 0, 2, 2, 3, 3]), tensor([2, 3, 0, 3, 0, 2])), [2, 0, 2, 2])
    """
    if indices_tuple is None:
        num_pos = label_pair_counts(labels, ref_labels)
        listed = label_pairs(labels, ref_labels) if few_pairs(int(num_pos.sum()), num_query, num_ref) else None
        return BlockPlan(LabelBlocks(labels, ref_labels), listed, num_pos, None)
    a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)
    blocks = listed_blocks((num_query, num_ref), block, (a1, p), (a2, n))
    listed = distinct_pairs(a1, p, num_ref)  # a pair listed twice counts once
    return BlockPlan(blocks, listed, listed_pair_counts(a1, p, num_query, num_ref), (a1, p, a2, n))


def negative_and_positive_logsumexp(
    plan: BlockPlan,
    distance: BaseDistance,
    query: Tensor,
    ref: Tensor,
    block: int,
    negative: CellStat,
    positive: CellStat,
    listed_logit: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Each query's log-sum-exp of ``negative``'s values over its negative pairs and of ``positive``'s over its
    positive pairs, both over the tiles of ``plan``, or the positives' over ``plan.listed`` (``listed_logit`` maps
    their distances to the values ``positive`` gives). Rows without a pair of a kind give ``-inf``.
    """
    stats = [negative] if plan.listed is not None else [negative, positive]
    rows = tiled_rows(RowStatKernel(stats), plan.blocks, distance, query, ref, block)[0]
    if plan.listed is None:
        return rows[:, 0], rows[:, 1]
    logits = listed_logit(pair_distances(distance, query, ref, *plan.listed))
    positive_lse = segment_logsumexp(logits, plan.listed[0], query.shape[0])
    return rows[:, 0], positive_lse.masked_fill(plan.num_pos == 0, float("-inf"))


def distinct_pairs(rows: Tensor, cols: Tensor, num_ref: int) -> tuple[Tensor, Tensor]:
    """The distinct pairs, sorted by row then column.

    Example:
        >>> distinct_pairs(torch.tensor([2, 0, 2]), torch.tensor([1, 3, 1]), 4)
        (tensor([0, 2]), tensor([3, 1]))
    """
    keys = torch.unique(rows * num_ref + cols)
    return torch.div(keys, num_ref, rounding_mode="floor"), keys % num_ref


def label_pair_counts(labels: Tensor, ref_labels: Tensor | None = None) -> Tensor:
    """How many positive pairs each query has under labels (self-pairs excluded for a batch against itself).

    Example:
        >>> label_pair_counts(torch.tensor([0, 1, 0, 0]))
        tensor([2, 0, 2, 2])
    """
    ref = labels if ref_labels is None else ref_labels
    sorted_ref = torch.sort(ref).values
    counts = torch.searchsorted(sorted_ref, labels, right=True) - torch.searchsorted(sorted_ref, labels)
    return counts - 1 if ref_is_query(labels, ref_labels) else counts


def labels_have_negative(labels: Tensor, ref_labels: Tensor | None = None) -> bool:
    """Whether some query and some reference element differ in label (a negative pair exists)."""
    ref = labels if ref_labels is None else ref_labels
    if labels.numel() == 0 or ref.numel() == 0:
        return False
    low, high = torch.aminmax(labels)
    ref_low, ref_high = torch.aminmax(ref)
    return not (bool(low == high) and bool(ref_low == ref_high) and bool(low == ref_low))


def listed_pair_counts(rows: Tensor, cols: Tensor, num_query: int, num_ref: int) -> Tensor:
    """How many distinct listed pairs each query has."""
    keys = torch.unique(rows * num_ref + cols)
    return torch.bincount(torch.div(keys, num_ref, rounding_mode="floor"), minlength=num_query)


def label_pairs(labels: Tensor, ref_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The positive pairs ``(a, p)`` of labels in row-major order, without a ``(query, reference)`` mask.

    Equal to ``torch.nonzero(label_masks(labels, ref_labels)[0], as_tuple=True)``; memory is proportional to the
    number of pairs.

    Example:
        >>> label_pairs(torch.tensor([0, 1, 0, 0]))
        (tensor([0, 0, 2, 2, 3, 3]), tensor([2, 3, 0, 3, 0, 2]))
    """
    same_set = ref_is_query(labels, ref_labels)
    ref = labels if ref_labels is None else ref_labels
    sorted_ref, order = torch.sort(ref, stable=True)
    low = torch.searchsorted(sorted_ref, labels)
    per_row = torch.searchsorted(sorted_ref, labels, right=True) - low
    ends = torch.cumsum(per_row, 0)
    total = int(ends[-1]) if ends.numel() else 0
    # the row of each output position: how many rows end at or before it (cheaper than repeat_interleave on CPU)
    positions = torch.arange(total, device=labels.device)
    anchors = torch.searchsorted(ends, positions, right=True)
    partners = order[low[anchors] + positions - (ends - per_row)[anchors]]
    if same_set:
        keep = anchors != partners
        anchors, partners = anchors[keep], partners[keep]
    return anchors, partners


def listed_pairs(
    indices_tuple: Sequence[Tensor] | None, labels: Tensor | None, ref_labels: Tensor | None
) -> Sequence[Tensor] | None:
    """``indices_tuple``, with a :class:`~dmlkit.types.LabelPairs` description replaced by the pairs it describes
    (for the dense paths, which read lists)."""
    if isinstance(indices_tuple, LabelPairs):
        return list_label_pairs(labels, ref_labels, indices_tuple)  # type: ignore[arg-type]
    return indices_tuple


def positive_label_pairs(
    labels: Tensor, ref_labels: Tensor | None, described: LabelPairs | None
) -> tuple[Tensor, Tensor]:
    """:func:`label_pairs`, without the positive pairs a :class:`~dmlkit.types.LabelPairs` leaves out.

    Example:
        >>> positive_label_pairs(torch.tensor([0, 1]), torch.tensor([0, 0, 1]), LabelPairs(torch.tensor([0, 2])))
        (tensor([0]), tensor([1]))
    """
    anchors, partners = label_pairs(labels, ref_labels)
    if described is None:
        return anchors, partners
    keep = partners != described.excluded_ref[anchors]
    return anchors[keep], partners[keep]


def sorted_by_row(rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """The pairs ordered by row, in their given order within a row (a stable sort)."""
    rows, order = torch.sort(rows, stable=True)
    return rows, cols[order]


def listed_in_both(positive: tuple[Tensor, Tensor], negative: tuple[Tensor, Tensor], num_ref: int) -> int:
    """How many distinct pairs are listed both as positive and as negative."""
    pos_keys = torch.unique(positive[0] * num_ref + positive[1])
    neg_keys = torch.unique(negative[0] * num_ref + negative[1])
    return int(torch.isin(pos_keys, neg_keys).sum())


def normalized_inputs(distance: BaseDistance, embeddings: Tensor, ref_emb: Tensor) -> tuple[Tensor, Tensor]:
    """``(query, ref)`` normalised by ``distance`` (if it normalises); the same tensor twice when ``ref_emb`` is
    ``embeddings``, so a batch against itself is normalised once."""
    query = distance.maybe_normalize(embeddings)
    return query, query if ref_emb is embeddings else distance.maybe_normalize(ref_emb)
