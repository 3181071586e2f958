from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import BaseDistance
from ..indices import convert_to_pairs, label_masks
from ..reducers import AvgNonZeroReducer
from ..types import LabelPairs, TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import FusedReduction, divide_by_count, fused_reduction, masked_hinge, pair_values
from .tiled import (
    Aggregate,
    CellStat,
    Count,
    LabelBlocks,
    PairBlocks,
    PairSet,
    RowStatKernel,
    check_chunk_size,
    listed_blocks,
    listed_pairs,
    normalized_inputs,
    pair_distances,
    positive_label_pairs,
    tile_size,
    tiled_rows,
)

__all__ = ["ContrastiveLoss", "contrastive_terms", "pair_entries"]

#: matrices from this many cells on hold many mined negative pairs as a mask rather than as a list of values
MASK_FROM_CELLS = 1 << 20


class ContrastiveLoss(BaseMetricLossFunction):
    """Contrastive loss (Hadsell, Chopra and LeCun, 2006, "Dimensionality Reduction by Learning an Invariant
    Mapping", CVPR).

    Positive pairs are pulled together until they are within ``pos_margin``, negative pairs pushed apart
    until they are beyond ``neg_margin``. For a distance ``d`` (lower is closer)::

        pos_loss(a, p) = relu(d(a, p) - pos_margin)
        neg_loss(a, n) = relu(neg_margin - d(a, n))

    and with the inequalities reversed for a similarity (``relu(pos_margin - s)``, ``relu(s - neg_margin)``).
    The paper's form is half the square of these hinges with ``pos_margin = 0``; like pytorch-metric-learning
    the hinges are not squared (pass ``LpDistance(power=2)`` to work with squared distances).

    The two sub-losses ``"pos_loss"`` (one value per positive pair) and ``"neg_loss"`` (one per negative pair)
    are reduced separately and summed, so a ``MultipleReducers`` keyed by those names can treat them apart.
    The default reducer averages the non-zero values of each.

    Large batches take a tiled path (:mod:`dmlkit.losses.tiled`) when the reducer is a mean, a non-zero mean or a
    sum (``MeanReducer``, ``AvgNonZeroReducer``, ``SumReducer``): the negative pairs' hinges are summed (and
    counted) over ``chunk_size x chunk_size`` blocks of the matrix, recomputed in the backward pass, and the
    positive pairs are evaluated from their embeddings, so no ``(batch, reference)`` matrix is held. Loss and
    gradients equal the dense path's, for labels, mined pairs or triplets. Other reducers need every negative
    term and take the dense path.

    Args:
        pos_margin: positive pairs closer than this (farther, for a similarity) cost nothing.
        neg_margin: negative pairs farther than this (closer, for a similarity) cost nothing.
        chunk_size: ``None`` (automatic: dense up to a 3072 x 3072 matrix, tiled with 1024 x 1024 blocks
            above), ``0`` (always dense) or the block side of the tiled path (always tiled when the reducer
            allows it).
        **kwargs: ``distance``, ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> ContrastiveLoss(pos_margin=0.2)(emb, labels).item()
        0.0
        >>> round(ContrastiveLoss(neg_margin=2.5)(emb, labels).item(), 4)
        0.6009
    """

    default_reducer = AvgNonZeroReducer
    accepts_label_pairs = True

    def __init__(
        self, pos_margin: float = 0, neg_margin: float = 1, chunk_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "pos_margin", pos_margin)
        check_range(name, "neg_margin", neg_margin)
        check_chunk_size(name, chunk_size)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.chunk_size = chunk_size

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        reduction = fused_reduction(self.reducer)
        block = tile_size(self.chunk_size, embeddings.shape[0], ref_emb.shape[0], indices_tuple)
        if block is not None and reduction is not None:
            return self._tiled_terms(embeddings, labels, indices_tuple, ref_emb, ref_labels, block, reduction)
        indices_tuple = listed_pairs(indices_tuple, labels, ref_labels)  # type: ignore[assignment]
        mat = self.distance(embeddings, ref_emb)
        return contrastive_terms(
            self.distance,
            mat,
            labels,
            indices_tuple,
            ref_labels,
            self.pos_margin,
            self.neg_margin,
            fused_reduction(self.reducer),
        )

    def _tiled_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
        block: int,
        reduction: FusedReduction,
    ) -> dict[str, Terms]:
        """The dense path's groups without the matrix: the positive pairs listed, the negatives reduced by blocks."""
        query, ref = normalized_inputs(self.distance, embeddings, ref_emb)
        blocks: PairBlocks
        if indices_tuple is None or isinstance(indices_tuple, LabelPairs):
            a1, p = positive_label_pairs(labels, ref_labels, indices_tuple)  # type: ignore[arg-type]
            blocks = LabelBlocks(labels, ref_labels)  # type: ignore[arg-type]
        else:
            a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
            # a negative pair listed k times is k terms
            shape = (query.shape[0], ref.shape[0])
            blocks = listed_blocks(shape, block, None, (a2, n), multiplicity=True, dtype=query.dtype)
        closer = self.distance.higher_is_closer
        pos = pair_distances(self.distance, query, ref, a1, p)
        pos_excess = self.pos_margin - pos if closer else pos - self.pos_margin
        counted = {
            FusedReduction.MEAN: Count.CELLS,
            FusedReduction.NONZERO: Count.POSITIVE,
            FusedReduction.SUM: Count.NONE,
        }[reduction]
        kernel = RowStatKernel([_Hinge(PairSet.NEGATIVE, self.neg_margin, closer, counted)])
        sums, counts = tiled_rows(kernel, blocks, self.distance, query, ref, block)
        neg_loss = divide_by_count(sums.sum(), int(counts.sum()), reduction)
        return {
            "pos_loss": Terms(pos_excess.clamp(min=0), a1, TermKind.POS_PAIR),
            "neg_loss": Terms.reduced(neg_loss),
        }


class _Hinge(CellStat):
    """``relu(threshold - s)``, or ``relu(s - threshold)`` when ``above``, summed."""

    def __init__(self, pairs: PairSet, threshold: float, above: bool, count: Count) -> None:
        super().__init__(pairs, Aggregate.SUM, count)
        self.threshold = threshold
        self.above = above

    def value(self, tile: Tensor, extras: Sequence[Tensor]) -> Tensor:
        excess = tile - self.threshold if self.above else self.threshold - tile
        return excess.clamp_(min=0)

    def backward(
        self, tile: Tensor, upstream: Tensor, extras: Sequence[Tensor], extra_grads: list[Tensor | None]
    ) -> Tensor:
        active = tile > self.threshold if self.above else tile < self.threshold
        return upstream.mul_(active) if self.above else upstream.mul_(active).neg_()


def contrastive_terms(
    distance: BaseDistance,
    mat: Tensor,
    labels: Tensor | None,
    indices_tuple: tuple[Tensor, ...] | None,
    ref_labels: Tensor | None,
    pos_margin: float,
    neg_margin: float,
    reduction: FusedReduction | None = None,
) -> dict[str, Terms]:
    """The ``"pos_loss"`` and ``"neg_loss"`` terms of the contrastive loss on a (query, reference) matrix.

    With a chunkable ``reduction``, the (millions of) negative pairs are reduced in row blocks of ``mat`` under a
    mask instead of being listed: the label mask, or the mask of a miner's negative pairs when they are distinct
    and many (at least an eighth of the matrix) and the matrix has at least ``MASK_FROM_CELLS`` cells.
    """

    def pos_term(values: Tensor) -> Tensor:
        excess = pos_margin - values if distance.higher_is_closer else values - pos_margin
        return excess.clamp_min_(0)

    fuse_labels = reduction is not None and indices_tuple is None
    masks = label_masks(labels, ref_labels) if fuse_labels else None  # type: ignore[arg-type]
    negative = _negative_mask(mat, masks, indices_tuple) if reduction is not None else None
    if negative is None:
        pos, pos_anchors, neg, neg_anchors = pair_entries(mat, labels, indices_tuple, ref_labels)
        neg_excess = neg - neg_margin if distance.higher_is_closer else neg_margin - neg
        neg_terms = Terms(neg_excess.clamp_min_(0), neg_anchors, TermKind.NEG_PAIR)
    else:
        assert reduction is not None
        if masks is not None:
            pos_anchors, p = torch.nonzero(masks[0], as_tuple=True)
        else:
            pos_anchors, p = convert_to_pairs(indices_tuple, labels, ref_labels)[:2]  # type: ignore[arg-type]
        pos = pair_values(mat, pos_anchors, p)
        neg_terms = Terms.reduced(masked_hinge(mat, negative, neg_margin, distance.higher_is_closer, reduction))
    return {"pos_loss": Terms(pos_term(pos), pos_anchors, TermKind.POS_PAIR), "neg_loss": neg_terms}


def _negative_mask(
    mat: Tensor, masks: tuple[Tensor, Tensor] | None, indices_tuple: tuple[Tensor, ...] | None
) -> Tensor | None:
    """The negative pairs as a mask when that describes them exactly and pays off, else ``None``."""
    if indices_tuple is None:
        return masks[1] if masks is not None else None
    if len(indices_tuple) != 4 or indices_tuple[2].numel() * 8 < mat.numel():
        return None  # triplets list each (a, n) once per positive: repeats a mask cannot hold
    if mat.numel() < MASK_FROM_CELLS:
        return None  # reading the listed pairs is faster; the mask only pays off in memory, at large batches
    a2, n = indices_tuple[2], indices_tuple[3]
    negative = torch.zeros(mat.shape, dtype=torch.bool, device=mat.device)
    negative[a2, n] = True
    return negative if int(torch.count_nonzero(negative)) == a2.numel() else None


def pair_entries(
    mat: Tensor, labels: Tensor | None, indices_tuple: tuple[Tensor, ...] | None, ref_labels: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(positive values, their anchors, negative values, their anchors)`` read from ``mat``.

    Without ``indices_tuple`` every pair from the labels is read in row-major order: the (few) positive pairs
    by index, the negative pairs with a boolean mask, so no index list of all negative pairs is built. Given
    pairs or triplets are read as listed, repeats included.
    """
    if indices_tuple is None:
        assert labels is not None
        positive, negative = label_masks(labels, ref_labels)
        a, p = torch.nonzero(positive, as_tuple=True)
        # Row i's negatives are the reference elements that do not share its label.
        ref = labels if ref_labels is None else ref_labels
        sorted_ref = torch.sort(ref).values
        same = torch.searchsorted(sorted_ref, labels, right=True) - torch.searchsorted(sorted_ref, labels)
        neg_anchors = _repeat_rows(mat.shape[1] - same)
        return pair_values(mat, a, p), a, torch.masked_select(mat, negative), neg_anchors
    a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
    return pair_values(mat, a1, p), a1, pair_values(mat, a2, n), a2


def _repeat_rows(per_row: Tensor) -> Tensor:
    """``repeat_interleave(arange(len(per_row)), per_row)``, as a running count of row starts.

    On CPU this is about twice as fast as ``repeat_interleave`` for millions of outputs.
    """
    total = int(per_row.sum())
    starts = (torch.cumsum(per_row, 0) - per_row)[1:]
    # Each later row's start bumps the count; rows without entries share a start and bump it together.
    starts = starts[starts < total]
    marks = torch.zeros(total, dtype=torch.long, device=per_row.device)
    marks.index_add_(0, starts, torch.ones_like(starts))
    return marks.cumsum_(0)
