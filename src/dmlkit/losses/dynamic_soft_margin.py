"""Dynamic soft margin: triplet differences weighted by their running CDF (Zhang and Rusinkiewicz, 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import LpDistance
from ..indices import label_masks
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .functional import pair_values

__all__ = ["DynamicSoftMarginLoss"]


class DynamicSoftMarginLoss(BaseMetricLossFunction):
    """Dynamic soft margin loss (Zhang and Rusinkiewicz, 2019, "Learning Local Descriptors with a CDF-Based
    Dynamic Soft Margin", ICCV).

    Each triplet's signed distance to the decision boundary ``x = d(a, p) - d(a, n)`` is weighted by the
    cumulative distribution function ``F`` of ``x`` over the triplets seen so far, and the loss is the mean of
    ``F(x) * x`` with ``F`` held constant, so that each triplet's gradient is ``F(x)``: a soft margin that
    adapts to how hard the triplets currently are, instead of a fixed hinge.

    ``F`` comes from a histogram over ``num_bins + 1`` nodes spanning ``[min_val, -min_val]`` (every ``x``
    shares its mass linearly between its two nearest nodes; values outside the range are clamped to it).
    The histogram is a running average, ``hist = (1 - momentum) * hist + momentum * batch_hist`` with
    ``batch_hist`` normalised, updated on every call before the loss is computed (the first call takes the
    batch's histogram as is). It is the buffer ``hist_`` of this instance: it is saved in ``state_dict()``,
    moves with ``.to()``, and is never part of the autograd graph. ``F(x)`` is the cumulative histogram at the
    node just below ``x``.

    With labels, the triplets are every valid triplet (or a miner's triplets, or triplets from its pairs).
    Without labels (descriptor matching), ``embeddings[i]`` and ``ref_emb[i]`` are a matching pair: ``x_i`` is
    its distance minus the distance to the hardest non-matching descriptor in row ``i`` or column ``i``.

    Differences from pytorch-metric-learning, whose values agree wherever it runs (on a first call):
    (1) it adds the batch's raw counts to ``(1 - momentum) * hist`` before normalising, so the batch outweighs
    the history whatever ``momentum`` is; here, as in the authors' implementation, the batch's histogram is
    normalised first; (2) it keeps the histogram in the autograd graph, so the second ``backward()`` of a
    training loop fails; (3) its histogram has only ``num_bins`` nodes, so a triplet with
    ``x >= -min_val - 2 |min_val| / num_bins`` (or ``x < min_val``) indexes past it.
    All triplets are scored exactly in ``O(batch * reference)`` time and memory (see ``_all_triplet_terms``),
    never as a list of ``batch^3`` triplets.

    Args:
        min_val: lower end of the histogram's range ``[min_val, -min_val]``, ``< 0``.
        num_bins: number of histogram intervals, a positive integer.
        momentum: weight of the current batch in the running histogram, in ``[0, 1]``.
        **kwargs: ``distance`` (an ``LpDistance`` with ``p=2`` on unit vectors, the default), ``reducer``,
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> loss_fn = DynamicSoftMarginLoss()
        >>> emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> round(loss_fn(emb, torch.tensor([0, 0, 1, 1])).item(), 4)
        -0.054
        >>> tuple(loss_fn.state_dict()["hist_"].shape)
        (11,)
    """

    requires_labels = False

    hist_: Tensor

    def __init__(self, min_val: float = -2.0, num_bins: int = 10, momentum: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "min_val", min_val, high=0, high_inclusive=False)
        check_range(name, "num_bins", num_bins, low=1, integer=True)
        check_range(name, "momentum", momentum, low=0, high=1)
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
        self.min_val = min_val
        self.num_bins = int(num_bins)
        self.delta = 2 * abs(min_val) / num_bins
        self.momentum = momentum
        self.register_buffer("hist_", torch.zeros(self.num_bins + 1))

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        if self.hist_.dtype != embeddings.dtype or self.hist_.device != embeddings.device:
            self.hist_ = self.hist_.to(device=embeddings.device, dtype=embeddings.dtype)
        mat = self.distance(embeddings, ref_emb)
        if labels is None and indices_tuple is None:
            x = self._matching_pair_differences(mat)
        elif indices_tuple is None:
            return self._all_triplet_terms(mat, labels, ref_labels)  # type: ignore[arg-type]
        else:
            a, p, n = self.triplets(labels, indices_tuple, ref_labels)
            x = pair_values(mat, a, p) - pair_values(mat, a, n)
        if x.numel() == 0:
            return {"loss": Terms(x, torch.zeros(0, dtype=torch.long, device=x.device), TermKind.ELEMENT)}
        with torch.no_grad():
            self._update(self._batch_histogram(x))
            weights = self._cdf_at(x)
        return {"loss": Terms.reduced((weights * x).mean())}

    # ------------------------------------------------------------------------------------------ statistics

    def _positions(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Lower node index and fraction of the way to the next node (values clamped to the range)."""
        pos = ((x - self.min_val) / self.delta).clamp_(0, self.num_bins)
        low = pos.floor().clamp_(max=self.num_bins - 1)
        return low.long(), pos - low

    def _batch_histogram(self, x: Tensor) -> Tensor:
        low, frac = self._positions(x.reshape(-1))
        hist = x.new_zeros(self.num_bins + 1)
        hist.index_add_(0, low, 1 - frac)
        hist.index_add_(0, low + 1, frac)
        return hist

    def _update(self, counts: Tensor) -> None:
        batch = counts / counts.sum()
        momentum = self.momentum if bool(self.hist_.sum() != 0) else 1.0
        self.hist_ = (1 - momentum) * self.hist_ + momentum * batch

    def _cdf_at(self, x: Tensor) -> Tensor:
        cdf = torch.cumsum(self.hist_ / self.hist_.sum(), 0)
        low, _ = self._positions(x.detach())
        return cdf[low]

    # ------------------------------------------------------------------------------------------ triplets

    @staticmethod
    def _matching_pair_differences(mat: Tensor) -> Tensor:
        """``d(i, i)`` minus the smallest ``d(i, j)`` or ``d(j, i)`` with ``j != i``, for square ``mat``."""
        size = mat.shape[0]
        if mat.shape[1] != size:
            raise ValueError(
                message(
                    "DynamicSoftMarginLoss",
                    "ref_emb",
                    f"of the same length as `embeddings` ({size}) when no labels are given "
                    "(row i of each is a matching pair)",
                    mat.shape[1],
                )
            )
        eye = torch.eye(size, dtype=torch.bool, device=mat.device)
        others = mat.masked_fill(eye, float("inf"))
        hardest = torch.minimum(others.amin(0), others.amin(1))
        return mat.diagonal() - hardest

    def _all_triplet_terms(self, mat: Tensor, labels: Tensor, ref_labels: Tensor | None) -> Mapping[str, Terms]:
        """Every triplet, without listing them.

        With the CDF weights held constant, ``mean_t F(x_t) (d(a, p) - d(a, n))`` equals
        ``(sum W+ * d(a, p) - sum W- * d(a, n)) / T``, where ``W+[a, p]`` (``W-[a, n]``) sums the weights of the
        triplets through that positive (negative) pair. For a positive pair ``(a, p)``, the node boundaries of
        ``x = d(a, p) - d(a, n)`` are thresholds on ``d(a, n)``; an anchor has few of them (its positives times
        the nodes), so they are sorted per anchor and every negative is assigned to its interval between
        consecutive thresholds with one ``searchsorted``. Per-interval counts and sums then give each pair's
        exact histogram mass and weight ``W+``, and each interval's ``W-`` (a difference array over intervals).
        Time and memory ``O(batch * reference)``.
        """
        positive, negative = label_masks(labels, ref_labels)
        anchors, positives = torch.nonzero(positive, as_tuple=True)
        num_neg = negative.sum(1)
        total = int(num_neg[anchors].sum()) if anchors.numel() else 0
        if total == 0:
            empty = torch.zeros(0, dtype=torch.long, device=mat.device)
            return {"loss": Terms(mat.new_zeros(0), empty, TermKind.ELEMENT)}
        num_rows = mat.shape[0]
        last = self.num_bins
        device = mat.device
        with torch.no_grad():
            dist = mat.detach()
            # Node l's boundary for pair (a, p): x >= min_val + l * delta  <=>  d(a, n) / delta <= c - l.
            c = (dist[anchors, positives] - self.min_val) / self.delta
            bounds = c.unsqueeze(1) - torch.arange(last + 1, device=device, dtype=c.dtype)
            thresholds, rank = self._sorted_thresholds(bounds, anchors, num_rows)
            width = thresholds.shape[1]
            scaled = dist / self.delta
            # interval of each negative: how many of its anchor's thresholds lie below it
            interval = torch.searchsorted(thresholds, scaled.masked_fill(~negative, float("inf")))
            is_neg = negative.to(dist.dtype)
            counts = dist.new_zeros(num_rows, width + 1).scatter_add_(1, interval, is_neg).cumsum(1)
            sums = dist.new_zeros(num_rows, width + 1).scatter_add_(1, interval, scaled.mul_(is_neg)).cumsum(1)
            del scaled, is_neg
            at_least = counts[anchors.unsqueeze(1), rank]  # negatives with u >= l, for l = 0..num_bins
            below_bound = sums[anchors.unsqueeze(1), rank]  # and the sum of their d / delta
            inside = at_least[:, :-1] - at_least[:, 1:]  # negatives with l <= u < l + 1
            frac = inside * (c.unsqueeze(1) - torch.arange(last, device=device)) - (
                below_bound[:, :-1] - below_bound[:, 1:]
            )  # sum of (u - l) over them
            below = num_neg[anchors].to(dist.dtype) - at_least[:, 0]  # u < 0: all at node 0
            above = at_least[:, last]  # u >= num_bins: all at the last node
            mass = dist.new_zeros(anchors.shape[0], last + 1)
            mass[:, :last] += inside - frac
            mass[:, 1:] += frac
            mass[:, 0] += below
            mass[:, last] += above
            self._update(mass.sum(0))
            cdf = torch.cumsum(self.hist_ / self.hist_.sum(), 0)
            # F(x) is the CDF at bin min(floor(u), num_bins - 1) of the clamped u
            in_bin = inside.clone()
            in_bin[:, 0] += below
            in_bin[:, last - 1] += above
            pos_weight = (in_bin * cdf[:last]).sum(1)
            # Over an anchor's intervals, pair k weighs cdf[L-1] up to its threshold for u >= L-1, then steps
            # down to cdf[l-1] past its threshold for u >= l, ... (a step function: differences, then a cumsum).
            steps = dist.new_zeros(num_rows, width + 2)
            steps[:, 0] = torch.bincount(anchors, minlength=num_rows).to(dist.dtype) * cdf[last - 1]
            if last > 1:
                where = (anchors.unsqueeze(1) * (width + 2) + rank[:, 1:last] + 1).reshape(-1)
                change = (cdf[: last - 1] - cdf[1:last]).expand(anchors.shape[0], -1).reshape(-1)
                steps.view(-1).index_add_(0, where, change)
            neg_weight = steps.cumsum(1).gather(1, interval).masked_fill_(~negative, 0.0)
        loss = (pos_weight * pair_values(mat, anchors, positives)).sum() - (neg_weight * mat).sum()
        return {"loss": Terms.reduced(loss / total)}

    @staticmethod
    def _sorted_thresholds(bounds: Tensor, anchors: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
        """Each anchor's thresholds (its pairs' rows of ``bounds``) sorted, padded with +inf, and the position of
        every ``bounds[k, l]`` in its anchor's sorted row (pairs are in row-major order)."""
        counts = torch.bincount(anchors, minlength=num_rows)
        per_row = int(counts.max())
        slot = torch.arange(anchors.shape[0], device=anchors.device) - (torch.cumsum(counts, 0) - counts)[anchors]
        grid = bounds.new_full((num_rows, per_row, bounds.shape[1]), float("inf"))
        grid[anchors, slot] = bounds
        thresholds, order = grid.view(num_rows, -1).sort(1)
        ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
        position = torch.empty_like(order).scatter_(1, order, ranks)
        return thresholds, position.view(num_rows, per_row, -1)[anchors, slot]
