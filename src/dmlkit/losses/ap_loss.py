"""AP-loss: a ranking loss on average precision, minimised with an error-driven update (Chen et al., 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_range
from ..distances import CosineSimilarity
from ..types import TermKind, Terms
from .base import BaseMetricLossFunction

__all__ = ["APLoss", "ap_loss_error_driven", "smoothed_step"]

# Elements per temporary (anchors x items x items) block: a few MiB, whatever the batch size.
_BLOCK_ELEMENTS = 1 << 22


def smoothed_step(x: Tensor, delta: float) -> Tensor:
    """The paper's piecewise-linear step ``H(x)``: 0 below ``-delta``, ``x / (2 delta) + 1/2`` in between, 1 above.

    ``delta = 0`` is the limit: the step function with ``H(0) = 1/2`` (a tie counts half).

    Example:
        >>> smoothed_step(torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0]), 1.0)
        tensor([0.0000, 0.2500, 0.5000, 0.6250, 1.0000])
    """
    if delta == 0:
        return (x > 0).to(x.dtype) + 0.5 * (x == 0).to(x.dtype)
    return (x / (2 * delta) + 0.5).clamp(0, 1)


def _primary_sums(scores: Tensor, positive: Tensor, negative: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Row and column sums of the primary terms ``L_ij`` of each anchor (row of ``scores``).

    ``L_ij = H(s_j - s_i) / rank_i`` for a positive ``i`` and a negative ``j``, with
    ``rank_i = 1 + sum_{k in P u N, k != i} H(s_k - s_i)``. Returns ``(rows, cols)``, both shaped like
    ``scores``: ``rows[a, i] = sum_j L_ij`` (zero unless ``i`` is a positive of anchor ``a``) and
    ``cols[a, j] = sum_i L_ij`` (zero unless ``j`` is a negative of anchor ``a``).

    Only positives need a rank, so each anchor's work is (its positives) x (its items), not (items) ** 2: the
    positives are gathered into ``P`` columns (``P`` the largest count, shorter rows padded and masked).
    """
    num_anchors, num_items = scores.shape
    rows = torch.zeros_like(scores)
    cols = torch.zeros_like(scores)
    counts = torch.count_nonzero(positive, dim=1)
    width = int(counts.max()) if num_anchors else 0
    if width == 0:
        return rows, cols
    # the positives of each anchor first (in item order), then padding
    order = torch.argsort((~positive).to(torch.uint8), dim=1, stable=True)[:, :width]
    present = torch.arange(width, device=scores.device) < counts.unsqueeze(1)
    valid = (positive | negative).to(scores.dtype)
    negative_weight = negative.to(scores.dtype)
    step = max(1, _BLOCK_ELEMENTS // max(width * num_items, 1))
    for start in range(0, num_anchors, step):
        stop = min(start + step, num_anchors)
        s, idx, here = scores[start:stop], order[start:stop], present[start:stop]
        # h[a, p, k] = H(s_k - s_p): item k ranked above the anchor's p-th positive
        h = smoothed_step(s.unsqueeze(1) - s.gather(1, idx).unsqueeze(2), delta)
        h.scatter_(2, idx.unsqueeze(2), 0.0)  # k = p itself is not counted
        h.mul_(valid[start:stop].unsqueeze(1))
        rank = 1 + h.sum(dim=2)
        primary = h.mul_(negative_weight[start:stop].unsqueeze(1))
        primary.mul_((here.to(s.dtype) / rank).unsqueeze(2))
        rows[start:stop].scatter_add_(1, idx, primary.sum(dim=2))
        cols[start:stop] = primary.sum(dim=1)
    return rows, cols


class _ErrorDrivenAP(torch.autograd.Function):
    """Per anchor ``1 - AP`` from the primary terms; backward is the paper's error-driven update, not a derivative.

    The perceptron-style update sets the error of each primary term to ``L_ij`` (its target is 0), so with
    ``x_ij = s_j - s_i`` the gradient of anchor ``a``'s loss ``sum_ij L_ij / |P|`` on its scores is
    ``(-sum_j L_kj + sum_i L_ik) / |P|`` at item ``k``: positives are pushed up by their errors against
    every negative, negatives down by their errors against every positive.
    """

    @staticmethod
    def forward(ctx: Any, scores: Tensor, positive: Tensor, negative: Tensor, delta: float) -> Tensor:  # type: ignore[override]
        with torch.no_grad():
            rows, cols = _primary_sums(scores.detach(), positive, negative, delta)
            num_pos = positive.sum(dim=1).clamp(min=1).to(scores.dtype)
            ctx.save_for_backward(rows, cols, num_pos)
            return rows.sum(dim=1) / num_pos

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        rows, cols, num_pos = ctx.saved_tensors
        return (cols - rows) * (grad_out / num_pos).unsqueeze(1), None, None, None


def ap_loss_error_driven(scores: Tensor, positive: Tensor, negative: Tensor, delta: float = 1.0) -> Tensor:
    """Per row of ``scores``: ``1 - AP`` with the step function smoothed by ``delta``, i.e. ``sum_ij L_ij / |P|``.

    Args:
        scores: ``(anchors, items)``, higher ranks first.
        positive: boolean ``(anchors, items)``, the relevant items of each anchor.
        negative: boolean ``(anchors, items)``, the irrelevant ones (disjoint from ``positive``); other items are
            left out of the ranking.
        delta: the smoothing half-width, ``>= 0``.

    Returns:
        ``(anchors,)``; 0 for an anchor without positives or without negatives. Its gradient on ``scores`` is
        the error-driven update of Chen et al. (2019), whatever ``delta``.

    Example:
        >>> s = torch.tensor([[0.9, 0.5, 0.2]], requires_grad=True)
        >>> pos, neg = torch.tensor([[True, False, True]]), torch.tensor([[False, True, False]])
        >>> loss = ap_loss_error_driven(s, pos, neg, delta=0.0)  # ranking: pos, neg, pos -> AP = (1 + 2/3) / 2
        >>> round(loss.item(), 4)
        0.1667
        >>> loss.backward(); s.grad
        tensor([[ 0.0000,  0.1667, -0.1667]])
    """
    return _ErrorDrivenAP.apply(scores, positive, negative, delta)


class APLoss(BaseMetricLossFunction):
    """AP-loss (Chen, Liu, Tang, Zou, Liao and Li, 2019, "Towards Accurate One-Stage Object Detection with
    AP-Loss", CVPR, arXiv:1904.06373), as a retrieval loss over a batch.

    Each anchor ranks the other batch items (or the reference set) by its scores ``s`` (similarities from
    ``distance``; negated distances for a distance such as ``LpDistance``). With ``x_ij = s_j - s_i`` for a
    positive ``i`` and a negative ``j`` (positives: same label; negatives: a different label), the paper's
    Eq. 4-6 write ``1 - AP`` as a sum of primary terms::

        1 - AP = 1/|P| sum_{i in P} sum_{j in N} L_ij,   L_ij = H(x_ij) / (1 + sum_{k in P u N, k != i} H(x_ik))

    (the denominator is the rank of ``i`` among all items), with the step function ``H`` replaced by the
    piecewise-linear ``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)`` (``delta = 0``: the exact step with ties
    counting half, so the value is exactly ``1 - AP``). The gradient is not a derivative of this value: it is
    the paper's error-driven update (section 3.3), computed by a custom ``torch.autograd.Function``: the
    score of a positive ``i`` receives ``-sum_j L_ij / |P|`` and that of a negative ``j``
    ``+sum_i L_ij / |P|``; autograd then carries it through ``distance`` to the embeddings.

    One term per anchor with at least one positive (element kind, ``anchors`` = the anchor's index), averaged by
    the default ``MeanReducer``: the loss is the batch's mean ``1 - AP``. An anchor whose every item is a
    positive has ``AP = 1``, a term 0 and a zero gradient; a batch without any positive pair has no term, so
    the loss is 0 with zero gradients. When the batch is its own reference, an anchor never ranks itself.
    With ``indices_tuple`` (pairs or triplets from a miner), each anchor ranks only its mined positives and
    negatives (a pair mined as both counts as positive).

    The ``O(anchors * items^2)`` comparisons run over blocks of anchors, so memory stays a few MiB beyond
    the ``(anchors x items)`` score matrix. Not implemented: the paper's interpolated AP and its mini-batch
    score-shift correction, which matter for detection rather than for retrieval over one batch.

    Args:
        delta: the smoothing half-width ``delta`` of ``H``, ``>= 0`` (the paper uses 1 for detection logits;
            cosine similarity differences lie in ``[-2, 2]``, so a smaller value, e.g. 0.1, keeps the value
            closer to the exact ``1 - AP``).
        **kwargs: ``distance`` (default ``CosineSimilarity()``), ``reducer``, ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(APLoss(delta=0.0)(emb, torch.tensor([0, 0, 1, 1])).item(), 4)  # a perfect ranking
        0.0
        >>> # each anchor's one positive ranked third (AP 1/3) or second (AP 1/2) of three
        >>> round(APLoss(delta=0.0)(emb, torch.tensor([0, 1, 0, 1])).item(), 4)
        0.5833
    """

    default_distance = CosineSimilarity

    def __init__(self, delta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range(type(self).__name__, "delta", delta, low=0)
        self.delta = float(delta)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        pairs = self.pairs(labels, indices_tuple, ref_labels)
        shape = (embeddings.shape[0], ref_emb.shape[0])
        positive = torch.zeros(shape, dtype=torch.bool, device=embeddings.device)
        negative = torch.zeros(shape, dtype=torch.bool, device=embeddings.device)
        positive[pairs.anchors_pos, pairs.positives] = True
        negative[pairs.anchors_neg, pairs.negatives] = True
        negative &= ~positive
        anchors = torch.nonzero(positive.any(dim=1)).flatten()
        if anchors.numel() == 0:
            return {"loss": Terms(embeddings.new_zeros(0), anchors, TermKind.ELEMENT)}
        mat = self.distance(embeddings.index_select(0, anchors), ref_emb)
        scores = mat if self.distance.higher_is_closer else -mat
        values = ap_loss_error_driven(scores, positive[anchors], negative[anchors], self.delta)
        return {"loss": Terms(values, anchors, TermKind.ELEMENT)}
