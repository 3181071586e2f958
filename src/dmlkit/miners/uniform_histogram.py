"""Pair sampling that is uniform over a histogram of the pair distances."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, check_type
from ..indices import label_masks
from ..types import Pairs
from .base import BaseMiner

__all__ = ["UniformHistogramMiner"]

#: how many matrix cells one block of rows (or of draws) may cover.
_BLOCK_CELLS = 1 << 22


def sample_by_histogram(
    mat: Tensor, candidates: Tensor, num_bins: int, per_bin: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``per_bin`` uniform draws (with replacement) from every non-empty bin of the candidates' values.

    The bins split ``[min, max]`` of the candidate values into ``num_bins`` equal intervals, closed on the
    left and open on the right except the last, which is closed. Returns the (row, column) of every draw,
    bin by bin in increasing order. The candidates are never listed: cells are counted per (row, bin) in
    blocks of rows, and each draw is located by its rank within its bin.
    """
    device = mat.device
    empty = torch.empty(0, dtype=torch.long, device=device)
    chosen = mat[candidates]
    if chosen.numel() == 0:
        return empty, empty.clone()
    low, high = torch.aminmax(chosen)
    del chosen
    edges = torch.linspace(low, high, num_bins + 1, dtype=mat.dtype, device=device)
    num_rows, num_cols = mat.shape

    def bins_of(rows: Tensor | slice) -> Tensor:
        """The bin of every cell of these rows; ``num_bins`` for cells that are no candidate."""
        values = mat[rows]
        bins = torch.searchsorted(edges, values.contiguous(), right=True) - 1
        bins = bins.masked_fill(values == edges[-1], num_bins - 1)  # the last bin is closed
        inside = candidates[rows] & (bins >= 0) & (bins < num_bins)
        return bins.masked_fill(~inside, num_bins)

    width = num_bins + 1
    counts = torch.empty(num_rows, width, dtype=torch.long, device=device)
    block = max(1, _BLOCK_CELLS // max(1, num_cols))
    for start in range(0, num_rows, block):
        stop = min(start + block, num_rows)
        keys = bins_of(slice(start, stop)) + width * torch.arange(stop - start, device=device).unsqueeze(1)
        counts[start:stop] = torch.bincount(keys.flatten(), minlength=(stop - start) * width).view(-1, width)
    counts = counts[:, :num_bins]
    per_bin_total = counts.sum(dim=0)
    filled = torch.nonzero(per_bin_total).flatten()
    draw_bin = filled.repeat_interleave(per_bin)
    size = per_bin_total[draw_bin]
    gen_device = generator.device if generator is not None else device
    uniform = torch.rand(draw_bin.numel(), dtype=torch.float64, device=gen_device, generator=generator).to(device)
    rank = torch.minimum((uniform * size).long(), size - 1)
    # rank within the bin -> (row, rank within the row) through counts laid out bin-major, row-minor
    bin_major = counts.t().reshape(-1)
    cumulative = torch.cumsum(bin_major, 0)
    position = (cumulative - bin_major)[draw_bin * num_rows] + rank
    cell = torch.searchsorted(cumulative, position, right=True)
    rows = cell % num_rows
    rank_in_row = position - (cumulative[cell] - bin_major[cell])
    cols = torch.empty_like(rows)
    block = max(1, _BLOCK_CELLS // max(1, num_cols))
    for start in range(0, rows.numel(), block):
        part = slice(start, start + block)
        hits = bins_of(rows[part]) == draw_bin[part].unsqueeze(1)
        seen = torch.cumsum(hits, dim=1)
        cols[part] = torch.searchsorted(seen, (rank_in_row[part] + 1).unsqueeze(1)).squeeze(1)
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
