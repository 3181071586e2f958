"""Histogram loss: probability that a negative pair is more similar than a positive one (Ustinova and
Lempitsky, 2016)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range, message
from ..distances import CosineSimilarity, DotProductSimilarity
from ..indices import label_masks, ref_is_query
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction
from .fast_ap import row_histograms, sparse_histograms
from .functional import pair_values

__all__ = ["HistogramLoss"]


class HistogramLoss(BaseMetricLossFunction):
    """Histogram loss (Ustinova and Lempitsky, 2016, "Learning Deep Embeddings with Histogram Loss",
    arXiv:1611.00822).

    The similarities of the positive pairs and of the negative pairs are each summarised by a histogram
    over the nodes ``t_r = -1 + r * delta`` covering ``[-1, 1]``, every similarity sharing its mass linearly
    between its two nearest nodes; each histogram is divided by its number of pairs. The loss estimates the
    probability that a random negative pair is more similar than a random positive pair:
    ``sum_r h-_r * Phi+_r`` with ``Phi+`` the cumulative positive histogram. It is already reduced, so
    ``reducer`` does not apply.

    The pairs are those of the triplets (every triplet, or a miner's), each unordered pair counted once, as
    in pytorch-metric-learning: without a miner, every positive pair when the batch has two classes or more,
    and every negative pair one of whose elements has a positive. The histograms are filled with
    ``scatter_add``, the negatives in one pass over the similarity matrix (minus the few entries that are not
    negative pairs) and the positives from their list: ``O(pairs)`` work and ``O(batch^2)`` memory, never a
    (triplets) or (pairs x bins) tensor. With ``ref_emb``/``ref_labels`` (which pytorch-metric-learning
    rejects), pairs join a query to a reference element. Similarities are clamped to ``[-1, 1]``, so identical
    embeddings (similarity 1 up to rounding) are fine, where pytorch-metric-learning can index past its last
    bin; it also finds the bins in float32 (values then differ from the float64 definition by up to ~1e-6).

    Args:
        n_bins: number of histogram intervals on ``[-1, 1]``, a positive integer; 100 when neither ``n_bins``
            nor ``delta`` is given.
        delta: the interval width; when both are given, ``delta`` must equal ``2 / n_bins``.
        **kwargs: ``distance`` (a similarity in ``[-1, 1]``: ``CosineSimilarity``, the default), ``reducer``,
            ``embedding_regularizer``, ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> HistogramLoss(n_bins=10)(emb, torch.tensor([0, 0, 1, 1])).item()
        0.0
    """

    def __init__(self, n_bins: int | None = None, delta: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        if n_bins is not None:
            check_range(name, "n_bins", n_bins, low=1, integer=True)
        if delta is not None:
            check_range(name, "delta", delta, low=0, high=2, low_inclusive=False)
        if n_bins is not None and delta is not None and not math.isclose(delta, 2 / n_bins, rel_tol=1e-12):
            raise ValueError(message(name, "delta", f"2 / n_bins = {2 / n_bins!r} when both are given", delta))
        if delta is None:
            delta = 2 / (n_bins if n_bins is not None else 100)
        d = self.distance
        if not isinstance(d, DotProductSimilarity):
            raise TypeError(message(name, "distance", "a similarity in [-1, 1] (CosineSimilarity)", type(d).__name__))
        if not d.normalize_embeddings or d.power != 1:
            raise ValueError(
                message(
                    name,
                    "distance",
                    "a similarity in [-1, 1] (normalize_embeddings=True, power=1)",
                    f"normalize_embeddings={d.normalize_embeddings}, power={d.power}",
                )
            )
        self.delta = delta
        self.num_nodes = round(1 + 2 / delta)

    def get_default_distance(self) -> CosineSimilarity:
        return CosineSimilarity()

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        shape = (embeddings.shape[0], ref_emb.shape[0])
        batch_is_ref = labels is None or ref_is_query(labels, ref_labels)
        if indices_tuple is None:
            positive, negative = self._pairs_of_all_triplets(labels, ref_labels, batch_is_ref)  # type: ignore[arg-type]
        else:
            positive, negative = self._pairs_of_mined_triplets(labels, indices_tuple, ref_labels, shape, batch_is_ref)
        num_pos, num_neg = int(torch.count_nonzero(positive)), int(torch.count_nonzero(negative))
        if num_pos == 0 or num_neg == 0:
            empty = torch.zeros(0, dtype=torch.long, device=embeddings.device)
            return {"loss": Terms(embeddings.new_zeros(0), empty, TermKind.ELEMENT)}
        sims = self.distance(embeddings, ref_emb)
        pos_hist = self._histogram(sims, positive, num_pos)
        neg_hist = self._histogram(sims, negative, num_neg)
        pos_cdf = torch.cumsum(pos_hist / num_pos, 0)
        return {"loss": Terms.reduced((neg_hist / num_neg * pos_cdf).sum())}

    def _histogram(self, sims: Tensor, mask: Tensor, count: int) -> Tensor:
        """Histogram of the masked similarities: from their list when they are few, otherwise one pass over all
        entries minus the few left out."""
        if 2 * count <= mask.numel():
            rows, cols = torch.nonzero(mask, as_tuple=True)
            return sparse_histograms(pair_values(sims, rows, cols), None, 1, 1.0, self.delta, self.num_nodes)
        rows, cols = torch.nonzero(~mask, as_tuple=True)
        total = row_histograms(sims, 1.0, self.delta, self.num_nodes).sum(0)
        return total - sparse_histograms(pair_values(sims, rows, cols), None, 1, 1.0, self.delta, self.num_nodes)

    @staticmethod
    def _pairs_of_all_triplets(labels: Tensor, ref_labels: Tensor | None, batch_is_ref: bool) -> tuple[Tensor, Tensor]:
        """Masks of the (a, p) and (a, n) pairs of every triplet; symmetric when the batch is its own reference,
        so each unordered pair is counted twice in both the histogram and its count, which cancels."""
        positive, negative = label_masks(labels, ref_labels)
        has_pos = positive.any(1, keepdim=True)
        has_neg = negative.any(1, keepdim=True)
        if batch_is_ref:
            return positive & (has_neg | has_neg.T), negative & (has_pos | has_pos.T)
        return positive & has_neg, negative & has_pos

    def _pairs_of_mined_triplets(
        self,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...],
        ref_labels: Tensor | None,
        shape: tuple[int, int],
        batch_is_ref: bool,
    ) -> tuple[Tensor, Tensor]:
        """Masks of the distinct pairs of the mined triplets (of pairs sharing an anchor, if pairs were mined);
        unordered (stored as row <= column) when the batch is its own reference."""
        a, p, n = self.triplets(labels, indices_tuple, ref_labels)
        masks = []
        for other in (p, n):
            mask = torch.zeros(shape, dtype=torch.bool, device=a.device)
            rows, cols = (torch.minimum(a, other), torch.maximum(a, other)) if batch_is_ref else (a, other)
            mask[rows, cols] = True
            masks.append(mask)
        return masks[0], masks[1]
