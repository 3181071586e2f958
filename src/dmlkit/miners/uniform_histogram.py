"""Pair sampling that is uniform over a histogram of the pair distances."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, check_type
from ..indices import label_masks, select_in_place
from ..types import Pairs
from .base import BaseMiner

__all__ = ["UniformHistogramMiner"]

#: how many matrix cells one block of rows (or of draws) may cover.
_BLOCK_CELLS = 1 << 18
#: candidates sparser than one cell in this many are listed; denser ones are counted in place.
_SPARSE_RATIO = 8


def _bin_index(values: Tensor, edges: Tensor, inside: Tensor) -> Tensor:
    """The bin of each value (``edges[i] <= v < edges[i + 1]``, the last bin closed) as int32; ``num_bins``
    where ``inside`` is false or the value lies outside the edges."""
    num_bins = edges.numel() - 1
    low, high = edges[0], edges[-1]
    step = (high - low) / num_bins
    if bool(step > 0):
        guess = torch.div(values - low, step, rounding_mode="floor").clamp_(0, num_bins - 1).to(torch.int32)
    else:
        guess = torch.full_like(values, num_bins - 1, dtype=torch.int32)
    # the quotient can be off by one next to an edge: settle membership on the edges themselves
    guess -= (values < edges[guess]).to(torch.int32)
    guess += ((values >= edges[(guess + 1).clamp_(max=num_bins)]) & (guess < num_bins - 1)).to(torch.int32)
    return guess.masked_fill_(~(inside & (values >= low) & (values <= high)), num_bins)


def _row_blocks(num_rows: int, num_cols: int) -> list[slice]:
    """The row blocks of at most ``_BLOCK_CELLS`` cells (at least one row each)."""
    step = max(1, _BLOCK_CELLS // max(1, num_cols))
    return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def _candidate_range(mat: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """The smallest and largest value of ``mat`` over ``candidates``, one row block at a time (none listed)."""
    lows, highs = [], []
    for rows in _row_blocks(*mat.shape):
        part, keep = mat[rows], candidates[rows]
        lows.append(select_in_place(keep, part.clone(), float("inf")).amin())
        highs.append(select_in_place(keep, part.clone(), float("-inf")).amax())
    return torch.stack(lows).amin(), torch.stack(highs).amax()


def _draw_ranks(per_bin_total: Tensor, per_bin: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """For every non-empty bin, ``per_bin`` uniform ranks in ``[0, size)``: (bin of each draw, rank)."""
    filled = torch.nonzero(per_bin_total).flatten()
    draw_bin = filled.repeat_interleave(per_bin)
    size = per_bin_total[draw_bin]
    device = per_bin_total.device
    gen_device = generator.device if generator is not None else device
    uniform = torch.rand(draw_bin.numel(), dtype=torch.float64, device=gen_device, generator=generator).to(device)
    return draw_bin, torch.minimum((uniform * size).long(), size - 1)


def sample_by_histogram(
    mat: Tensor, candidates: Tensor, num_bins: int, per_bin: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``per_bin`` uniform draws (with replacement) from every non-empty bin of the candidates' values.

    The bins split ``[min, max]`` of the candidate values into ``num_bins`` equal intervals, closed on the
    left and open on the right except the last, which is closed. Returns the (row, column) of every draw,
    bin by bin in increasing order; the draw of rank ``r`` in a bin is the bin's ``r``-th candidate in
    row-major order. Sparse candidates are listed; dense ones are never listed: their range is found and
    their cells are counted per (row, bin) in blocks of rows, and each draw is located by its rank within its
    bin, again in blocks of rows.
    """
    device = mat.device
    total = int(torch.count_nonzero(candidates))
    if total == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    if total * _SPARSE_RATIO <= mat.numel():
        rows, cols = torch.nonzero(candidates, as_tuple=True)
        values = mat[rows, cols]
        low, high = torch.aminmax(values)
        edges = torch.linspace(low, high, num_bins + 1, dtype=mat.dtype, device=device)
        bins = _bin_index(values, edges, torch.ones_like(values, dtype=torch.bool))
        bin_counts = torch.bincount(bins, minlength=num_bins + 1)
        draw_bin, rank = _draw_ranks(bin_counts[:num_bins], per_bin, generator)
        order = torch.sort(bins, stable=True).indices
        picked = order[(torch.cumsum(bin_counts, 0) - bin_counts)[draw_bin] + rank]
        return rows[picked], cols[picked]
    low, high = _candidate_range(mat, candidates)
    edges = torch.linspace(low, high, num_bins + 1, dtype=mat.dtype, device=device)
    num_rows, num_cols = mat.shape
    width = num_bins + 1
    counts = torch.empty(num_rows, width, dtype=torch.long, device=device)
    for block in _row_blocks(num_rows, num_cols):
        size = block.stop - block.start
        bins = _bin_index(mat[block], edges, candidates[block])
        keys = bins.long() + width * torch.arange(size, device=device).unsqueeze(1)
        counts[block] = torch.bincount(keys.flatten(), minlength=size * width).view(-1, width)
    counts = counts[:, :num_bins]
    draw_bin, rank = _draw_ranks(counts.sum(dim=0), per_bin, generator)
    # rank within the bin -> (row, rank within the row) through counts laid out bin-major, row-minor
    bin_major = counts.t().reshape(-1)
    cumulative = torch.cumsum(bin_major, 0)
    position = (cumulative - bin_major)[draw_bin * num_rows] + rank
    cell = torch.searchsorted(cumulative, position, right=True)
    rows = cell % num_rows
    rank_in_row = (position - (cumulative[cell] - bin_major[cell]) + 1).to(torch.int32)
    # locate each draw in its row: the rank_in_row-th cell of its bin, counted along the row
    unique_rows, which = torch.unique(rows, return_inverse=True)
    row_bins = torch.empty(len(unique_rows), num_cols, dtype=torch.int32, device=device)
    for block in _row_blocks(len(unique_rows), num_cols):
        chosen = unique_rows[block]
        row_bins[block] = _bin_index(mat[chosen], edges, candidates[chosen])
    cols = torch.empty_like(rows)
    for part in _row_blocks(rows.numel(), num_cols):
        wanted = draw_bin[part].to(torch.int32).unsqueeze(1)  # int32 like row_bins: no promoted copy of the gather
        seen = torch.cumsum(row_bins[which[part]] == wanted, dim=1, dtype=torch.int32)
        cols[part] = torch.searchsorted(seen, rank_in_row[part].unsqueeze(1)).squeeze(1)
    return rows, cols


class UniformHistogramMiner(BaseMiner):
    """Samples pairs so that their distances are spread uniformly over the observed range.

    Positive pairs and negative pairs are treated separately: the range ``[min, max]`` of their values
    (distances or similarities) is cut into ``num_bins`` equal bins, and from every non-empty bin
    ``pos_per_bin`` (``neg_per_bin``) pairs are drawn uniformly with replacement. Frequent distances are
    thus under-sampled and rare ones over-sampled, in the spirit of distance-weighted sampling (Wu,
    Manmatha, Smola and Krähenbühl, 2017, "Sampling Matters in Deep Embedding Learning",
    arXiv:1706.07567), without assuming a density. Pairs come bin by bin, in increasing value.

    Args:
        num_bins: number of equal-width bins, ``>= 1``.
        pos_per_bin: positive pairs drawn per non-empty bin, ``>= 1``.
        neg_per_bin: negative pairs drawn per non-empty bin, ``>= 1``.
        generator: the random source for the draws (default: torch's global one).
        **kwargs: ``distance`` (default ``LpDistance()``).

    Example:
        >>> emb = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
        >>> miner = UniformHistogramMiner(num_bins=4, pos_per_bin=2, neg_per_bin=3)
        >>> a1, p, a2, n = miner(emb, torch.arange(4).repeat(3))
        >>> len(a1), len(a2)  # 2 per bin of positives, 3 per bin of negatives, at most 4 bins each
        (8, 12)
    """

    def __init__(
        self,
        num_bins: int = 100,
        pos_per_bin: int = 10,
        neg_per_bin: int = 10,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "num_bins", num_bins, low=1, integer=True)
        check_range(name, "pos_per_bin", pos_per_bin, low=1, integer=True)
        check_range(name, "neg_per_bin", neg_per_bin, low=1, integer=True)
        if generator is not None:
            check_type(name, "generator", generator, torch.Generator, "a torch.Generator or None")
        self.num_bins = num_bins
        self.pos_per_bin = pos_per_bin
        self.neg_per_bin = neg_per_bin
        self.generator = generator

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Pairs:
        mat = self.distance(embeddings, ref_emb)
        positive, negative = label_masks(labels, ref_labels)
        a1, p = sample_by_histogram(mat, positive, self.num_bins, self.pos_per_bin, self.generator)
        a2, n = sample_by_histogram(mat, negative, self.num_bins, self.neg_per_bin, self.generator)
        return Pairs(a1, p, a2, n)
