"""Distance-weighted negative sampling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_embeddings, check_labels, check_range, check_reference, check_type, message
from ..indices import label_masks
from ..types import Triplets
from .angular import check_unit_sphere_euclidean
from .base import BaseMiner

__all__ = ["DistanceWeightedMiner"]

#: matrix entries per row block of sampling weights.
BLOCK_CELLS = 1 << 22


class DistanceWeightedMiner(BaseMiner):
    """Samples negatives with probability inversely proportional to the density of their distance (Wu,
    Manmatha, Smola and Krähenbühl, 2017, "Sampling Matters in Deep Embedding Learning", arXiv:1706.07567).

    Pairwise distances between points spread uniformly on the unit sphere in ``R^k`` follow the density
    ``q(d) ∝ d^(k-2) (1 - d^2/4)^((k-3)/2)`` (Sec. 4), so sampling negatives uniformly mostly yields
    distances near ``sqrt(2)``. Sampling ``n`` with probability ``∝ 1/q(d(a, n))`` spreads the sampled
    distances instead. As in the paper, the distance is clipped below at ``cutoff`` (bounding the weights
    of very close negatives, which are noisy) and negatives at ``d >= nonzero_loss_cutoff``, which give no
    loss, get weight 0.

    Every positive pair (a, p) (row-major order) receives one negative drawn from its anchor's weights;
    anchors whose negatives all have weight 0 are skipped. :meth:`sampling_weights` returns the
    per-anchor probabilities.

    Args:
        cutoff: lower clip of the distance, ``>= 0``.
        nonzero_loss_cutoff: negatives at this distance or farther are never drawn; ``> cutoff``.
        generator: the random source for the draws (default: torch's global one).
        **kwargs: ``distance``, which must be ``LpDistance(p=2, power=1, normalize_embeddings=True)`` (the
            default), as the density assumes points on the unit sphere.

    Example:
        >>> emb = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)))
        >>> miner = DistanceWeightedMiner(generator=torch.Generator().manual_seed(1))
        >>> a, p, n = miner(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
        >>> a.tolist(), p.tolist()
        ([0, 1, 2, 3, 4, 5, 6, 7], [1, 0, 3, 2, 5, 4, 7, 6])
        >>> bool((n // 2 != a // 2).all())
        True
    """

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        check_range(name, "cutoff", cutoff, low=0)
        check_range(name, "nonzero_loss_cutoff", nonzero_loss_cutoff)
        if nonzero_loss_cutoff <= cutoff:
            raise ValueError(message(name, "nonzero_loss_cutoff", f"> `cutoff` ({cutoff})", nonzero_loss_cutoff))
        if generator is not None:
            check_type(name, "generator", generator, torch.Generator, "a torch.Generator or None")
        check_unit_sphere_euclidean(name, self.distance)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.generator = generator

    def sampling_weights(
        self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None = None, ref_labels: Tensor | None = None
    ) -> Tensor:
        """The ``(query, reference)`` probabilities of drawing each reference element as a negative.

        Each row sums to 1, or is all zeros when the anchor has no negative that may be drawn.
        """
        name = type(self).__name__
        check_embeddings(name, embeddings)
        check_labels(name, labels, embeddings.shape[0])
        check_reference(name, embeddings, labels, ref_emb, ref_labels)
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        with torch.no_grad():
            return self._weights(self.distance(embeddings, ref_emb), labels, ref_labels, embeddings.shape[1])

    def _weights(self, mat: Tensor, labels: Tensor, ref_labels: Tensor | None, dim: int) -> Tensor:
        # half precision cannot hold the log-weights' range (about dim * 0.7); weights come in float32 then
        d = mat.float() if mat.dtype in (torch.float16, torch.bfloat16) else mat.clone()
        d.clamp_(min=self.cutoff)
        _, negative = label_masks(labels, ref_labels)
        allowed = negative.logical_and_(d < self.nonzero_loss_cutoff)
        # log(1 / q(d)) up to a constant, computed in place: (2 - dim) log d - (dim - 3) / 2 log(1 - d^2 / 4)
        log_w = d.square().mul_(-0.25).add_(1.0).log_().mul_(-(dim - 3.0) / 2.0)
        log_w.add_(d.log_().mul_(2.0 - dim))
        allowed.logical_and_(torch.isfinite(log_w))
        log_w.masked_fill_(~allowed, -math.inf)
        # normalise per row (a softmax): a shared maximum would underflow whole rows to zero
        return torch.softmax(log_w, dim=1).nan_to_num_(0.0)

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Triplets:
        mat = self.distance(embeddings, ref_emb)
        positive, _ = label_masks(labels, ref_labels)
        anchors, positives = torch.nonzero(positive, as_tuple=True)
        del positive
        device = embeddings.device
        # one draw per positive pair: each anchor draws as many negatives as it has positive pairs. The weights
        # are built and drawn from in row blocks, so only one block of them is held at a time.
        counts = torch.bincount(anchors, minlength=mat.shape[0])
        negatives = torch.empty_like(anchors)
        usable = torch.zeros(mat.shape[0], dtype=torch.bool, device=device)
        starts = torch.cumsum(counts, 0) - counts
        gen_device = self.generator.device if self.generator is not None else device
        step = max(1, BLOCK_CELLS // max(1, mat.shape[1]))
        for first in range(0, mat.shape[0], step):
            last = min(first + step, mat.shape[0])
            block_counts = counts[first:last]
            if not bool(block_counts.any()):
                continue
            weights = self._weights(mat[first:last], labels[first:last], ref_labels, embeddings.shape[1])
            rows = torch.nonzero((block_counts > 0) & (weights.sum(dim=1) > 0)).flatten()
            if rows.numel() == 0:
                continue
            usable[rows + first] = True
            draws = torch.multinomial(
                weights[rows].to(gen_device), int(block_counts.max()), replacement=True, generator=self.generator
            ).to(device)
            # row r's k-th positive pair takes its k-th draw
            row_anchors = rows + first
            pair_index = starts[row_anchors].unsqueeze(1) + torch.arange(draws.shape[1], device=device)
            valid = torch.arange(draws.shape[1], device=device) < counts[row_anchors].unsqueeze(1)
            negatives[pair_index[valid]] = draws[valid]
        keep = usable[anchors]
        if not bool(keep.any()):
            empty = torch.empty(0, dtype=torch.long, device=device)
            return Triplets(empty, empty.clone(), empty.clone())
        return Triplets(anchors[keep], positives[keep], negatives[keep])
