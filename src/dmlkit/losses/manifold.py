"""Manifold similarity loss: an N-pair-style loss on random-walk similarities to class proxies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_range, message
from ..distances import CosineSimilarity
from ..types import Terms
from .class_weights import BaseClassWeightLoss, resolve_class_sizes
from .functional import full_precision, require_similarity, row_logsumexp, sample_terms

__all__ = ["ManifoldLoss"]

#: the width of the Gaussian-like kernel exp(s / width) that turns similarities into graph affinities
_KERNEL_WIDTH = 0.5


class ManifoldLoss(BaseClassWeightLoss):
    """Manifold similarity loss (Aziere and Todorovic, 2019, "Ensemble Deep Manifold Similarity Learning
    Using Hard Proxies", CVPR, pp. 7299-7307).

    The batch's ``N`` embeddings and the ``K`` learned proxies (rows of ``proxies``) are the nodes of a graph
    with affinities ``A_uv = exp(max(s(u, v), 0) / 0.5)`` (``A_uu = 0``; ``s`` the cosine similarity). The
    closed form of a random walk with restart probability ``1 - alpha`` gives the manifold similarities::

        F = (1 - alpha) (I - alpha D^-1/2 A D^-1/2)^-1,        D = diag(row sums of A)

    With ``y_i`` the proxy of sample ``i``, the intrinsic loss compares the manifold similarities of ``i`` to
    the proxies and the context loss the cosine between the rows ``F_i`` and ``F_{N+k}`` (similarity of
    whole neighbourhoods); each counts only the proxies that violate the margin::

        int_i = log(1 + sum_{k != y_i, v_ik > 0} exp(v_ik)),   v_ik = F_{i,N+k} - F_{i,N+y_i} + margin
        ctx_i = log(1 + sum_{k != y_i, u_ik > 0} exp(u_ik)),   u_ik = cos(F_i, F_{N+k}) - cos(F_i, F_{N+y_i}) + margin
        loss_i = int_i + lambdaC * ctx_i        (ctx_i alone when lambdaC is infinite)

    averaged over the batch by the default ``MeanReducer``. This follows the authors' code (which has no
    margin) and pytorch-metric-learning (which adds it and widens the kernel from 0.05 to 0.5).

    ``labels`` name each embedding's proxy (``0 <= y_i < K``): one proxy per class, as in the authors' code,
    or one per meta-class. pytorch-metric-learning rejects labels and takes that assignment as
    ``indices_tuple`` (a 1-D tensor of proxy indices), which is accepted here too; when neither is given,
    as in pytorch-metric-learning, each call draws a random assignment that uses every proxy (so the batch
    needs at least ``K`` embeddings; ``generator`` makes it reproducible).

    Differences from pytorch-metric-learning: the linear system is solved in the embeddings' precision
    (pytorch-metric-learning inverts in float32 even for float64 input), the context term is one matrix
    product instead of a ``(K, N, N + K)`` tensor, ``lambdaC=inf`` gives the context loss alone (there it
    gives ``inf`` or NaN), a proxy is counted only when its violation is strictly positive (as in the
    authors' code; pytorch-metric-learning also counts a violation of exactly 0), the per-sample values
    go through the ``reducer`` (pytorch-metric-learning returns an already averaged value), and
    ``distance`` must be a similarity.

    Args:
        l: the embedding dimension (pytorch-metric-learning's name); or give ``embedding_size``.
        K: the number of proxies (pytorch-metric-learning's name), 50 unless ``num_classes`` is given.
        lambdaC: the weight of the context loss, ``>= 0`` (``math.inf``: the context loss alone).
        alpha: the random walk's probability of moving on, in ``(0, 1)``.
        margin: the margin, ``>= 0``.
        num_classes: the number of proxies, the same as ``K``.
        embedding_size: the embedding dimension, the same as ``l``.
        generator: random source for the proxy assignment drawn when no labels are given.
        **kwargs: ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func`` (default
            ``nn.init.normal_``), ``distance`` (a similarity; default ``CosineSimilarity()``), ``reducer``
            (default ``MeanReducer()``), ``embedding_regularizer``, ``embedding_reg_weight``.

    Attributes:
        proxies: ``(K, l)`` learned proxies, float32.

    Example:
        >>> loss_fn = ManifoldLoss(2, K=2, weight_init_func=torch.nn.init.eye_)
        >>> emb = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.9, 0.0]])
        >>> loss_fn(emb, torch.tensor([0, 1, 0])).item()
        0.0
    """

    default_distance = CosineSimilarity

    def __init__(
        self,
        l: int | None = None,  # noqa: E741 (pytorch-metric-learning's name)
        K: int = 50,
        lambdaC: float = 1.0,
        alpha: float = 0.8,
        margin: float = 5e-4,
        *,
        num_classes: int | None = None,
        embedding_size: int | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        # K has a default: it only conflicts with num_classes when it was changed from it
        k_alias = None if num_classes is not None and K == 50 else K
        num_classes, embedding_size = resolve_class_sizes(
            name, num_classes, embedding_size, K__num_classes=k_alias, l__embedding_size=l
        )
        super().__init__(num_classes, embedding_size, **kwargs)
        check_range(name, "lambdaC", lambdaC, low=0)
        check_range(name, "alpha", alpha, low=0, high=1, low_inclusive=False, high_inclusive=False)
        check_range(name, "margin", margin, low=0)
        require_similarity(name, self.distance)
        self.K = num_classes
        self.l = embedding_size
        self.lambdaC = lambdaC
        self.alpha = alpha
        self.margin = margin
        self.generator = generator
        self.proxies = self.new_weights(num_classes, embedding_size)

    def class_weights(self) -> Tensor:
        return self.proxies

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | Tensor | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        name = type(self).__name__
        if indices_tuple is not None and not isinstance(indices_tuple, Tensor):
            rule = "None or a 1-D tensor of one proxy index per embedding (pairs or triplets have no use here)"
            raise TypeError(message(name, "indices_tuple", rule, type(indices_tuple).__name__))
        if labels is not None and indices_tuple is not None:
            rule = "None when `labels` are given (both would name each embedding's proxy)"
            raise ValueError(message(name, "indices_tuple", rule, "a tensor"))
        if labels is None:
            labels = indices_tuple if indices_tuple is not None else self._random_proxies(embeddings)
        return super().forward(embeddings, labels, None, ref_emb, ref_labels)

    def _random_proxies(self, embeddings: Tensor) -> Tensor:
        """Every proxy once, the rest of the batch uniformly at random, in random order."""
        size = embeddings.shape[0] if isinstance(embeddings, Tensor) and embeddings.ndim == 2 else 0
        if size < self.K:
            rule = f"at least K={self.K} embeddings when no `labels` are given (each proxy needs one)"
            raise ValueError(message(type(self).__name__, "embeddings", rule, size))
        extra = torch.randint(0, self.K, (size - self.K,), generator=self.generator)
        assignment = torch.cat([torch.arange(self.K), extra])
        return assignment[torch.randperm(size, generator=self.generator)].to(embeddings.device)

    def compute_terms(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: tuple[Tensor, ...] | None,
        ref_emb: Tensor,
        ref_labels: Tensor | None,
    ) -> Mapping[str, Terms]:
        assert labels is not None  # checked by BaseClassWeightLoss.forward
        size = embeddings.shape[0]
        with full_precision(embeddings) as x:
            system = self._random_walk_system(torch.cat([x, self.proxies.to(x.dtype)]))
            with_context = self.lambdaC != 0
            with_intrinsic = not math.isinf(self.lambdaC)
            if with_context:
                manifold = (1 - self.alpha) * torch.linalg.inv(system)
                to_proxies = manifold[:size, size:]
            else:
                # only the proxies' columns are needed: solve for them instead of inverting
                columns = torch.eye(system.shape[0], dtype=system.dtype, device=system.device)[:, size:]
                to_proxies = (1 - self.alpha) * torch.linalg.solve(system, columns)[:size]
            values = x.new_zeros(size)
            if with_intrinsic:
                values = values + _violations(to_proxies, labels, self.margin)
            if with_context:
                rows = F.normalize(manifold, dim=1)
                context = _violations(rows[:size] @ rows[size:].t(), labels, self.margin)
                values = values + (context if not with_intrinsic else self.lambdaC * context)
        return {"loss": sample_terms(values)}

    def _random_walk_system(self, nodes: Tensor) -> Tensor:
        """``I - alpha D^-1/2 A D^-1/2`` for the affinities ``A`` between all ``nodes``."""
        affinity = torch.exp(self.distance(nodes).clamp(min=0) / _KERNEL_WIDTH)
        eye = torch.eye(nodes.shape[0], dtype=torch.bool, device=nodes.device)
        affinity = affinity.masked_fill(eye, 0.0)
        # every off-diagonal affinity is >= 1, so each degree is >= (number of nodes - 1) > 0
        scale = affinity.sum(dim=1).rsqrt()
        system = (-self.alpha * scale.unsqueeze(1)) * affinity * scale.unsqueeze(0)
        system.diagonal().add_(1.0)
        return system


def _violations(scores: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Per row ``i``: ``log(1 + sum exp(v_ik))`` over the columns ``k != labels[i]`` whose
    ``v_ik = scores_ik - scores_{i, labels[i]} + margin`` is positive."""
    own = scores.gather(1, labels.unsqueeze(1))
    violation = scores - own + margin
    others = torch.ones_like(violation, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), False)
    return row_logsumexp(violation, others & (violation > 0), add_one=True)
