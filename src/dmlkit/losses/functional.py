"""Pure tensor helpers shared by the losses (no modules, no state)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .._validation import Described, message
from ..distances import BaseDistance
from ..indices import select_in_place
from ..reducers import AvgNonZeroReducer, BaseReducer, MeanReducer, SumReducer
from ..reducers.base import zero_loss
from ..types import TermKind, Terms

__all__ = [
    "check_two_views",
    "full_precision",
    "require_similarity",
    "require_distance",
    "pair_values",
    "masked_logsumexp",
    "row_logsumexp",
    "segment_logsumexp",
    "miner_weights",
    "sample_terms",
    "FusedReduction",
    "fused_reduction",
    "reduce_in_chunks",
    "reduce_pair_terms",
    "masked_hinge",
    "reduce_repeated",
    "chunk_count",
    "divide_by_count",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@contextmanager
def full_precision(embeddings: Tensor) -> Iterator[Tensor]:
    """Autocast off inside; yields ``embeddings`` promoted to float32 when they are float16 or bfloat16.

    For losses that normalise, exponentiate or sum at large scales: inside a ``torch.autocast`` region they
    still give a float32 loss with finite gradients.

    Example:
        >>> with full_precision(torch.ones(2, dtype=torch.bfloat16)) as x:
        ...     x.dtype
        torch.float32
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        yield embeddings.float() if embeddings.dtype in _LOW_PRECISION else embeddings


def require_similarity(owner: str, distance: BaseDistance) -> None:
    """A ``ValueError`` unless ``distance`` is a similarity (higher is closer), for losses defined on those."""
    if not distance.higher_is_closer:
        rule = "a similarity (higher is closer), e.g. CosineSimilarity()"
        raise ValueError(message(owner, "distance", rule, type(distance).__name__))


def require_distance(owner: str, distance: BaseDistance, example: str = "LpDistance()") -> None:
    """A ``ValueError`` unless ``distance`` is a distance (lower is closer), for losses defined on those."""
    if distance.higher_is_closer:
        rule = f"a distance (lower is closer), e.g. {example}"
        raise ValueError(message(owner, "distance", rule, type(distance).__name__))


class _PairValues(torch.autograd.Function):
    """``mat[rows, cols]`` whose backward scatters with a flat ``index_add_``: on CPU several times faster
    than advanced indexing's accumulating put when there are millions of pairs."""

    @staticmethod
    def forward(ctx: Any, mat: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(rows, cols)
        ctx.shape = mat.shape
        return mat[rows, cols]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        rows, cols = ctx.saved_tensors
        n_rows, n_cols = ctx.shape
        out = grad.new_zeros(n_rows * n_cols)
        out.index_add_(0, rows * n_cols + cols, grad)
        return out.view(n_rows, n_cols), None, None


def pair_values(mat: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``mat[rows, cols]`` for 1-D index tensors, with a fast backward.

    Example:
        >>> pair_values(torch.arange(6.0).view(2, 3), torch.tensor([0, 1]), torch.tensor([2, 0]))
        tensor([2., 3.])
    """
    if not mat.requires_grad:
        return mat[rows, cols]
    return _PairValues.apply(mat, rows, cols)


def masked_logsumexp(x: Tensor, keep: Tensor | None = None, add_one: bool = True, dim: int = 1) -> Tensor:
    """``log(sum(exp(x)) [+ 1])`` over ``dim``, counting only entries where ``keep`` is true.

    ``add_one`` adds ``exp(0) = 1`` inside the log (the "1 +" of softplus-style losses such as the lifted
    structure, multi-similarity and circle losses). A slice with nothing kept gives 0. Stable for large
    inputs; the result keeps ``dim`` with size 1.

    Example:
        >>> masked_logsumexp(torch.tensor([[0.0, 1000.0]]), torch.tensor([[True, False]]))
        tensor([[0.6931]])
    """
    empty = None
    if keep is not None:
        # Slices with nothing kept stay finite (their output is zeroed below), so no NaN gradient appears.
        empty = ~keep.any(dim=dim, keepdim=True)
        x = x.masked_fill(~keep & ~empty, float("-inf"))
    if add_one:
        zero_shape = list(x.shape)
        zero_shape[dim] = 1
        x = torch.cat([x, x.new_zeros(zero_shape)], dim=dim)
    out = torch.logsumexp(x, dim=dim, keepdim=True)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out


def row_logsumexp(x: Tensor, keep: Tensor, add_one: bool = False) -> Tensor:
    """Per row, ``log(sum_{j: keep} exp(x_j))`` (with ``+ 1`` inside the log when ``add_one``).

    A row with nothing kept gives 0 with ``add_one`` and ``-inf`` without. One masked copy and one
    exponential of ``x``; gradients are finite everywhere and zero for entries not kept. Unlike
    :func:`masked_logsumexp`, rows come back as a 1-D tensor and an empty row without ``add_one`` is
    ``-inf`` (so a caller can tell "no negatives" apart from a log-sum of 0).
    """
    masked = x.masked_fill(~keep, float("-inf"))
    peak = masked.detach().amax(dim=1, keepdim=True)
    peak = peak.clamp(min=0) if add_one else peak.masked_fill(peak == float("-inf"), 0.0)
    sums = torch.exp(masked - peak).sum(dim=1)
    peak = peak.squeeze(1)
    if add_one:
        return torch.log(sums + torch.exp(-peak)) + peak
    # a non-empty row has sums >= 1 (its largest entry contributes exp(0)); only empty rows have 0
    empty = sums == 0
    return torch.where(empty, float("-inf"), torch.log(torch.where(empty, 1.0, sums)) + peak)


def segment_logsumexp(values: Tensor, segments: Tensor, num_segments: int, add_one: bool = False) -> Tensor:
    """``log(sum(exp(values[segments == k])))`` for every ``k`` (``+ 1`` inside the log when ``add_one``);
    0 for an empty segment. Time and memory linear in ``len(values)``."""
    start = 0.0 if add_one else float("-inf")
    peak = values.new_full((num_segments,), start)
    peak = peak.scatter_reduce(0, segments, values.detach(), reduce="amax", include_self=add_one)
    peak = peak.masked_fill(peak == float("-inf"), 0.0)
    sums = torch.exp(-peak) if add_one else values.new_zeros(num_segments)
    sums = sums.index_add(0, segments, torch.exp(values - peak[segments]))
    # only an empty segment without add_one sums to 0: its log is taken as 0
    return torch.where(sums > 0, sums, 1.0).log() + peak


def miner_weights(
    indices_tuple: tuple[Tensor, ...] | None, size: int, dtype: torch.dtype, device: torch.device, anchors_only: bool
) -> Tensor | None:
    """Per-query weights from a miner's output: how often each element occurs, divided by the largest count.

    Elements the miner did not select get weight 0. ``None`` when there is nothing mined (every weight 1).
    With a separate reference set only the anchor positions index the query batch, so only they count.
    """
    if indices_tuple is None or all(t.numel() == 0 for t in indices_tuple):
        return None
    if anchors_only:
        parts = [indices_tuple[0]] if len(indices_tuple) == 3 else [indices_tuple[0], indices_tuple[2]]
    else:
        parts = list(indices_tuple)
    counts = torch.bincount(torch.cat(parts), minlength=size)[:size].to(device=device, dtype=dtype)
    return counts / counts.max()


def sample_terms(values: Tensor, indices_tuple: tuple[Tensor, ...] | None = None, anchors_only: bool = False) -> Terms:
    """One element term per sample (``anchors`` = batch index), each weighted by :func:`miner_weights`.

    Example:
        >>> mined = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 1]))
        >>> sample_terms(torch.tensor([1.0, 2.0, 3.0]), mined).values
        tensor([0.6667, 2.0000, 1.0000])
    """
    size = values.shape[0]
    weights = miner_weights(indices_tuple, size, values.dtype, values.device, anchors_only)
    if weights is not None:
        values = values * weights
    return Terms(values, torch.arange(size, device=values.device), TermKind.ELEMENT)


class FusedReduction(str, enum.Enum):
    """Reductions that need only a running sum and a count, so terms can be reduced chunk by chunk."""

    MEAN = "mean"
    NONZERO = "nonzero"
    SUM = "sum"


_FUSABLE: dict[type, FusedReduction] = {
    MeanReducer: FusedReduction.MEAN,
    AvgNonZeroReducer: FusedReduction.NONZERO,
    SumReducer: FusedReduction.SUM,
}


def fused_reduction(reducer: BaseReducer) -> FusedReduction | None:
    """The chunkable reduction ``reducer`` performs, or ``None`` when it needs every term at once (it groups by
    anchor, weighs by class, keeps the terms …). Exact types only: a subclass may reduce differently."""
    return _FUSABLE.get(type(reducer))


def chunk_count(values: Tensor, keep: Tensor | None, reduction: FusedReduction) -> int:
    """How many of one chunk's terms ``reduction`` divides by: the positive values (non-zero mean), the kept
    (or all) values (mean), none (sum). ``values`` outside ``keep`` must already be 0."""
    if reduction is FusedReduction.NONZERO:
        return int(torch.count_nonzero(values > 0))
    if reduction is FusedReduction.MEAN:
        return int(torch.count_nonzero(keep)) if keep is not None else values.numel()
    return 0


def divide_by_count(total: Tensor, count: int, reduction: FusedReduction) -> Tensor:
    """The reduced value from a running sum and count (no division for a sum, nor when nothing counted)."""
    return total / count if count and reduction is not FusedReduction.SUM else total


def reduce_in_chunks(
    chunk_terms: Callable[[int], tuple[Tensor, Tensor | None]],
    num_chunks: int,
    reduction: FusedReduction,
    like: Tensor,
) -> Tensor:
    """Reduce terms that are produced one chunk at a time, never holding them all.

    ``chunk_terms(index)`` returns chunk ``index``'s terms and an optional mask of the valid ones. Each chunk is
    checkpointed: its intermediates are recomputed in the backward pass instead of kept, so memory is one
    chunk's, whatever the number of terms. The result equals reducing the concatenated valid terms with the
    reducer ``reduction`` stands for (mean, mean of the positive ones, or sum); no valid (or, for the non-zero
    mean, no positive) term gives a graph-connected 0.
    """

    def reduced(index: int) -> tuple[Tensor, Tensor]:
        values, keep = chunk_terms(index)
        if keep is not None:
            values = torch.where(keep, values, values.new_zeros(()))
        if reduction is FusedReduction.NONZERO:
            positive = values > 0
            values = torch.where(positive, values, values.new_zeros(()))
            counted = torch.count_nonzero(positive)
        else:
            counted = torch.count_nonzero(keep) if keep is not None else torch.tensor(values.numel())
        return values.sum(), counted

    total: Tensor | None = None
    count = 0
    for index in range(num_chunks):
        # A single chunk is all the terms anyway: recomputing it in the backward pass would save nothing.
        step = reduced(index) if num_chunks == 1 else checkpoint(reduced, index, use_reentrant=False)
        chunk_sum, chunk_count = step
        total = chunk_sum if total is None else total + chunk_sum
        count += int(chunk_count)
    if total is None or (count == 0 and reduction is not FusedReduction.SUM):
        return zero_loss(like)
    return total if reduction is FusedReduction.SUM else total / count


def reduce_pair_terms(
    term: Callable[[Tensor], Tensor], mat: Tensor, keep: Tensor, reduction: FusedReduction, cells: int = 1 << 22
) -> Tensor:
    """Reduce ``term(mat)`` over the entries where ``keep`` is true, in row blocks of about ``cells`` entries.

    For losses whose per-pair term is an element-wise function of the pair's distance: no list of pairs, no
    per-pair anchors, and memory of one block.

    Example:
        >>> mat = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
        >>> keep = torch.tensor([[False, True], [True, False]])
        >>> reduce_pair_terms(lambda d: d * 10, mat, keep, FusedReduction.MEAN)
        tensor(25.)
    """
    rows = max(1, cells // max(1, mat.shape[1]))
    blocks, masks = (mat.split(rows), keep.split(rows)) if rows < mat.shape[0] else ((mat,), (keep,))
    return reduce_in_chunks(lambda index: (term(blocks[index]), masks[index]), len(blocks), reduction, mat)


def masked_hinge(
    mat: Tensor, keep: Tensor, threshold: float, above: bool, reduction: FusedReduction, cells: int = 1 << 22
) -> Tensor:
    """Reduce the hinge ``relu(threshold - mat)`` (``relu(mat - threshold)`` when ``above``) over the entries
    where ``keep`` is true: the contrastive-style penalty of every pair on the wrong side of a margin.

    Equal to ``reduce_pair_terms`` with that hinge, in fewer passes: the backward is written by hand (the
    slope is 0 or -/+1), so no intermediate is kept or recomputed beyond one block of ``cells`` entries.

    Example:
        >>> mat = torch.tensor([[0.0, 0.25], [2.0, 0.5]])
        >>> masked_hinge(mat, torch.ones(2, 2, dtype=torch.bool), 1.0, False, FusedReduction.NONZERO)
        tensor(0.7500)
    """
    return _MaskedHinge.apply(mat, keep, threshold, above, reduction, max(1, cells // max(1, mat.shape[1])))


class _MaskedHinge(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, mat: Tensor, keep: Tensor, threshold: float, above: bool, reduction: FusedReduction, rows: int
    ) -> Tensor:
        total = mat.new_zeros(())
        count = 0
        for block, mask in zip(mat.split(rows), keep.split(rows), strict=True):
            excess = block - threshold if above else threshold - block
            excess.clamp_min_(0)
            excess = select_in_place(mask, excess, 0.0)
            total += excess.sum()
            count += chunk_count(excess, mask, reduction)
        ctx.save_for_backward(mat, keep)
        ctx.settings = (threshold, above, rows, count)
        return divide_by_count(total, count, reduction)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mat, keep = ctx.saved_tensors
        threshold, above, rows, count = ctx.settings
        slope = (grad if above else -grad) / max(count, 1)
        out = torch.empty_like(mat)
        for block, mask, out_block in zip(mat.split(rows), keep.split(rows), out.split(rows), strict=True):
            active = block > threshold if above else block < threshold
            active &= mask
            torch.mul(active, slope, out=out_block)
        return out, None, None, None, None, None


def reduce_repeated(values: Tensor, counts: Tensor, reduction: FusedReduction) -> Tensor:
    """Reduce terms where ``values[i]`` stands for ``counts[i]`` identical terms, without repeating them.

    Example:
        >>> reduce_repeated(torch.tensor([0.0, 2.0, 4.0]), torch.tensor([5, 1, 3]), FusedReduction.NONZERO)
        tensor(3.5000)
    """
    weights = counts.to(values.dtype)
    if reduction is FusedReduction.NONZERO:
        weights = weights * (values > 0)
    total = (values * weights).sum()
    if reduction is FusedReduction.SUM:
        return total
    count = weights.sum()
    return total / count if bool(count > 0) else total * 0


def check_two_views(
    owner: str,
    embeddings: Tensor,
    labels: object,
    indices_tuple: object,
    ref_emb: Tensor | None,
    ref_labels: object,
    batch_rule: str,
) -> None:
    """Validate a self-supervised loss's two views: ``ref_emb`` given, of the shape of ``embeddings`` (row ``i``
    pairs with row ``i``), at least 2 rows (``batch_rule`` says why), and no labels, reference labels or pairs.

    The base class validates each tensor itself (type, 2-D, finite); this checks only what it cannot know.
    """
    for arg, value in (("labels", labels), ("ref_labels", ref_labels), ("indices_tuple", indices_tuple)):
        if value is not None:
            rule = f"None: {owner} is self-supervised (pass the second view as `ref_emb`)"
            raise ValueError(message(owner, arg, rule, Described(type(value).__name__)))
    if ref_emb is None:
        raise ValueError(
            message(owner, "ref_emb", "given: the second view, row i pairing with row i of `embeddings`", None)
        )
    both_tensors = isinstance(embeddings, Tensor) and isinstance(ref_emb, Tensor)
    if both_tensors and embeddings.ndim == 2 and ref_emb.ndim == 2 and ref_emb.shape != embeddings.shape:
        raise ValueError(
            message(
                owner,
                "ref_emb",
                f"of the shape of `embeddings` {tuple(embeddings.shape)} (one row per sample)",
                Described(f"shape {tuple(ref_emb.shape)}"),
            )
        )
    if both_tensors and embeddings.ndim == 2 and embeddings.shape[0] < 2:
        raise ValueError(
            message(owner, "embeddings", f"at least 2 rows ({batch_rule})", Described(f"{embeddings.shape[0]} row(s)"))
        )
