"""SoftTriple: a softmax over classes whose similarity is relaxed over several centres per class."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._validation import check_range
from ..distances import CosineSimilarity, DotProductSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss
from .functional import full_precision, require_similarity, sample_terms

__all__ = ["SoftTripleLoss"]

#: at most this many (sample, centre) similarities are held at once while relaxing the similarities
_BLOCK_ELEMENTS = 1 << 24


class SoftTripleLoss(BaseClassWeightLoss):
    """SoftTriple loss (Qian, Shang, Sun, Hu, Li and Jin, 2019, "SoftTriple Loss: Deep Metric Learning Without
    Triplet Sampling", ICCV, arXiv:1909.05235).

    Every class ``c`` has ``K = centers_per_class`` learned centres ``w_c^k``. The relaxed similarity of
    embedding ``x`` to class ``c`` weights the centre similarities by their softmax at temperature ``gamma``::

        S'(x, c) = sum_k softmax_k(s(x, w_c^k) / gamma) * s(x, w_c^k)

    and the loss of sample ``i`` is the cross-entropy of the logits ``la * (S'(x_i, c) - margin [c = y_i])``.
    ``s`` is the cosine similarity by default. The paper adds ``tau * R`` with a regularizer ``R`` that lets
    a class's centres merge (``tau = 0.2``); as in pytorch-metric-learning it is not built in: pass
    ``weight_regularizer=SparseCentersRegularizer(num_classes, centers_per_class)`` and
    ``weight_reg_weight=0.2`` to train exactly as in the paper (the regularizer sees ``fc.t()``, one centre
    per row, class after class).

    Pairs or triplets from a miner weight sample ``i`` by how often it appears in them, divided by the
    largest count (0 if never), as pytorch-metric-learning does.

    Unlike pytorch-metric-learning, ``gamma`` is stored as given (pytorch-metric-learning stores
    ``1 / gamma`` under that name), and the ``(batch, num_classes * centers_per_class)`` centre similarities
    are relaxed block by block and rebuilt in the backward pass, so that only the ``(batch, num_classes)``
    relaxed similarities are held (a hand-written backward for inner-product similarities, recomputation by
    checkpointing for other ones).

    Args:
        num_classes: the number of classes, ``>= 1``.
        embedding_size: the embedding dimension, ``>= 1``.
        centers_per_class: centres per class ``K``, ``>= 1``.
        la: the logit scale ``lambda``, ``> 0``.
        gamma: the softmax temperature over a class's centres, ``> 0``.
        margin: the margin ``delta`` subtracted from the true class's relaxed similarity, ``>= 0``.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default Kaiming-uniform
            with ``a = sqrt(5)``, ``nn.Linear``'s initialisation), ``distance`` (a similarity; default
            ``CosineSimilarity()``), ``reducer`` (default ``MeanReducer()``), ``embedding_regularizer``,
            ``embedding_reg_weight``.

    Attributes:
        fc: ``(embedding_size, num_classes * centers_per_class)`` learned centres, one per column, the
            ``centers_per_class`` centres of class 0 first; float32.

    Example:
        >>> loss_fn = SoftTripleLoss(num_classes=2, embedding_size=2, centers_per_class=1,
        ...                          weight_init_func=torch.nn.init.eye_)
        >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(loss_fn(emb, torch.tensor([0, 1])).item(), 4)
        0.0
    """

    default_distance = CosineSimilarity
    default_weight_init = staticmethod(functools.partial(nn.init.kaiming_uniform_, a=math.sqrt(5)))

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        centers_per_class: int = 10,
        la: float = 20,
        gamma: float = 0.1,
        margin: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        name = type(self).__name__
        check_range(name, "centers_per_class", centers_per_class, low=1, integer=True)
        check_range(name, "la", la, low=0, low_inclusive=False)
        check_range(name, "gamma", gamma, low=0, low_inclusive=False)
        check_range(name, "margin", margin, low=0)
        require_similarity(name, self.distance)
        self.centers_per_class = centers_per_class
        self.la = la
        self.gamma = gamma
        self.margin = margin
        self.fc = self.new_weights(embedding_size, num_classes * centers_per_class)

    def class_weights(self) -> Tensor:
        return self.fc.t()

    def get_logits(self, embeddings: Tensor) -> Tensor:
        """``(batch, num_classes)`` relaxed similarities ``S'(x, c)`` (before the margin and the scale ``la``)."""
        return self._relaxed_similarity(embeddings, self.fc.t().to(embeddings.dtype))

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by BaseClassWeightLoss.forward
        with full_precision(embeddings) as x:
            relaxed = self._relaxed_similarity(x, self.fc.t().to(x.dtype))
            own = torch.zeros_like(relaxed).scatter_(1, labels.unsqueeze(1), self.margin)
            values = F.cross_entropy(self.la * (relaxed - own), labels, reduction="none")
        return {"loss": sample_terms(values, indices_tuple)}

    def _relaxed_similarity(self, x: Tensor, centers: Tensor) -> Tensor:
        k, dist = self.centers_per_class, self.distance
        classes_per_block = max(1, _BLOCK_ELEMENTS // max(1, x.shape[0] * k))
        if isinstance(dist, DotProductSimilarity) and dist.power == 1:
            # inner products of the (normalised) vectors: relaxed block by block with a hand-written backward
            query, ref = dist.maybe_normalize(x), dist.maybe_normalize(centers)
            return _RelaxedInnerProduct.apply(query, ref, k, self.gamma, classes_per_block)
        if classes_per_block >= self.num_classes:
            return self._relax_block(x, centers)
        blocks = []
        recompute = torch.is_grad_enabled() and (x.requires_grad or centers.requires_grad)
        for start in range(0, self.num_classes, classes_per_block):
            part = centers[start * k : (start + classes_per_block) * k]
            if recompute:
                # keep only the block's inputs; its (batch, classes, K) similarities are rebuilt in backward
                blocks.append(checkpoint(self._relax_block, x, part, use_reentrant=False))
            else:
                blocks.append(self._relax_block(x, part))
        return torch.cat(blocks, dim=1)

    def _relax_block(self, x: Tensor, centers: Tensor) -> Tensor:
        sim = self.distance(x, centers).view(x.shape[0], -1, self.centers_per_class)
        prob = torch.softmax(sim / self.gamma, dim=2)
        return (prob * sim).sum(dim=2)


def _centre_major(ref: Tensor, k: int, start: int, stop: int) -> Tensor:
    """The centres of classes ``start:stop`` reordered centre-index first (all first centres, then all second
    ones ...): the reductions over a class's ``k`` centres then run over a strided axis, which vectorises far
    better than a short innermost one."""
    return ref[start * k : stop * k].view(stop - start, k, -1).transpose(0, 1).flatten(0, 1)


class _RelaxedInnerProduct(torch.autograd.Function):
    """``S[i, c] = sum_k softmax_k(s_ick / gamma) s_ick`` with ``s_ick = query_i . ref_{cK+k}``, computed over
    blocks of classes; only ``S`` is kept, and backward rebuilds each block's similarities once.

    ``dS / ds_k = p_k (1 + (s_k - S) / gamma)`` with ``p`` the softmax weights.
    """

    @staticmethod
    def forward(ctx: Any, query: Tensor, ref: Tensor, k: int, gamma: float, classes_per_block: int) -> Tensor:
        batch, num_classes = query.shape[0], ref.shape[0] // k
        out = query.new_empty(batch, num_classes)
        for start in range(0, num_classes, classes_per_block):
            stop = min(num_classes, start + classes_per_block)
            # s / gamma in place, then gamma * sum_k p_k (s_k / gamma): one block-sized buffer besides p
            scaled = (query @ _centre_major(ref, k, start, stop).t()).view(batch, k, stop - start).div_(gamma)
            out[:, start:stop] = torch.softmax(scaled, dim=1).mul_(scaled).sum(dim=1).mul_(gamma)
        ctx.save_for_backward(query, ref, out)
        ctx.k, ctx.gamma, ctx.classes_per_block = k, gamma, classes_per_block
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        query, ref, out = ctx.saved_tensors
        k, gamma = ctx.k, ctx.gamma
        batch, num_classes = out.shape
        grad_query = torch.zeros_like(query) if ctx.needs_input_grad[0] else None
        grad_ref = torch.empty_like(ref) if ctx.needs_input_grad[1] else None
        for start in range(0, num_classes, ctx.classes_per_block):
            stop = min(num_classes, start + ctx.classes_per_block)
            part = _centre_major(ref, k, start, stop)
            scaled = (query @ part.t()).view(batch, k, stop - start).div_(gamma)
            prob = torch.softmax(scaled, dim=1)
            # in place on the rebuilt block: g = p (1 + s / gamma - S / gamma) dL/dS
            g = scaled.sub_(out[:, None, start:stop] / gamma).add_(1).mul_(prob).mul_(grad[:, None, start:stop])
            g = g.view(batch, -1)
            if grad_query is not None:
                grad_query.addmm_(g, part)
            if grad_ref is not None:
                # the centre-major product copied straight into the class-major rows (no reordered temporary)
                rows = grad_ref[start * k : stop * k].view(stop - start, k, -1)
                rows.copy_((g.t() @ query).view(k, stop - start, -1).transpose(0, 1))
        return grad_query, grad_ref, None, None, None
