"""pytorch-metric-learning's ``utils.loss_and_miner_utils`` names, backed by :mod:`dmlkit.indices`.

Same names, signatures and return conventions (plain 3-/4-tuples of ``long`` index tensors, ``uint8``
match/diff masks). New code should use :mod:`dmlkit.indices` directly.

Example:
    >>> from dmlkit.utils import loss_and_miner_utils as lmu
    >>> a, p, n = lmu.get_all_triplets_indices(torch.tensor([0, 0, 1]))
    >>> a.tolist(), p.tolist(), n.tolist()
    ([0, 1], [1, 0], [2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..indices import all_pairs as get_all_pairs_indices
from ..indices import all_triplets as get_all_triplets_indices
from ..indices import convert_to_pairs, label_masks, random_triplets
from ..indices import convert_to_triplets as _convert_to_triplets

__all__ = [
    "get_all_pairs_indices",
    "get_all_triplets_indices",
    "get_random_triplet_indices",
    "convert_to_pairs",
    "convert_to_triplets",
    "get_matches_and_diffs",
    "pos_pairs_from_tuple",
    "neg_pairs_from_tuple",
]


def get_matches_and_diffs(labels: Tensor, ref_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``uint8`` masks of same-label (self excluded when there is no reference) and different-label pairs."""
    matches, diffs = label_masks(labels, ref_labels)
    return matches.to(torch.uint8), diffs.to(torch.uint8)


def get_random_triplet_indices(
    labels: Tensor,
    ref_labels: Tensor | None = None,
    t_per_anchor: int | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random triplets for every anchor that has a positive and a negative.

    ``t_per_anchor=None`` draws, for each anchor, as many triplets as the reference holds elements of the
    anchor's class (pytorch-metric-learning's convention). Draws use torch's global random state.
    """
    if weights is not None:
        raise NotImplementedError(
            "get_random_triplet_indices: `weights` (weighted negative sampling) is not supported; "
            "pass weights=None, or sample negatives with a miner."
        )
    if t_per_anchor is not None:
        return tuple(random_triplets(labels, ref_labels, t_per_anchor=t_per_anchor))  # type: ignore[return-value]
    ref = labels if ref_labels is None else ref_labels
    per_anchor = (labels.unsqueeze(1) == ref.unsqueeze(0)).sum(1)
    most = int(per_anchor.max()) if per_anchor.numel() else 0
    if most == 0:
        return tuple(random_triplets(labels, ref_labels, t_per_anchor=1))  # type: ignore[return-value]
    a, p, n = random_triplets(labels, ref_labels, t_per_anchor=most)
    # draws come grouped by anchor, `most` per anchor: keep the first `per_anchor[a]` of each group
    keep = (torch.arange(most, device=a.device) < per_anchor[a.view(-1, most)[:, :1]]).flatten()
    return a[keep], p[keep], n[keep]


def convert_to_triplets(
    indices_tuple: Sequence[Tensor] | None,
    labels: Tensor,
    ref_labels: Tensor | None = None,
    t_per_anchor: int | str | None = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triplets as given, formed from given pairs sharing an anchor, or drawn from labels (``"all"`` or random)."""
    if indices_tuple is None and t_per_anchor != "all":
        return get_random_triplet_indices(labels, ref_labels, t_per_anchor=t_per_anchor)  # type: ignore[arg-type]
    return tuple(_convert_to_triplets(indices_tuple, labels, ref_labels))  # type: ignore[return-value]


def pos_pairs_from_tuple(indices_tuple: Sequence[Tensor]) -> Sequence[Tensor]:
    """``(anchors, positives)`` of a 4-tuple of pairs."""
    return indices_tuple[:2]


def neg_pairs_from_tuple(indices_tuple: Sequence[Tensor]) -> Sequence[Tensor]:
    """``(anchors, negatives)`` of a 4-tuple of pairs."""
    return indices_tuple[2:]
