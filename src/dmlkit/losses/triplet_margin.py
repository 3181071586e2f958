from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range, is_real_number, message
from ..indices import label_masks, pair_masks
from ..reducers import AvgNonZeroReducer
from ..types import LabelPairs, TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import (
    FusedReduction,
    chunk_count,
    divide_by_count,
    fused_reduction,
    pair_values,
    reduce_in_chunks,
)
from .tiled import (
    Aggregate,
    LabelBlocks,
    Mask,
    PairBlocks,
    PairSet,
    TileKernel,
    check_chunk_size,
    listed_blocks,
    listed_pairs,
    masked,
    normalized_inputs,
    pair_distances,
    positive_label_pairs,
    sorted_by_row,
    tile_size,
    tiled_rows,
)

__all__ = ["TripletMarginLoss"]

#: terms computed at once by the chunked (fused-reduction) paths: 4M floats, 16 MiB per temporary.
_CHUNK_CELLS = 1 << 22
#: listed triplets handled at once: their flat indices and values take a few MiB.
_LISTED_CHUNK = 1 << 20


class TripletMarginLoss(BaseMetricLossFunction):
    """Triplet margin loss (Schroff et al., 2015, FaceNet, arXiv:1503.03832).

    Each triplet (a, p, n) contributes ``relu(margin - gap)`` with ``gap = d(a, n) - d(a, p)`` for
    distances (``s(a, p) - s(a, n)`` for similarities); ``softplus`` instead of ``relu`` when
    ``smooth_loss``. The default reducer averages over the triplets with a positive loss.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`), which holds no ``(batch, reference)`` matrix:

    * all triplets (from labels, or from a miner's pairs) with a mean, non-zero mean or sum reducer and no
      ``swap``: each positive pair is compared with its anchor's row one ``chunk_size x chunk_size`` block at a
      time, the blocks recomputed in the backward pass (memory ``O(B * D + P * chunk_size)`` for ``P`` positive
      pairs);
    * listed triplets (a miner's, or ``triplets_per_anchor`` random ones): each triplet's two (three with
      ``swap``) distances are evaluated from the embeddings, with any reducer;
    * all triplets with ``swap`` or another reducer need every triplet's value: dense path.

    Loss and gradients equal the dense path's.

    Args:
        margin: the required gap between positive and negative, ``>= 0``.
        swap: use the positive-negative distance as the negative's distance when it is closer
            (Balntas et al., 2016, "Learning local feature descriptors with triplets").
        smooth_loss: ``log(1 + exp(margin - gap))`` instead of the hinge.
        triplets_per_anchor: ``"all"`` triplets, or this many random triplets per anchor.
        generator: random source for ``triplets_per_anchor`` sampling.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled where it applies).
        **kwargs: ``distance``, ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[0.0, 1.0], [0.0, 0.9], [1.0, 0.0], [0.9, 0.0]])
        >>> TripletMarginLoss(margin=0.1)(emb, torch.tensor([0, 0, 1, 1])).item()
        0.0
    """

    default_reducer = AvgNonZeroReducer
    accepts_label_pairs = True

    def __init__(
        self,
        margin: float = 0.05,
        swap: bool = False,
        smooth_loss: bool = False,
        triplets_per_anchor: int | str = "all",
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "margin", margin, low=0)
        check_chunk_size(name, chunk_size)
        valid_count = is_real_number(triplets_per_anchor, integer=True)
        if triplets_per_anchor != "all" and not (valid_count and triplets_per_anchor >= 1):  # type: ignore[operator]
            raise ValueError(message(name, "triplets_per_anchor", '"all" or a positive integer', triplets_per_anchor))
        self.margin = margin
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.triplets_per_anchor = triplets_per_anchor
        self.generator = generator
        self.chunk_size = chunk_size

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        block = tile_size(self.chunk_size, embeddings.shape[0], ref_emb.shape[0], indices_tuple)
        if block is not None:
            tiled = self._tiled_terms(embeddings, labels, indices_tuple, ref_emb, ref_labels, block)
            if tiled is not None:
                return {"loss": tiled}
        indices_tuple = listed_pairs(indices_tuple, labels, ref_labels)  # type: ignore[assignment]
        mat = self.distance(embeddings, ref_emb)
        ref_is_batch = ref_emb is embeddings
        fused = fused_reduction(self.reducer)
        if indices_tuple is None and self.triplets_per_anchor == "all":
            if fused is not None:
                masks = label_masks(labels, ref_labels)  # type: ignore[arg-type]
                return {"loss": self._masked_triplets_reduced(mat, masks, ref_is_batch, ref_emb, fused)}
            return {"loss": self._all_triplet_terms(mat, labels, ref_is_batch, ref_emb, ref_labels)}
        if indices_tuple is not None and len(indices_tuple) == 4 and fused is not None:
            # Triplets from mined pairs are (positive pair) x (negative pair) per anchor. When that product is
            # about as large as scanning each positive pair's row, masks describe it exactly (with distinct
            # pairs) without listing it; few triplets are cheaper listed.
            a1, _, a2, _ = indices_tuple
            per_anchor = torch.bincount(a1, minlength=mat.shape[0]) * torch.bincount(a2, minlength=mat.shape[0])
            if int(per_anchor.sum()) * 4 >= a1.numel() * mat.shape[1]:
                masks = pair_masks(indices_tuple, labels, ref_labels, tuple(mat.shape))  # type: ignore[arg-type]
                if int(masks[0].sum()) == a1.numel() and int(masks[1].sum()) == a2.numel():
                    return {"loss": self._masked_triplets_reduced(mat, masks, ref_is_batch, ref_emb, fused)}
        a, p, n = self.triplets(labels, indices_tuple, ref_labels, self.triplets_per_anchor, self.generator)
        if a.numel() == 0:
            return {"loss": Terms(embeddings.new_zeros(0), a, TermKind.TRIPLET)}
        if fused is not None and not self.swap:
            return {"loss": self._given_triplets_reduced(mat, a, p, n, fused)}
        an = pair_values(mat, a, n)
        if self.swap:
            an = self.distance.smallest_dist(an, self._positive_negative(mat, ref_is_batch, ref_emb, p, n))
        return {"loss": Terms(self._loss(self.distance.gap(pair_values(mat, a, p), an)), a, TermKind.TRIPLET)}

    def _tiled_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
    ) -> Terms | None:
        """The dense path's terms without the matrix, or ``None`` where the dense path is needed."""
        fused = fused_reduction(self.reducer)
        described = indices_tuple if isinstance(indices_tuple, LabelPairs) else None
        every = (indices_tuple is None or described is not None) and self.triplets_per_anchor == "all"
        if described is not None and not every:
            return None  # a sample of triplets per anchor: from the listed pairs
        from_pairs = indices_tuple is not None and len(indices_tuple) == 4
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        if (every or from_pairs) and (fused is None or self.swap):
            if every:
                return None
            # the triplets of mined pairs, listed
        elif every or from_pairs:
            assert fused is not None
            blocks: PairBlocks
            if every:
                a, p = positive_label_pairs(labels, ref_labels, described)  # type: ignore[arg-type]
                blocks = LabelBlocks(labels, ref_labels)  # type: ignore[arg-type]
            else:
                assert indices_tuple is not None  # from_pairs
                a1, p1, a2, n = indices_tuple
                a, p = sorted_by_row(a1, p1)
                # a negative pair listed k times makes k triplets with each positive pair of its anchor
                shape = (query.shape[0], ref.shape[0])
                blocks = listed_blocks(shape, block, None, (a2, n), multiplicity=True, dtype=query.dtype)
            if a.numel() == 0:
                return Terms(query.new_zeros(0), a, TermKind.TRIPLET)
            sign = -1.0 if self.distance.is_inverted else 1.0
            kernel = _TripletRows(a, self.margin, sign, self.smooth_loss, fused, block, query.shape[0])
            ap = pair_distances(self.distance, query, ref, a, p)
            sums, counts = tiled_rows(kernel, blocks, self.distance, query, ref, block, ap)
            return Terms.reduced(divide_by_count(sums.sum(), int(counts.sum()), fused))
        a, p, n = self.triplets(labels, indices_tuple, ref_labels, self.triplets_per_anchor, self.generator)
        if a.numel() == 0:
            return Terms(query.new_zeros(0), a, TermKind.TRIPLET)
        an = pair_distances(self.distance, query, ref, a, n)
        if self.swap:
            an = self.distance.smallest_dist(an, pair_distances(self.distance, ref, ref, p, n))
        gap = self.distance.gap(pair_distances(self.distance, query, ref, a, p), an)
        return Terms(self._loss(gap), a, TermKind.TRIPLET)

    def _given_triplets_reduced(self, mat: Tensor, a: Tensor, p: Tensor, n: Tensor, fused: FusedReduction) -> Terms:
        """Listed triplets reduced chunk by chunk: no per-triplet tensor outlives its chunk."""
        sign = -1.0 if self.distance.is_inverted else 1.0
        value = _ListedTripletMargin.apply(mat, a, p, n, self.margin, sign, self.smooth_loss, fused)
        return Terms.reduced(value)

    def _masked_triplets_reduced(
        self,
        mat: Tensor,
        masks: tuple[Tensor, Tensor],
        ref_is_batch: bool,
        ref_emb: Tensor,
        fused: FusedReduction,
    ) -> Terms:
        """Every triplet (a, p, n) with ``positive[a, p]`` and ``negative[a, n]``, reduced chunk by chunk of
        anchors, each positive pair against its anchor's whole row.

        ``mat`` is split into row blocks once, so each chunk's gradient covers only its block; the positive
        pairs' values are gathered once for all chunks.
        """
        positive, negative = masks
        a, p = torch.nonzero(positive, as_tuple=True)  # sorted by anchor
        rows_per_block = max(1, _CHUNK_CELLS // max(1, 4 * mat.shape[1]))
        if not self.swap:
            sign = -1.0 if self.distance.is_inverted else 1.0
            settings = (self.margin, sign, self.smooth_loss, fused, rows_per_block)
            return Terms.reduced(_MaskedTripletMargin.apply(mat, a, p, negative, settings))
        ap = pair_values(mat, a, p)
        blocks = mat.split(rows_per_block)
        pair_starts = torch.searchsorted(a, torch.arange(0, mat.shape[0] + rows_per_block, rows_per_block))
        bounds = pair_starts.tolist()
        pn_source = mat if ref_is_batch else None

        def chunk(index: int) -> tuple[Tensor, Tensor]:
            lo, hi = bounds[index], bounds[index + 1]
            anchors = a[lo:hi]
            an = blocks[index].index_select(0, anchors - index * rows_per_block)
            if self.swap:
                positives = p[lo:hi]
                pn = pn_source.index_select(0, positives) if pn_source is not None else None
                if pn is None:
                    pn = self.distance(ref_emb[positives], ref_emb)
                an = self.distance.smallest_dist(an, pn)
            gap = self.distance.gap(ap[lo:hi].unsqueeze(1), an)
            return self._loss(gap), negative.index_select(0, anchors)

        return Terms.reduced(reduce_in_chunks(chunk, len(blocks), fused, mat))

    def _all_triplet_terms(
        self, mat: Tensor, labels: Tensor | None, ref_is_batch: bool, ref_emb: Tensor, ref_labels: Tensor | None
    ) -> Terms:
        """Every triplet, scored as (positive pair) x (reference) rows instead of gathered index triples."""
        positive, negative = label_masks(labels, ref_labels)  # type: ignore[arg-type]
        a, p = torch.nonzero(positive, as_tuple=True)
        keep = negative[a]
        an = mat[a]
        if self.swap:
            pn = mat[p] if ref_is_batch else self.distance(ref_emb)[p]
            an = self.distance.smallest_dist(an, pn)
        gap = self.distance.gap(mat[a, p].unsqueeze(1), an)
        values = self._loss(gap[keep])
        anchors = a.unsqueeze(1).expand_as(keep)[keep]
        return Terms(values, anchors, TermKind.TRIPLET)

    def _loss(self, gap: Tensor) -> Tensor:
        violation = self.margin - gap
        return F.softplus(violation) if self.smooth_loss else F.relu(violation)

    def _positive_negative(self, mat: Tensor, ref_is_batch: bool, ref_emb: Tensor, p: Tensor, n: Tensor) -> Tensor:
        if ref_is_batch:
            return pair_values(mat, p, n)
        # p and n index the reference set: compare those rows directly (a full ref x ref matrix is not needed).
        d = self.distance
        pn = d.pairwise_distance(d.maybe_normalize(ref_emb[p]), d.maybe_normalize(ref_emb[n]))
        return pn**d.power if d.power != 1 else pn


class _ListedTripletMargin(torch.autograd.Function):
    """The fused-reduced triplet margin loss of listed triplets, in chunks, with a hand-written backward.

    Forward keeps only the running sum and count; backward recomputes each chunk's violations and scatters
    ``d loss / d mat`` into one flat buffer, so memory is the index lists plus one chunk, not several tensors
    per triplet.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        mat: Tensor,
        a: Tensor,
        p: Tensor,
        n: Tensor,
        margin: float,
        sign: float,
        smooth: bool,
        reduction: FusedReduction,
    ) -> Tensor:
        total = mat.new_zeros(())
        count = 0
        for ap, an, _, _ in _listed_chunks(mat, a, p, n):
            values = _margin_values(ap, an, margin, sign, smooth)
            total += values.sum()
            count += chunk_count(values, None, reduction)
        ctx.save_for_backward(mat, a, p, n)
        ctx.settings = (margin, sign, smooth, reduction, count)
        return divide_by_count(total, count, reduction)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mat, a, p, n = ctx.saved_tensors
        margin, sign, smooth, reduction, count = ctx.settings
        scale = grad if reduction is FusedReduction.SUM or count == 0 else grad / count
        out = mat.new_zeros(mat.numel())
        for ap, an, ap_index, an_index in _listed_chunks(mat.detach(), a, p, n):
            slope = _margin_slope(margin - sign * (an - ap), smooth, reduction)
            slope *= scale * sign
            out.index_add_(0, ap_index, slope)
            out.index_add_(0, an_index, slope.neg_())
        return out.view_as(mat), None, None, None, None, None, None, None


def _listed_chunks(mat: Tensor, a: Tensor, p: Tensor, n: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``(d(a, p), d(a, n), flat index of (a, p), flat index of (a, n))`` for consecutive chunks of triplets."""
    flat = mat.reshape(-1)
    width = mat.shape[1]
    for start in range(0, a.numel(), _LISTED_CHUNK):
        end = start + _LISTED_CHUNK
        ap_index = a[start:end] * width
        an_index = ap_index + n[start:end]
        ap_index += p[start:end]
        yield flat.index_select(0, ap_index), flat.index_select(0, an_index), ap_index, an_index


def _margin_slope(violation: Tensor, smooth: bool, reduction: FusedReduction) -> Tensor:
    """``d loss / d violation``: the hinge's 0/1 step, or softplus's sigmoid (0 where a value underflows to 0
    and the non-zero mean leaves it out)."""
    if not smooth:
        return (violation > 0).to(violation.dtype)
    slope = torch.sigmoid(violation)
    if reduction is FusedReduction.NONZERO:
        slope *= F.softplus(violation) > 0
    return slope


def _margin_values(ap: Tensor, an: Tensor, margin: float, sign: float, smooth: bool) -> Tensor:
    violation = margin - sign * (an - ap)
    return F.softplus(violation) if smooth else F.relu(violation)


class _MaskedTripletMargin(torch.autograd.Function):
    """The fused-reduced triplet margin loss of every (a, p, n) with (a, p) listed and ``negative[a, n]``.

    Anchor rows are taken in blocks; each listed positive pair is compared with its anchor's whole row at once.
    Forward keeps the running sum and count only; backward recomputes each block's violations and writes
    ``d loss / d mat``: the negatives' part row-wise into the anchors' rows, the positives' part per pair.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mat: Tensor, a: Tensor, p: Tensor, negative: Tensor, settings: tuple[Any, ...]
    ) -> Tensor:
        margin, sign, smooth, reduction, rows = settings
        total = mat.new_zeros(())
        count = 0
        for block in _anchor_blocks(mat, a, p, rows):
            values, keep = _block_values(mat, negative, block, margin, sign, smooth)
            values.mul_(keep)
            total += values.sum()
            count += chunk_count(values, keep, reduction)
        ctx.save_for_backward(mat, a, p, negative)
        ctx.settings = (settings, count)
        return divide_by_count(total, count, reduction)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mat, a, p, negative = ctx.saved_tensors
        (margin, sign, smooth, reduction, rows), count = ctx.settings
        scale = grad if reduction is FusedReduction.SUM or count == 0 else grad / count
        out = torch.zeros_like(mat)
        flat = out.view(-1)
        width = mat.shape[1]
        detached = mat.detach()
        for block in _anchor_blocks(detached, a, p, rows):
            violation, keep = _block_violations(detached, negative, block, margin, sign)
            slope = _margin_slope(violation, smooth, reduction)
            slope *= keep
            slope *= scale * sign
            start, anchors, positives = block
            # d/d d(a, n) = -slope (summed over the anchor's positives); d/d d(a, p) = +slope summed over n
            out[start : start + rows].index_add_(0, anchors - start, slope, alpha=-1)
            flat.index_add_(0, anchors * width + positives, slope.sum(1))
        return out, None, None, None, None


def _anchor_blocks(mat: Tensor, a: Tensor, p: Tensor, rows: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(first row, anchors, positives)`` of the listed pairs (sorted by anchor) per block of ``rows`` anchors."""
    bounds = torch.searchsorted(a, torch.arange(0, mat.shape[0] + rows, rows, device=a.device)).tolist()
    for index, start in enumerate(range(0, mat.shape[0], rows)):
        lo, hi = bounds[index], bounds[index + 1]
        if hi > lo:
            yield start, a[lo:hi], p[lo:hi]


def _block_violations(
    mat: Tensor, negative: Tensor, block: tuple[int, Tensor, Tensor], margin: float, sign: float
) -> tuple[Tensor, Tensor]:
    """``margin - gap`` of each listed pair against its anchor's whole row, and which columns are negatives."""
    start, anchors, positives = block
    rows = mat[start:].index_select(0, anchors - start)
    ap = mat[anchors, positives].unsqueeze(1)
    # margin - gap, gap = sign * (d(a, n) - d(a, p)), computed in place on the gathered rows
    violation = rows.sub_(ap).mul_(-sign).add_(margin)
    return violation, negative.index_select(0, anchors)


def _block_values(
    mat: Tensor, negative: Tensor, block: tuple[int, Tensor, Tensor], margin: float, sign: float, smooth: bool
) -> tuple[Tensor, Tensor]:
    violation, keep = _block_violations(mat, negative, block, margin, sign)
    return (F.softplus(violation) if smooth else violation.clamp_min_(0)), keep


class _TripletRows(TileKernel):
    """Per anchor row, the sum (and count, for the reduction) of the margin losses of its triplets: each listed
    positive pair ``(a, p)`` against every negative of ``a`` in a tile. The positive pairs' distances ``d(a, p)``
    are the extra input; the pairs are sorted by anchor."""

    pair_sets = (PairSet.NEGATIVE,)
    aggregates = (Aggregate.SUM,)

    def __init__(
        self,
        anchors: Tensor,
        margin: float,
        sign: float,
        smooth: bool,
        reduction: FusedReduction,
        block: int,
        num_rows: int,
    ) -> None:
        self.anchors = anchors
        self.margin, self.sign, self.smooth, self.reduction, self.block = margin, sign, smooth, reduction, block
        edges = torch.arange(0, num_rows + block, block, device=anchors.device)
        self.bounds = torch.searchsorted(anchors, edges).tolist()

    def _pairs(self, rows: tuple[int, int]) -> tuple[int, int]:
        index = rows[0] // self.block
        return self.bounds[index], self.bounds[index + 1]

    def skips(self, rows: tuple[int, int]) -> bool:
        lo, hi = self._pairs(rows)
        return hi == lo

    def _violations(
        self, tile: Tensor, mask: Mask, rows: tuple[int, int], ap: Tensor
    ) -> tuple[Tensor, Tensor, Mask, int]:
        lo, hi = self._pairs(rows)
        local = self.anchors[lo:hi] - rows[0]
        # margin - gap, gap = sign * (d(a, n) - d(a, p)), on each pair's copy of its anchor's row
        violation = tile.index_select(0, local).sub_(ap[lo:hi].unsqueeze(1)).mul_(-self.sign).add_(self.margin)
        assert isinstance(mask, Tensor)
        return violation, local, mask.index_select(0, local), lo

    def forward_block(
        self, tile: Tensor, masks: list[Mask], rows: tuple[int, int], extras: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        violation, local, mask, _ = self._violations(tile, masks[0], rows, extras[0])
        values = F.softplus(violation) if self.smooth else violation.clamp_(min=0)
        values = masked(values, mask)
        sums = tile.new_zeros((tile.shape[0], 1))
        sums[:, 0].index_add_(0, local, values.sum(dim=1))
        counts = tile.new_zeros((tile.shape[0], 1))
        if self.reduction is FusedReduction.MEAN:
            counts[:, 0].index_add_(0, local, masked(torch.ones_like(values), mask).sum(dim=1))
        elif self.reduction is FusedReduction.NONZERO:
            counts[:, 0].index_add_(0, local, masked((values > 0).to(values.dtype), mask).sum(dim=1))
        return sums, counts

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
        violation, local, mask, lo = self._violations(tile, masks[0], rows, extras[0])
        slope = masked(_margin_slope(violation, self.smooth, self.reduction), mask)
        slope.mul_(grads[:, 0].index_select(0, local).unsqueeze(1))
        # d/d d(a, n) = -sign * slope, summed over the anchor's positives; d/d d(a, p) = sign * slope, over n
        tile_grad = torch.zeros_like(tile).index_add_(0, local, slope, alpha=-self.sign)
        if extra_grads[0] is not None:
            extra_grads[0][lo : lo + local.numel()] += slope.sum(dim=1).mul_(self.sign)
        return tile_grad
