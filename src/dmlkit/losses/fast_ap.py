"""FastAP: average precision from soft distance histograms (Cakir et al., 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import LpDistance
from ..indices import label_masks, ref_is_query
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import miner_weights, pair_values

__all__ = ["FastAPLoss", "row_histograms", "sparse_histograms"]

# Elements per temporary (rows x reference) block in the chunked histogram: a few MiB, whatever the batch.
_BLOCK_ELEMENTS = 1 << 22


def _row_step(num_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(num_cols, 1))


def _node_positions(block: Tensor, offset: float, delta: float, last: int) -> tuple[Tensor, Tensor]:
    """Lower node index (long) and the fraction of the way to the next node, for values clamped to the nodes."""
    x = ((block + offset) / delta).clamp_(0, last)
    low = x.long().clamp_(max=last - 1)  # truncation is floor for x >= 0
    return low, x.sub_(low)


def _compact_index_dtype(num_nodes: int) -> torch.dtype:
    return torch.uint8 if num_nodes <= 256 else torch.int16 if num_nodes <= 32768 else torch.int32


class _RowHistograms(torch.autograd.Function):
    """Per-row histograms of every entry of a matrix, with linear interpolation between ``num_nodes`` equally
    spaced nodes.

    ``out[q, k] = sum_j max(0, 1 - |values[q, j] + offset - k * delta| / delta)``: each value splits its unit mass
    between the two nodes around it; values beyond the end nodes (after ``offset``) count at the end node.
    Forward runs over blocks of rows and keeps only each entry's lower node in a compact integer type, so memory
    is ``O(values)`` (no ``(rows, columns, nodes)`` tensor); the gradient with respect to a value is
    ``(g[next node] - g[lower node]) / delta``.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, offset: float, delta: float, num_nodes: int) -> Tensor:  # type: ignore[override]
        num_rows, num_cols = values.shape
        out = values.new_zeros(num_rows, num_nodes)
        lower = torch.empty(values.shape, dtype=_compact_index_dtype(num_nodes), device=values.device)
        step = _row_step(num_cols)
        for start in range(0, num_rows, step):
            low, frac = _node_positions(values[start : start + step], offset, delta, num_nodes - 1)
            lower[start : start + step] = low
            target = out[start : start + step]
            target.scatter_add_(1, low + 1, frac)
            target.scatter_add_(1, low, frac.neg_().add_(1))
        ctx.save_for_backward(lower)
        ctx.delta = delta
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        (lower,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        # d(weight at lower node)/dx = -1/delta, d(weight at next node)/dx = +1/delta
        slope = (grad_out[:, 1:] - grad_out[:, :-1]) / ctx.delta
        grad = slope.new_empty(lower.shape)
        step = _row_step(lower.shape[1])
        for start in range(0, lower.shape[0], step):
            block = slice(start, start + step)
            torch.gather(slope[block], 1, lower[block].long(), out=grad[block])
        return grad, None, None, None


def row_histograms(values: Tensor, offset: float, delta: float, num_nodes: int) -> Tensor:
    """``(rows, num_nodes)`` linearly interpolated histograms of every entry of each row of ``values``."""
    return _RowHistograms.apply(values, offset, delta, num_nodes)


def sparse_histograms(
    values: Tensor, rows: Tensor | None, num_rows: int, offset: float, delta: float, num_nodes: int
) -> Tensor:
    """The same histograms for a list of ``values`` belonging to ``rows`` (``(num_rows, num_nodes)``), or one
    histogram of all of them when ``rows`` is None (``(num_nodes,)``); differentiable, ``O(len(values))``."""
    last = num_nodes - 1
    x = ((values + offset) / delta).clamp(0, last)
    low = x.detach().floor().clamp_(max=last - 1)
    frac = x - low
    index = low.long() if rows is None else rows * num_nodes + low.long()
    size = num_nodes if rows is None else num_rows * num_nodes
    out = values.new_zeros(size).index_add(0, index, 1 - frac).index_add(0, index + 1, frac)
    return out if rows is None else out.view(num_rows, num_nodes)


class FastAPLoss(BaseMetricLossFunction):
    """FastAP (Cakir, He, Xia, Kulis and Sclaroff, 2019, "Deep Metric Learning to Rank", CVPR).

    For each query, the distances to its positives and to its negatives are quantised into soft histograms
    ``h+`` and ``h-`` over ``num_bins + 1`` equally spaced nodes ``z_l = l * delta`` covering
    ``[0, 2 ** power]`` (the range of the ``power``-th power of Euclidean distances between unit vectors), each
    distance sharing its unit mass between its two nearest nodes (a triangular kernel of width ``delta``).
    With the cumulative counts ``H+ = cumsum(h+)`` and ``H = cumsum(h+ + h-)``, average precision is
    approximated by ``FastAP = sum_l h+_l H+_l / H_l / N+`` and each query with a positive contributes
    ``1 - FastAP``. The default reducer averages over those queries.

    The work is ``O(batch * reference)`` time and memory: one pass histograms every (query, reference) entry with
    ``scatter_add`` over blocks of rows, and the positives are histogrammed from their short list (negatives are
    the rest), never a ``(bins, batch, reference)`` tensor.

    With ``indices_tuple`` (a miner's output), every query is still ranked against the whole reference set; as
    in pytorch-metric-learning, the miner only weights the queries: a query's loss is multiplied by the number
    of times it occurs in the mined tuples divided by the largest such count (0 when it does not occur).
    Unlike pytorch-metric-learning, a reference set (``ref_emb``/``ref_labels``) is supported: queries are
    ranked against it, and the weights then count only the mined anchors.

    Args:
        num_bins: number of histogram intervals, a positive integer.
        **kwargs: ``distance`` (an ``LpDistance`` with ``p=2`` and ``normalize_embeddings=True``; the default
            squares it, ``power=2``), ``reducer``, ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(FastAPLoss()(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.0
    """

    def __init__(self, num_bins: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "num_bins", num_bins, low=1, integer=True)
        d = self.distance
        if not isinstance(d, LpDistance):
            raise TypeError(message(name, "distance", "an LpDistance (Euclidean on unit vectors)", type(d).__name__))
        if d.p != 2 or not d.normalize_embeddings:
            raise ValueError(
                message(
                    name,
                    "distance",
                    "an LpDistance with p=2 and normalize_embeddings=True",
                    f"p={d.p}, normalize_embeddings={d.normalize_embeddings}",
                )
            )
        self.num_bins = int(num_bins)
        self.num_edges = self.num_bins + 1

    def get_default_distance(self) -> LpDistance:
        return LpDistance(power=2)

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
        positive, _ = label_masks(labels, ref_labels)
        num_pos = positive.sum(1)
        valid = num_pos > 0
        queries = torch.nonzero(valid).flatten()
        if queries.numel() == 0:
            return {"loss": Terms(embeddings.new_zeros(0), queries, TermKind.ELEMENT)}
        dist = self.distance(embeddings, ref_emb)
        delta = 2.0**self.distance.power / self.num_bins
        num_rows = dist.shape[0]
        # One pass over every (query, reference) entry; the few positives (and self-pairs) are histogrammed apart.
        all_hist = row_histograms(dist, 0.0, delta, self.num_edges)
        rows, cols = torch.nonzero(positive, as_tuple=True)
        pos_hist = sparse_histograms(pair_values(dist, rows, cols), rows, num_rows, 0.0, delta, self.num_edges)
        batch_is_ref = ref_is_query(labels, ref_labels)
        if batch_is_ref:
            self_rows = torch.arange(num_rows, device=dist.device)
            all_hist = all_hist - sparse_histograms(dist.diagonal(), self_rows, num_rows, 0.0, delta, self.num_edges)
        cum_pos = pos_hist.cumsum(1)
        cum_all = all_hist.cumsum(1)  # positives and negatives: every retrieved item
        # Nodes holding no positive mass contribute nothing (and may have H = 0): keep them out of the division.
        has_pos = pos_hist > 0
        ratio = torch.where(has_pos, pos_hist * cum_pos / torch.where(has_pos, cum_all, 1.0), 0.0)
        fast_ap = ratio.sum(1)[queries] / num_pos[queries].to(ratio.dtype)
        values = 1 - fast_ap
        weights = miner_weights(indices_tuple, labels.shape[0], values.dtype, values.device, not batch_is_ref)
        if weights is not None:
            values = values * weights[queries]
        return {"loss": Terms(values, queries, TermKind.ELEMENT)}
