"""Smooth-AP: average precision with sigmoid-relaxed ranks (Brown et al., 2020)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import CosineSimilarity
from ..indices import ref_is_query
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import miner_weights

__all__ = ["SmoothAPLoss", "row_lists", "soft_rank_sums"]

# Elements per temporary (pairs x columns) block: a few MiB, whatever the batch size.
_BLOCK_ELEMENTS = 1 << 22

Columns = tuple[Tensor, Tensor] | Tensor | None


def row_lists(rows: Tensor, cols: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """Row-major ``(rows, cols)`` pairs as a padded ``(num_rows, longest)`` column table and its validity mask."""
    counts = torch.bincount(rows, minlength=num_rows)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    table = torch.zeros(num_rows, width, dtype=torch.long, device=rows.device)
    valid = torch.zeros(num_rows, width, dtype=torch.bool, device=rows.device)
    table[rows, slot] = cols
    valid[rows, slot] = True
    return table, valid


def _block_scores(scores: Tensor, table: Tensor | None, r: Tensor, anchor: Tensor) -> Tensor:
    """``sigmoid(scores[r, j] - anchor)`` for the columns ``j`` of each pair's row (all, or the row's table)."""
    block = scores.index_select(0, r) if table is None else scores.gather(1, table).index_select(0, r)
    return block.sub_(anchor.unsqueeze(1)).sigmoid_()


class _SoftRankSums(torch.autograd.Function):
    """Sigmoid-relaxed counts of the items scored above an item, for a list of (query, item) pairs.

    ``out[k] = sum_j w[rows[k], j] * sigmoid(scores[rows[k], j] - scores[rows[k], cols[k]])`` over every column
    ``j`` (``columns=None``), over the columns of a boolean ``(query x reference)`` mask, or over a per-row
    column table ``(table, valid)`` (for small sets such as a query's positives). The pair's own column, when
    included, contributes ``sigmoid(0) = 1/2`` and nothing to the gradient. This is the ``(pairs x reference)``
    slice of the ``(batch x batch x batch)`` sigmoid tensor of ranking losses, evaluated over blocks of pairs
    forward and again backward, so only ``scores``, its gradient and one block are ever held.
    """

    @staticmethod
    def forward(ctx: Any, scores: Tensor, rows: Tensor, cols: Tensor, columns: Columns) -> Tensor:  # type: ignore[override]
        table, weight = _unpack(columns)
        out = scores.new_empty(rows.numel())
        anchors = scores[rows, cols]
        step = max(1, _BLOCK_ELEMENTS // max(scores.shape[1] if table is None else table.shape[1], 1))
        for start in range(0, rows.numel(), step):
            r = rows[start : start + step]
            sig = _block_scores(scores, table, r, anchors[start : start + step])
            if weight is not None:
                sig.mul_(weight.index_select(0, r))
            out[start : start + step] = sig.sum(1)
        ctx.save_for_backward(scores, rows, cols, anchors)
        ctx.columns = columns
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        scores, rows, cols, anchors = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        table, weight = _unpack(ctx.columns)
        num_cols = scores.shape[1]
        grad = scores.new_zeros(scores.shape)
        flat = grad.view(-1)
        step = max(1, _BLOCK_ELEMENTS // max(num_cols if table is None else table.shape[1], 1))
        for start in range(0, rows.numel(), step):
            r, c = rows[start : start + step], cols[start : start + step]
            sig = _block_scores(scores, table, r, anchors[start : start + step])
            g = grad_out[start : start + step].unsqueeze(1)
            g = g.expand_as(sig) if weight is None else g * weight.index_select(0, r)
            slope = torch.ops.aten.sigmoid_backward(g, sig)
            # d/d scores[r, j] is +slope[j]; d/d scores[r, c] is minus the sum of the slopes (its own cancels)
            if table is None:
                grad.index_add_(0, r, slope)
            else:
                flat.index_add_(0, (table.index_select(0, r) + (r * num_cols).unsqueeze(1)).view(-1), slope.view(-1))
            flat.index_add_(0, r * num_cols + c, -slope.sum(1))
        return grad, None, None, None


def _unpack(columns: Columns) -> tuple[Tensor | None, Tensor | None]:
    """``(table, weight)``: a column table (or None for all columns) and per-entry weights (or None)."""
    if columns is None:
        return None, None
    if isinstance(columns, Tensor):
        return None, columns
    return columns[0], columns[1]


def soft_rank_sums(scores: Tensor, rows: Tensor, cols: Tensor, columns: Columns = None) -> Tensor:
    """Per pair ``(rows[k], cols[k])``: ``sum_j sigmoid(scores[rows[k], j] - scores[rows[k], cols[k]])`` over all
    columns, a boolean mask's columns, or a ``(table, valid)`` column table (see ``_SoftRankSums``)."""
    return _SoftRankSums.apply(scores, rows, cols, columns)


class SmoothAPLoss(BaseMetricLossFunction):
    """Smooth-AP (Brown, Xie, Kalogeiton and Zisserman, 2020, arXiv:2007.12163).

    Average precision of a query ``q`` over its retrieval set ``Omega`` with positives ``P``, with every rank
    relaxed by a sigmoid of temperature ``tau`` applied to similarity differences ``D_ij = s_qj - s_qi``:
    ``AP_q = 1/|P| sum_{i in P} (1 + sum_{j in P, j != i} G(D_ij)) / (1 + sum_{j in Omega, j != i} G(D_ij))``
    with ``G(x) = sigmoid(x / tau)``; each query contributes ``1 - AP_q`` and the default reducer averages them.

    When the batch is its own reference, the retrieval set is the whole batch *including the query*, which
    then counts as one of its own positives, as in the authors' implementation and pytorch-metric-learning.
    With ``ref_emb``/``ref_labels`` (which pytorch-metric-learning rejects) the retrieval set is the reference;
    queries without a positive there contribute nothing. With ``indices_tuple``, as in pytorch-metric-learning,
    the miner only weights the queries (see :class:`~dmlkit.losses.fast_ap.FastAPLoss`).

    Unlike pytorch-metric-learning, classes may have different sizes and the batch may be in any order (it
    requires equal class sizes and, in fact, treats consecutive blocks of ``batch / samples_per_class``
    elements as the classes, so it is correct only for sorted labels with as many samples per class as
    classes). The ``O(batch^3)`` sigmoids are evaluated in blocks of (query, positive) pairs against the
    reference set, forward and backward, so memory stays ``O(batch * reference)`` and time
    ``O(positive pairs * reference)``.

    Args:
        temperature: the sigmoid's temperature ``tau``, ``> 0``; smaller is closer to the true ranks.
        **kwargs: ``distance`` (a ``CosineSimilarity``, the default), ``reducer``, ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(SmoothAPLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0
    """

    default_distance = CosineSimilarity
    required_distance = CosineSimilarity

    def __init__(self, temperature: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "temperature", temperature, low=0, low_inclusive=False)
        self.temperature = temperature

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        if labels is None:
            raise ValueError(message(type(self).__name__, "labels", "given (queries are ranked by label)", None))
        batch_is_ref = ref_is_query(labels, ref_labels)
        reference = labels if ref_labels is None else ref_labels
        # Same label, the query itself included when the batch is its own reference.
        positive = labels.unsqueeze(1) == reference.unsqueeze(0)
        num_pos = positive.sum(1)
        queries = torch.nonzero(num_pos > 0).flatten()
        if queries.numel() == 0:
            return {"ap_loss": Terms(embeddings.new_zeros(0), queries, TermKind.ELEMENT)}
        scores = self.distance(embeddings, ref_emb) / self.temperature
        rows, cols = torch.nonzero(positive, as_tuple=True)
        # Both sums include the item itself (sigmoid(0) = 1/2); the ranks count it once, as "1 +".
        above_all = soft_rank_sums(scores, rows, cols)
        above_pos = soft_rank_sums(scores, rows, cols, row_lists(rows, cols, positive.shape[0]))
        precision = (0.5 + above_pos) / (0.5 + above_all)
        ap = scores.new_zeros(labels.shape[0]).index_add_(0, rows, precision)[queries]
        values = 1 - ap / num_pos[queries].to(ap.dtype)
        weights = miner_weights(indices_tuple, labels.shape[0], values.dtype, values.device, not batch_is_ref)
        if weights is not None:
            values = values * weights[queries]
        return {"ap_loss": Terms(values, queries, TermKind.ELEMENT)}
