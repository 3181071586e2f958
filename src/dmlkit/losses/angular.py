from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import Described, check_range, message
from ..distances import LpDistance
from ..indices import convert_to_pairs, label_masks
from ..types import TermKind, Terms, empty_index
from .base import BaseMetricLossFunction

__all__ = ["AngularLoss"]


class AngularLoss(BaseMetricLossFunction):
    """Angular loss (Wang, Zhou, Wen, Liu and Lin, 2017, "Deep Metric Learning with Angular Loss",
    arXiv:1708.01682), in its N-pair form.

    The paper bounds the angle at the negative ``n`` of the triangle formed with a positive pair ``(a, p)``:
    ``n`` must see the pair under an angle of at most ``alpha`` from the pair's centre. On L2-normalised
    embeddings this becomes, for every positive pair, a smooth maximum over the anchor's negatives::

        f(a, p, n) = 4 tan^2(alpha) (x_a + x_p)^T x_n - 2 (1 + tan^2(alpha)) x_a^T x_p
        loss(a, p) = log(1 + sum_{n: label(n) != label(a)} exp(f(a, p, n)))

    One value per positive pair; the default reducer averages them. The log-sum-exp is computed stably, so
    ``alpha`` close to 90 degrees (huge ``tan^2``) stays finite. The paper's combination with the N-pair loss
    is the sum of this loss and :class:`~dmlkit.losses.n_pairs.NPairsLoss`.

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
            negative = labels.unsqueeze(1) != ref_labels.unsqueeze(0)
            has_negative = a_neg.numel() > 0
        if a.numel() == 0 or not has_negative:
            return {"loss": Terms(embeddings.new_zeros(0), empty_index(embeddings.device), TermKind.POS_PAIR)}
        inverse = None
        if indices_tuple is not None:
            # A miner may list a positive pair many times (once per triplet): score each distinct pair once.
            keys, inverse = torch.unique(a * ref_emb.shape[0] + p, return_inverse=True)
            a_unique, p_unique = keys // ref_emb.shape[0], keys % ref_emb.shape[0]
        else:
            a_unique, p_unique = a, p
        values = self._pair_values(embeddings, ref_emb, a_unique, p_unique, negative)
        if inverse is not None:
            values = values[inverse]
        return {"loss": Terms(values, a, TermKind.POS_PAIR)}

    def _pair_values(self, embeddings: Tensor, ref_emb: Tensor, a: Tensor, p: Tensor, negative: Tensor) -> Tensor:
        """``log(1 + sum_n exp(f(a, p, n)))`` for each pair, one dense (pairs x reference) pass."""
        query = self.distance.normalize(embeddings)
        ref = query if ref_emb is embeddings else self.distance.normalize(ref_emb)
        sq_tan = math.tan(math.radians(self.alpha)) ** 2
        anchors, positives = query[a], ref[p]
        ap = (anchors * positives).sum(dim=1, keepdim=True)
        # f = 4 t (x_a + x_p)^T x_n - 2 (1 + t) x_a^T x_p for every reference x_n, in one matrix product.
        logits = torch.addmm(ap * (-2.0 * (1.0 + sq_tan)), anchors + positives, ref.T, alpha=4.0 * sq_tan)
        keep = negative[a]
        no_negative = ~keep.any(dim=1)
        drop = ~keep
        if bool(no_negative.any()):
            # such rows keep finite logits (their value is zeroed below), so no NaN gradient appears
            drop[no_negative] = False
        # in place: the matrix product does not need its output for its backward
        logits.masked_fill_(drop, float("-inf"))
        lse = torch.logsumexp(logits, dim=1)
        values = torch.logaddexp(lse, lse.new_zeros(()))
        return values.masked_fill(no_negative, 0.0)
