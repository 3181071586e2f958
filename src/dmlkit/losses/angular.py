from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validation import Described, check_range, message
from ..distances import LpDistance
from ..indices import convert_to_pairs, label_masks
from ..types import TermKind, Terms, empty_index
from .base import BaseMetricLossFunction
from .functional import fused_reduction, reduce_repeated

__all__ = ["AngularLoss"]


class AngularLoss(BaseMetricLossFunction):
    """Angular loss (Wang, Zhou, Wen, Liu and Lin, 2017, "Deep Metric Learning with Angular Loss",
    arXiv:1708.01682), in its N-pair form.

    The paper bounds the angle at the negative ``n`` of a triplet: with ``x_c`` the centre of the positive pair
    ``(a, p)``, it asks ``||x_a - x_p|| <= 2 tan(alpha) ||x_n - x_c||``. On L2-normalised embeddings the
    squared violation is linear in ``x_n``, and a smooth maximum over the anchor's negatives gives, for every
    positive pair::

        f(a, p, n) = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
        loss(a, p) = log(1 + sum_{n: label(n) != label(a)} exp(f(a, p, n)))

    One value per positive pair; the default reducer averages them. The log-sum-exp is computed stably, so
    ``alpha`` close to 90 degrees (huge ``tan^2``) stays finite, and over blocks of pairs with a recomputing
    backward, so memory does not grow with (pairs x reference); a miner's repeated pairs are scored once. The
    paper's combination with the N-pair loss is the sum of this loss and
    :class:`~dmlkit.losses.n_pairs.NPairsLoss`.

    The positive pairs are all of them, or a miner's (the pairs of its triplets, or its positive pairs); the
    negatives of each pair are always every reference sample with another label than the anchor, as in
    pytorch-metric-learning, so labels are needed even with an ``indices_tuple``. A miner's output without any
    negative pair gives a loss of 0. With ``ref_emb``, anchors come from ``embeddings`` and positives and
    negatives from the reference set.

    Unlike pytorch-metric-learning (2.9.0), the negatives are L2-normalised too: the derivation of ``f``
    drops ``||x_n||^2`` as a constant, and un-normalised negatives let the loss fall by growing their norms.
    The two agree exactly on unit-norm inputs. ``alpha`` is kept as given, in degrees.

    Args:
        alpha: the angle bound in degrees, ``0 <= alpha < 90`` (the paper uses 36 to 55).
        **kwargs: ``distance`` (must be ``LpDistance(p=2, power=1, normalize_embeddings=True)``, the
            default), ``reducer`` (default ``MeanReducer()``), ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(AngularLoss(alpha=40)(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.1237
    """

    def __init__(self, alpha: float = 40, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "alpha", alpha, low=0, high=90, high_inclusive=False)
        distance = self.distance
        rule = "LpDistance(p=2, power=1, normalize_embeddings=True): the angles are between unit vectors"
        if not isinstance(distance, LpDistance):
            raise TypeError(message(name, "distance", rule, Described(type(distance).__name__)))
        if distance.p != 2 or distance.power != 1 or not distance.normalize_embeddings:
            got = (
                f"LpDistance(p={distance.p}, power={distance.power}, "
                f"normalize_embeddings={distance.normalize_embeddings})"
            )
            raise ValueError(message(name, "distance", rule, Described(got)))
        self.alpha = alpha

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        if labels is None or ref_labels is None:
            raise ValueError(
                message(
                    type(self).__name__,
                    "labels",
                    "given (the negatives are every sample of another class, even with an `indices_tuple`)",
                    None,
                )
            )
        if indices_tuple is None:
            positive, negative = label_masks(labels, ref_labels)
            a, p = torch.nonzero(positive, as_tuple=True)
            has_negative = bool(negative.any())
        else:
            a, p, a_neg, _ = convert_to_pairs(indices_tuple, labels, ref_labels)
            has_negative = a_neg.numel() > 0
        if a.numel() == 0 or not has_negative:
            return {"loss": Terms(embeddings.new_zeros(0), empty_index(embeddings.device), TermKind.POS_PAIR)}
        if indices_tuple is None:
            values = self._pair_values(embeddings, ref_emb, a, p, labels, ref_labels)
        else:
            # A miner may list a positive pair many times (once per triplet): score each distinct pair once.
            fused = fused_reduction(self.reducer)
            if fused is not None:
                # ... and weigh it by its count, instead of repeating its value (tens of millions of terms).
                a_unique, p_unique, counts = _counted_pairs(a, p, embeddings.shape[0], ref_emb.shape[0])
                values = self._pair_values(embeddings, ref_emb, a_unique, p_unique, labels, ref_labels)
                return {"loss": Terms.reduced(reduce_repeated(values, counts, fused))}
            a_unique, p_unique, inverse = _distinct_pairs(a, p, embeddings.shape[0], ref_emb.shape[0])
            values = self._pair_values(embeddings, ref_emb, a_unique, p_unique, labels, ref_labels)
            values = values.index_select(0, inverse)  # backward: one index_add, fast for millions of pairs
        return {"loss": Terms(values, a, TermKind.POS_PAIR)}

    def _pair_values(
        self, embeddings: Tensor, ref_emb: Tensor, a: Tensor, p: Tensor, labels: Tensor, ref_labels: Tensor
    ) -> Tensor:
        """``log(1 + sum_n exp(f(a, p, n)))`` for each pair."""
        query = self.distance.normalize(embeddings)
        ref = query if ref_emb is embeddings else self.distance.normalize(ref_emb)
        sq_tan = math.tan(math.radians(self.alpha)) ** 2
        anchors, positives = query[a], ref[p]
        # f = 4 t (x_a + x_p)^T x_n - 2 (1 + t) x_a^T x_p: a centre term per (pair, negative), a bias per pair
        bias = (anchors * positives).sum(dim=1) * (-2.0 * (1.0 + sq_tan))
        return _log1p_sum_exp_rows(anchors + positives, bias, ref, 4.0 * sq_tan, labels[a], ref_labels)


def _distinct_pairs(a: Tensor, p: Tensor, num_query: int, num_ref: int) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct pairs ``(a, p)`` in row-major order, and for each given pair the index of its distinct pair."""
    keys = a * num_ref + p
    cells = num_query * num_ref
    if keys.numel() * 8 < cells:
        unique, inverse = torch.unique(keys, return_inverse=True)
        return unique // num_ref, unique % num_ref, inverse
    # Many pairs for the matrix size: mark the cells instead of sorting the (possibly tens of millions of) keys.
    seen = torch.zeros(cells, dtype=torch.bool, device=keys.device)
    seen[keys] = True
    unique = torch.nonzero(seen).squeeze(1)
    position = torch.cumsum(seen, dim=0, dtype=torch.int32 if cells < 2**31 else torch.int64) - 1
    return unique // num_ref, unique % num_ref, position[keys].long()


def _counted_pairs(a: Tensor, p: Tensor, num_query: int, num_ref: int) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct pairs ``(a, p)`` in row-major order and how many times each is listed."""
    keys = a * num_ref
    keys += p
    if keys.numel() * 8 < num_query * num_ref:
        unique, counts = torch.unique(keys, return_counts=True)
    else:
        counts = torch.bincount(keys, minlength=num_query * num_ref)
        unique = torch.nonzero(counts).squeeze(1)
        counts = counts[unique]
    return unique // num_ref, unique % num_ref, counts


# Elements of one (pairs x reference) block: bounds the memory of the log-sum-exp whatever the batch size.
_CHUNK_ELEMENTS = 1 << 24


def _log1p_sum_exp_rows(
    centres: Tensor, bias: Tensor, ref: Tensor, scale: float, row_labels: Tensor, ref_labels: Tensor
) -> Tensor:
    """``log(1 + sum_{n: ref_labels[n] != row_labels[i]} exp(scale * centres[i] . ref[n] + bias[i]))`` per row.

    Equal to the plain autograd expression (``addmm``, mask, ``logsumexp``), but computed over blocks of rows
    with a hand-written backward that recomputes each block: memory is one block, not a (pairs x reference)
    matrix and its softmax.
    """
    return _Log1pSumExpRows.apply(centres, bias, ref, scale, row_labels, ref_labels)


def _row_blocks(num_rows: int, num_cols: int) -> range:
    return range(0, num_rows, max(1, _CHUNK_ELEMENTS // max(num_cols, 1)))


def _block_logits(
    centres: Tensor, bias: Tensor, ref: Tensor, scale: float, row_labels: Tensor, ref_labels: Tensor
) -> Tensor:
    logits = torch.addmm(bias.unsqueeze(1), centres, ref.T, alpha=scale)
    return logits.masked_fill_(row_labels.unsqueeze(1) == ref_labels.unsqueeze(0), float("-inf"))


class _Log1pSumExpRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, centres: Tensor, bias: Tensor, ref: Tensor, scale: float, row_labels: Tensor, ref_labels: Tensor
    ) -> Tensor:
        out = centres.new_empty(centres.shape[0])
        step = _row_blocks(centres.shape[0], ref.shape[0]).step
        for start in _row_blocks(centres.shape[0], ref.shape[0]):
            rows = slice(start, start + step)
            logits = _block_logits(centres[rows], bias[rows], ref, scale, row_labels[rows], ref_labels)
            # the "1 +" is exp(0): shifting by max(0, row max) keeps every exponent <= 0, and a row without
            # any kept entry (all -inf) gives log(1) = 0 with no NaN
            shift = logits.amax(dim=1).clamp(min=0)
            total = logits.sub_(shift.unsqueeze(1)).exp_().sum(dim=1) + torch.exp(-shift)
            out[rows] = shift + torch.log(total)
        ctx.save_for_backward(centres, bias, ref, row_labels, ref_labels, out)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        centres, bias, ref, row_labels, ref_labels, out = ctx.saved_tensors
        scale = ctx.scale
        grad_centres = torch.empty_like(centres)
        grad_ref = torch.zeros_like(ref)
        step = _row_blocks(centres.shape[0], ref.shape[0]).step
        for start in _row_blocks(centres.shape[0], ref.shape[0]):
            rows = slice(start, start + step)
            logits = _block_logits(centres[rows], bias[rows], ref, scale, row_labels[rows], ref_labels)
            # d out_i / d logit_in = softmax weight exp(logit_in - out_i) (0 for dropped entries)
            weights = logits.sub_(out[rows].unsqueeze(1)).exp_().mul_(grad[rows].unsqueeze(1))
            grad_centres[rows] = torch.mm(weights, ref).mul_(scale)
            grad_ref.addmm_(weights.T, centres[rows], alpha=scale)
        # the weights of a row sum to 1 - exp(-out): all but the "1 +" term's share
        grad_bias = grad * -torch.expm1(-out)
        return grad_centres, grad_bias, grad_ref, None, None, None
