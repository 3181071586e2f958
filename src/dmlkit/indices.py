"""Index sets over a batch: all positive/negative pairs, all triplets, and conversions between them.

Everything is vectorised; the triplet builders expand pair lists with ``repeat_interleave`` so memory is
proportional to the output, never to ``batch_size ** 3``.

The reference set is "the batch itself" when ``ref_labels`` is ``None`` or is the very same tensor object
as ``labels``; then an element is never paired with itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._validation import is_real_number, message
from .types import LabelPairs, Pairs, Triplets

__all__ = [
    "ref_is_query",
    "label_masks",
    "select_in_place",
    "pair_counts",
    "all_pairs",
    "list_label_pairs",
    "all_triplets",
    "random_triplets",
    "pairs_to_triplets",
    "triplets_to_pairs",
    "convert_to_pairs",
    "convert_to_triplets",
    "check_indices_tuple",
    "pair_masks",
    "triplets_from_selection",
    "order_within_rows",
]


def ref_is_query(labels: Tensor, ref_labels: Tensor | None) -> bool:
    """Whether the reference set is the query batch itself (self-comparisons are then excluded)."""
    return ref_labels is None or ref_labels is labels


def label_masks(labels: Tensor, ref_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Boolean ``(positive, negative)`` masks of shape ``(len(labels), len(ref_labels))``.

    ``positive[i, j]`` is true when the labels match (and ``i != j`` if the reference is the batch);
    ``negative[i, j]`` when they differ.

    Example:
        >>> pos, neg = label_masks(torch.tensor([0, 0, 1]))
        >>> pos.int().tolist(), neg.int().tolist()
        ([[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1], [1, 1, 0]])
    """
    same_set = ref_is_query(labels, ref_labels)
    ref = labels if ref_labels is None else ref_labels
    same = labels.unsqueeze(1) == ref.unsqueeze(0)
    negative = ~same
    if same_set:
        same.fill_diagonal_(False)
    return same, negative


def all_pairs(labels: Tensor, ref_labels: Tensor | None = None) -> Pairs:
    """Every positive and every negative pair, in row-major order.

    Example:
        >>> all_pairs(torch.tensor([0, 0, 1])).positives.tolist()
        [1, 0]
    """
    positive, negative = label_masks(labels, ref_labels)
    a1, p = torch.nonzero(positive, as_tuple=True)
    del positive  # one batch-by-batch mask fewer while the (larger) negative list is built
    a2, n = torch.nonzero(negative, as_tuple=True)
    return Pairs(a1, p, a2, n)


def _expand_by_anchor(
    anchors_pos: Tensor, positives: Tensor, anchors_neg: Tensor, negatives: Tensor, num_anchors: int
) -> Triplets:
    """Every (a, p, n) with (a, p) a positive pair and (a, n) a negative pair sharing the anchor.

    Order: positive pairs in the given order; for each, its anchor's negatives in their given order.
    """
    device = anchors_pos.device
    order = torch.sort(anchors_neg, stable=True).indices
    sorted_neg = negatives[order]
    neg_count = torch.bincount(anchors_neg, minlength=num_anchors)
    neg_start = torch.cumsum(neg_count, 0) - neg_count
    repeats = neg_count[anchors_pos]
    total = int(repeats.sum())
    if total == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return Triplets(empty, empty.clone(), empty.clone())
    a = torch.repeat_interleave(anchors_pos, repeats, output_size=total)
    p = torch.repeat_interleave(positives, repeats, output_size=total)
    group_start = torch.cumsum(repeats, 0) - repeats
    offset = torch.arange(total, device=device) - torch.repeat_interleave(group_start, repeats, output_size=total)
    n = sorted_neg[torch.repeat_interleave(neg_start[anchors_pos], repeats, output_size=total) + offset]
    return Triplets(a, p, n)


def list_label_pairs(labels: Tensor, ref_labels: Tensor, pairs: LabelPairs) -> Pairs:
    """The pairs ``pairs`` describes, listed in row-major order: every positive pair of ``labels`` against
    ``ref_labels`` but ``(i, pairs.excluded_ref[i])``, and every negative pair.

    Example:
        >>> out = list_label_pairs(torch.tensor([0, 1]), torch.tensor([0, 1, 0]), LabelPairs(torch.tensor([0, 1])))
        >>> out.anchors_pos.tolist(), out.positives.tolist(), out.negatives.tolist()
        ([0], [2], [1, 0, 2])
    """
    positive = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    negative = ~positive
    positive[torch.arange(labels.shape[0], device=labels.device), pairs.excluded_ref] = False
    a1, p = torch.nonzero(positive, as_tuple=True)
    del positive
    a2, n = torch.nonzero(negative, as_tuple=True)
    return Pairs(a1, p, a2, n)


def all_triplets(labels: Tensor, ref_labels: Tensor | None = None) -> Triplets:
    """Every triplet (a, p, n) with ``label[a] == ref_label[p] != ref_label[n]``, in lexicographic order.

    Example:
        >>> [t.tolist() for t in all_triplets(torch.tensor([0, 0, 1]))]
        [[0, 1], [1, 0], [2, 2]]
    """
    pairs = all_pairs(labels, ref_labels)
    return _expand_by_anchor(*pairs, num_anchors=labels.shape[0])


def random_triplets(
    labels: Tensor,
    ref_labels: Tensor | None = None,
    t_per_anchor: int = 100,
    generator: torch.Generator | None = None,
) -> Triplets:
    """``t_per_anchor`` random triplets for every anchor that has a positive and a negative.

    Positives and negatives are drawn uniformly, with replacement, from the anchor's own positives and
    negatives. Pass a seeded ``generator`` for reproducible draws.
    """
    if not is_real_number(t_per_anchor, integer=True) or t_per_anchor < 1:
        raise ValueError(message("random_triplets", "t_per_anchor", "a positive integer", t_per_anchor))
    positive, negative = label_masks(labels, ref_labels)
    valid = positive.any(1) & negative.any(1)
    anchors = torch.nonzero(valid).flatten()
    if anchors.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return Triplets(empty, empty.clone(), empty.clone())
    gen_device = generator.device if generator is not None else labels.device
    pos_w = positive[anchors].to(device=gen_device, dtype=torch.float)
    neg_w = negative[anchors].to(device=gen_device, dtype=torch.float)
    p = torch.multinomial(pos_w, t_per_anchor, replacement=True, generator=generator).to(labels.device)
    n = torch.multinomial(neg_w, t_per_anchor, replacement=True, generator=generator).to(labels.device)
    a = anchors.unsqueeze(1).expand_as(p)
    return Triplets(a.reshape(-1), p.reshape(-1), n.reshape(-1))


def pairs_to_triplets(pairs: Sequence[Tensor], num_anchors: int | None = None) -> Triplets:
    """Combine positive and negative pairs that share an anchor into triplets."""
    a1, p, a2, n = pairs
    if a1.numel() == 0 or a2.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=a1.device)
        return Triplets(empty, empty.clone(), empty.clone())
    size = num_anchors if num_anchors is not None else int(max(a1.max(), a2.max())) + 1
    return _expand_by_anchor(a1.long(), p.long(), a2.long(), n.long(), num_anchors=size)


def triplets_to_pairs(triplets: Sequence[Tensor]) -> Pairs:
    """The positive pairs (a, p) and negative pairs (a, n) of each triplet (duplicates kept)."""
    a, p, n = triplets
    return Pairs(a, p, a, n)


def convert_to_pairs(indices_tuple: Sequence[Tensor] | None, labels: Tensor, ref_labels: Tensor | None = None) -> Pairs:
    """All pairs when ``indices_tuple`` is ``None``; pairs as given; or the pairs of given triplets."""
    if indices_tuple is None:
        return all_pairs(labels, ref_labels)
    if len(indices_tuple) == 4:
        return Pairs(*indices_tuple)
    return triplets_to_pairs(indices_tuple)


def convert_to_triplets(
    indices_tuple: Sequence[Tensor] | None,
    labels: Tensor,
    ref_labels: Tensor | None = None,
    t_per_anchor: int | str = "all",
    generator: torch.Generator | None = None,
) -> Triplets:
    """All (or ``t_per_anchor`` random) triplets when ``indices_tuple`` is ``None``; triplets as given; or
    the triplets formed from given pairs that share an anchor."""
    if indices_tuple is None:
        if t_per_anchor == "all":
            return all_triplets(labels, ref_labels)
        return random_triplets(labels, ref_labels, t_per_anchor=t_per_anchor, generator=generator)  # type: ignore[arg-type]
    if len(indices_tuple) == 3:
        return Triplets(*indices_tuple)
    return pairs_to_triplets(indices_tuple, num_anchors=labels.shape[0] if labels is not None else None)


def check_indices_tuple(
    owner: str, indices_tuple: object, num_query: int, num_ref: int, device: torch.device
) -> tuple[Tensor, ...] | None:
    """Validate a miner's output: 3 (triplets) or 4 (pairs) integer 1-D tensors, in range, lengths matching.

    Returns the tuple with every tensor as ``long`` on ``device``.
    """
    if indices_tuple is None:
        return None
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError(
            message(
                owner,
                "indices_tuple",
                "None, a 3-tuple (anchors, positives, negatives) or a 4-tuple "
                "(anchors_pos, positives, anchors_neg, negatives)",
                type(indices_tuple).__name__,
            )
        )
    out = []
    for position, t in enumerate(indices_tuple):
        if not isinstance(t, Tensor) or t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
            desc = (
                f"{type(t).__name__}" if not isinstance(t, Tensor) else f"tensor of shape {tuple(t.shape)}, {t.dtype}"
            )
            raise TypeError(message(owner, f"indices_tuple[{position}]", "a 1-D integer tensor", desc))
        out.append(t.to(device=device, dtype=torch.long))
    query_positions = (0,) if len(out) == 3 else (0, 2)
    for position, t in enumerate(out):
        limit = num_query if position in query_positions else num_ref
        if t.numel():
            low, high = (int(v) for v in torch.aminmax(t))
            if low < 0 or high >= limit:
                raise ValueError(
                    message(
                        owner, f"indices_tuple[{position}]", f"indices in [0, {limit})", f"values from {low} to {high}"
                    )
                )
    if len(out) == 3 and not (out[0].numel() == out[1].numel() == out[2].numel()):
        raise ValueError(message(owner, "indices_tuple", "three tensors of equal length", [t.numel() for t in out]))
    if len(out) == 4 and (out[0].numel() != out[1].numel() or out[2].numel() != out[3].numel()):
        raise ValueError(
            message(owner, "indices_tuple", "pairs (a1, p) and (a2, n) of matching lengths", [t.numel() for t in out])
        )
    return tuple(out)


def pair_masks(
    indices_tuple: Sequence[Tensor] | None,
    labels: Tensor | None,
    ref_labels: Tensor | None,
    shape: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Boolean ``(positive, negative)`` masks of ``shape`` (query, reference) for the pairs to score.

    Without ``indices_tuple``: every positive / negative pair from the labels. With pairs or triplets from
    a miner: exactly those pairs (a triplet contributes its (a, p) and (a, n) pairs).

    Example:
        >>> pos, neg = pair_masks((torch.tensor([0]), torch.tensor([1]), torch.tensor([2])), None, None, (3, 3))
        >>> pos.nonzero().tolist(), neg.nonzero().tolist()
        ([[0, 1]], [[0, 2]])
    """
    if indices_tuple is None:
        if labels is None:
            raise ValueError(message("pair_masks", "labels", "given when `indices_tuple` is None", None))
        return label_masks(labels, ref_labels)
    a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)  # type: ignore[arg-type]
    device = a1.device
    positive = torch.zeros(shape, dtype=torch.bool, device=device)
    negative = torch.zeros(shape, dtype=torch.bool, device=device)
    positive[a1, p] = True
    negative[a2, n] = True
    return positive, negative


def triplets_from_selection(
    anchors: Tensor, positives: Tensor, selected: list[Tensor], rows_per_block: int
) -> Triplets:
    """The triplets marked in blocks of ``(positive pair, reference)`` masks, in (pair, negative) order.

    ``selected[i]`` is the boolean mask of the positive pairs ``anchors[i * rows_per_block:][:rows]`` against
    every reference element. The outputs are allocated once at their final size and each mask is released as
    soon as it is read, so the peak is the triplets plus the masks, never the triplets twice. The list is
    emptied.

    Example:
        >>> keep = [torch.tensor([[False, True, True]]), torch.tensor([[True, False, False]])]
        >>> triplets_from_selection(torch.tensor([0, 1]), torch.tensor([1, 0]), keep, 1)
        Triplets(anchors=tensor([0, 0, 1]), positives=tensor([1, 1, 0]), negatives=tensor([1, 2, 0]))
    """
    total = sum(int(torch.count_nonzero(keep)) for keep in selected)
    out = Triplets(*(torch.empty(total, dtype=torch.long, device=anchors.device) for _ in range(3)))
    filled = 0
    for index in range(len(selected)):
        keep = selected[index]
        selected[index] = keep.new_empty(0)
        flat = torch.nonzero(keep.reshape(-1)).squeeze(1)
        end = filled + flat.numel()
        torch.remainder(flat, keep.shape[1], out=out.negatives[filled:end])
        pair = flat.div_(keep.shape[1], rounding_mode="floor").add_(index * rows_per_block)
        torch.index_select(anchors, 0, pair, out=out.anchors[filled:end])
        torch.index_select(positives, 0, pair, out=out.positives[filled:end])
        filled = end
    selected.clear()
    return out


def order_within_rows(rows: Tensor, values: Tensor, descending: bool = False) -> Tensor:
    """The permutation that orders pairs by ``rows`` and, within a row, by ``values``; ties keep their order.

    ``rows`` must already be ascending (as ``nonzero`` lists them). This is the order in which
    pytorch-metric-learning's miners that sort each row of the distance matrix list their pairs.

    Example:
        >>> order_within_rows(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0.5, 0.1, 0.5, 0.9, 0.2]))
        tensor([1, 0, 2, 4, 3])
    """
    by_value = torch.sort(values, descending=descending, stable=True).indices
    by_row = torch.sort(rows.index_select(0, by_value), stable=True).indices
    return by_value.index_select(0, by_row)


#: the integer type of each float type's size, for selecting on bit patterns
_SAME_SIZE_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


#: the most cells :func:`select_in_place` handles at once (its integer copy of the mask has this many words)
_SELECT_CELLS = 1 << 20


def pair_counts(shape: tuple[int, ...], rows: Tensor, cols: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A ``shape`` matrix of ``dtype`` counting how often each cell ``(rows[k], cols[k])`` is listed.

    The same as ``zeros(shape).index_put_((rows, cols), ones, accumulate=True)``, but accumulating
    ``index_put_`` is slow on the CPU: the cells are set to one, and only when fewer cells are set than listed
    (a repeated pair) are they counted with ``bincount``.

    Example:
        >>> pair_counts((2, 3), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 0]))
        tensor([[0., 0., 1.],
                [2., 0., 0.]])
    """
    counts = torch.zeros(shape, dtype=dtype, device=rows.device)
    if rows.numel() == 0:
        return counts
    counts[rows, cols] = 1
    if int(torch.count_nonzero(counts)) == rows.numel():
        return counts
    return torch.bincount(rows * shape[1] + cols, minlength=shape[0] * shape[1]).view(shape).to(dtype)


def select_in_place(mask: Tensor, values: Tensor, fill: float) -> Tensor:
    """``torch.where(mask, values, fill)``, written into ``values`` on the CPU.

    The selection runs on the bit patterns: ``values`` AND an all-ones word where ``mask`` holds, then OR the
    pattern of ``fill`` elsewhere. These vectorise, while torch's ``where`` picks element by element with a
    branch, about ten times slower on a random mask. Exact, infinities and NaNs included; other devices, a mask
    that would broadcast and values that require a gradient use ``torch.where``.

    Example:
        >>> select_in_place(torch.tensor([True, False]), torch.tensor([2.0, float("nan")]), float("-inf"))
        tensor([2., -inf])
    """
    bits_type = _SAME_SIZE_INT.get(values.dtype)
    if bits_type is None or values.device.type != "cpu" or mask.shape != values.shape or values.requires_grad:
        return torch.where(mask, values, fill)
    if values.numel() > _SELECT_CELLS and values.shape[0] > 1:
        # in slices along the first dimension, so the integer copy of the mask stays small
        step = max(1, _SELECT_CELLS // max(1, values[0].numel()))
        for start in range(0, values.shape[0], step):
            select_in_place(mask[start : start + step], values[start : start + step], fill)
        return values
    keep = mask.view(torch.uint8).to(bits_type).neg_()  # all bits set where the mask holds
    bits = values.view(bits_type)
    bits.bitwise_and_(keep)
    if fill != 0.0 or math.copysign(1.0, fill) < 0:
        pattern = torch.tensor(fill, dtype=values.dtype).view(bits_type)
        bits.bitwise_or_(keep.bitwise_not_().bitwise_and_(pattern))
    return values
