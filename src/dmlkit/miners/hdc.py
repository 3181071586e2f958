"""Hard-aware pair filtering, one stage of a cascade."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import check_range
from ..indices import check_indices_tuple, convert_to_pairs, label_masks
from ..types import Pairs
from .base import BaseMiner

__all__ = ["HDCMiner"]


#: candidates sparser than one cell in this many are listed; denser ones are selected in place.
_SPARSE_RATIO = 8


def hardest_count(fraction: float, total: int) -> int:
    """``ceil(fraction * total)``, of the decimal fraction as written (``0.3`` of 10 is 3, not 4)."""
    return math.ceil(Fraction(str(float(fraction))) * total)


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest entry of ``values`` (1-based), as a 0-d tensor.

    On the CPU by numpy's introselect, which copies the values once; ``torch.kthvalue`` also allocates an int64
    index per entry (twice the memory of float32 values again).

    Example:
        >>> kth_smallest(torch.tensor([[3.0, 1.0], [2.0, 5.0]]), 2)
        tensor(2.)
    """
    flat = values.reshape(-1)
    if flat.device.type != "cpu":
        return torch.kthvalue(flat, k).values
    return torch.as_tensor(np.partition(flat.numpy(), k - 1)[k - 1])


def smallest(key: Tensor, k: int) -> Tensor:
    """Boolean mask (shaped like ``key``) of its ``k`` smallest entries; ``k`` must not exceed the number of
    finite entries. Among entries equal to the ``k``-th smallest, the earliest in row-major order are kept."""
    if k == 0:
        return torch.zeros_like(key, dtype=torch.bool)
    boundary = kth_smallest(key, k)
    keep = key < boundary
    ties = torch.eq(key, boundary).contiguous()  # row-major flat order below
    need = k - int(torch.count_nonzero(keep))
    if int(torch.count_nonzero(ties)) > need:
        # the tied entries are few: list them and drop all but the first ``need`` (no running count over ``key``)
        flat_ties = ties.view(-1)
        flat_ties[torch.nonzero(flat_ties).squeeze(1)[need:]] = False
    return keep.logical_or_(ties)


def keep_hardest(values: Tensor, fraction: float, largest: bool) -> Tensor:
    """Boolean mask of the ``ceil(fraction * len(values))`` largest (or smallest) values; earlier positions
    win ties at the cut."""
    k = hardest_count(fraction, values.numel())
    if k >= values.numel():
        return torch.ones_like(values, dtype=torch.bool)
    # negation is exact, so "largest" becomes "smallest" without changing any comparison
    return smallest(-values if largest else values, k)


class HDCMiner(BaseMiner):
    """Keeps the hardest fraction of the positive and of the negative pairs (Yuan, Yang and Zhang, 2017,
    "Hard-Aware Deeply Cascaded Embedding", arXiv:1611.05720).

    HDC trains a cascade of models of growing complexity; each stage passes on only the samples that are
    hard for it. One stage here: of the candidate pairs, keep the ``ceil(filter_percentage * count)``
    hardest positive pairs (largest distances, or smallest similarities) and, separately, the hardest
    negative pairs (smallest distances, or largest similarities). Candidates are every pair of the batch,
    or the pairs given with :meth:`set_idx_externally` (e.g. the previous stage's output), which are used
    for every call until :meth:`reset_idx`. Among equally hard pairs at the cut, the earlier candidates
    (row-major for all pairs) are kept. Positive pairs come hardest first, as pytorch-metric-learning's
    ``topk`` lists them (:class:`~dmlkit.losses.NPairsLoss` reads the first positive pair of each class);
    negative pairs, possibly millions, in the order of the candidates.

    ``ceil(filter_percentage * count)`` is taken of the decimal fraction as written: 0.3 of 10 pairs keeps 3.
    pytorch-metric-learning computes the product in binary floating point, where ``0.3 * 10`` is slightly above
    3, and keeps 4.

    Args:
        filter_percentage: the fraction of pairs kept, in ``[0, 1]``.
        **kwargs: ``distance`` (default ``LpDistance()``).

    Example:
        >>> from dmlkit.distances import LpDistance
        >>> miner = HDCMiner(filter_percentage=0.5, distance=LpDistance(normalize_embeddings=False))
        >>> a1, p, a2, n = miner(torch.tensor([[0.0], [1.0], [3.0], [3.5]]), torch.tensor([0, 0, 1, 1]))
        >>> list(zip(a1.tolist(), p.tolist())), list(zip(a2.tolist(), n.tolist()))
        ([(0, 1), (1, 0)], [(1, 2), (1, 3), (2, 1), (3, 1)])
    """

    def __init__(self, filter_percentage: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "filter_percentage", filter_percentage, low=0, high=1)
        self.filter_percentage = filter_percentage
        self._external: Pairs | None = None

    @property
    def was_set_externally(self) -> bool:
        """Whether candidate pairs were given with :meth:`set_idx_externally`."""
        return self._external is not None

    def set_idx_externally(self, external_indices_tuple: Sequence[Tensor] | None, labels: Tensor) -> None:
        """Use these pairs (or the pairs of these triplets; all pairs of ``labels`` if ``None``) as candidates."""
        self._external = Pairs(*convert_to_pairs(external_indices_tuple, labels))

    def reset_idx(self) -> None:
        """Go back to using every pair of the batch as candidates."""
        self._external = None

    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> Pairs:
        mat = self.distance(embeddings, ref_emb)
        pos_largest = not self.distance.higher_is_closer
        if self._external is not None:
            checked = check_indices_tuple(
                type(self).__name__, tuple(self._external), mat.shape[0], mat.shape[1], mat.device
            )
            assert checked is not None
            a1, p, a2, n = checked
            keep_pos = keep_hardest(mat[a1, p], self.filter_percentage, largest=pos_largest)
            keep_neg = keep_hardest(mat[a2, n], self.filter_percentage, largest=not pos_largest)
            positives = _hardest_first(mat, a1[keep_pos], p[keep_pos], pos_largest)
            return Pairs(*positives, a2[keep_neg], n[keep_neg])
        out: list[Tensor] = []
        masks = label_masks(labels, ref_labels)
        for mask, largest in zip(masks, (pos_largest, not pos_largest), strict=True):
            total = int(torch.count_nonzero(mask))
            k = hardest_count(self.filter_percentage, total)
            if total * _SPARSE_RATIO <= mask.numel() or k >= total:
                rows, cols = torch.nonzero(mask, as_tuple=True)
                keep = keep_hardest(mat[rows, cols], self.filter_percentage, largest=largest)
                out.extend((rows[keep], cols[keep]))
            else:
                # never list every pair: non-candidates get +inf, so they are never among the k smallest. The
                # negatives come last, so their key may overwrite the matrix (one batch-by-batch buffer less).
                last = mask is masks[-1]
                key = (mat.neg_() if largest else mat) if last else (-mat if largest else mat.clone())
                key.masked_fill_(~mask, math.inf)
                out.extend(torch.nonzero(smallest(key, k), as_tuple=True))
            if mask is masks[0]:  # the positives, ordered before the negatives' pass may overwrite the matrix
                out[:2] = _hardest_first(mat, out[0], out[1], pos_largest)
        return Pairs(*out)


def _hardest_first(mat: Tensor, rows: Tensor, cols: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """The pairs ordered from the hardest (largest value if ``largest``), equal values in their given order."""
    order = torch.sort(mat[rows, cols], descending=largest, stable=True).indices
    return rows[order], cols[order]
