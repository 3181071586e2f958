"""The distance family: maps a query batch and a reference batch to a (query, reference) matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_embeddings, check_range, message

__all__ = ["BaseDistance"]


class BaseDistance(nn.Module):
    """Base of every distance or similarity.

    Subclasses implement :meth:`compute_mat` (all query x reference pairs) and :meth:`pairwise_distance`
    (row ``i`` of the query against row ``i`` of the reference), and set ``is_inverted=True`` when higher
    values mean closer (a similarity).

    Args:
        normalize_embeddings: L_p-normalise every embedding before comparing.
        p: the norm's order, for normalisation and for L_p distances; ``> 0``.
        power: the matrix is raised to this power (e.g. 2 for squared Euclidean distances).
        is_inverted: higher values mean more similar.
        collect_stats: accepted for compatibility; statistics are not collected.
    """

    def __init__(
        self,
        normalize_embeddings: bool = True,
        p: float = 2,
        power: float = 1,
        is_inverted: bool = False,
        collect_stats: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_range(name, "p", p, low=0, low_inclusive=False)
        check_range(name, "power", power)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.p = p
        self.power = power
        self.is_inverted = bool(is_inverted)
        self.collect_stats = collect_stats

    @property
    def higher_is_closer(self) -> bool:
        """True for similarities (cosine, dot product), False for distances."""
        return self.is_inverted

    def forward(self, query_emb: Tensor, ref_emb: Tensor | None = None) -> Tensor:
        """The ``(len(query_emb), len(ref_emb))`` matrix; ``ref_emb`` defaults to ``query_emb``."""
        name = type(self).__name__
        check_embeddings(name, query_emb, "query_emb")
        query = self.maybe_normalize(query_emb)
        if ref_emb is None or ref_emb is query_emb:
            ref = query
        else:
            check_embeddings(name, ref_emb, "ref_emb")
            if ref_emb.shape[1] != query_emb.shape[1]:
                raise ValueError(message(name, "ref_emb", f"of embedding size {query_emb.shape[1]}", ref_emb.shape[1]))
            ref = self.maybe_normalize(ref_emb)
        return self.compute_powered_mat(query, ref)

    def compute_powered_mat(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        """``compute_mat(query_emb, ref_emb) ** power``; a subclass may fuse the two."""
        mat = self.compute_mat(query_emb, ref_emb)
        return mat**self.power if self.power != 1 else mat

    def compute_mat(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        raise NotImplementedError

    def pairwise_distance(self, query_emb: Tensor, ref_emb: Tensor) -> Tensor:
        """Distance between ``query_emb[i]`` and ``ref_emb[i]`` for each row ``i`` (no normalisation, no power)."""
        raise NotImplementedError

    def gap(self, positive: Tensor, negative: Tensor) -> Tensor:
        """How much closer ``positive`` is than ``negative``: ``d_neg - d_pos``, or ``s_pos - s_neg``."""
        return positive - negative if self.is_inverted else negative - positive

    def margin(self, x: Tensor, y: Tensor) -> Tensor:
        """How much farther ``x`` is than ``y`` (``x - y`` for distances, ``y - x`` for similarities)."""
        return y - x if self.is_inverted else x - y

    def smallest_dist(self, *args: Any, **kwargs: Any) -> Any:
        """``torch.min`` for distances, ``torch.max`` for similarities: picks the closest."""
        return torch.max(*args, **kwargs) if self.is_inverted else torch.min(*args, **kwargs)

    def largest_dist(self, *args: Any, **kwargs: Any) -> Any:
        """``torch.max`` for distances, ``torch.min`` for similarities: picks the farthest."""
        return torch.min(*args, **kwargs) if self.is_inverted else torch.max(*args, **kwargs)

    def normalize(self, embeddings: Tensor, dim: int = 1, **kwargs: Any) -> Tensor:
        """``F.normalize(embeddings, p, dim)``: norms below ``eps`` (1e-12) count as ``eps``. For ``p = 2``, one
        autograd node with its backward written out (fewer, lighter steps than autograd's four)."""
        eps = kwargs.pop("eps", 1e-12)
        if kwargs or self.p != 2:
            return nn.functional.normalize(embeddings, p=self.p, dim=dim, eps=eps, **kwargs)
        return _UnitNorm.apply(embeddings, dim, eps)

    def maybe_normalize(self, embeddings: Tensor, dim: int = 1, **kwargs: Any) -> Tensor:
        return self.normalize(embeddings, dim=dim, **kwargs) if self.normalize_embeddings else embeddings

    def get_norm(self, embeddings: Tensor, dim: int = 1, **kwargs: Any) -> Tensor:
        return torch.linalg.vector_norm(embeddings, ord=self.p, dim=dim, **kwargs)

    def extra_repr(self) -> str:
        return f"normalize_embeddings={self.normalize_embeddings}, p={self.p}, power={self.power}"


class _UnitNorm(torch.autograd.Function):
    """``x / max(||x||_2, eps)`` along ``dim``. With ``u`` the output and ``n`` the clamped norm, the gradient
    is ``(g - u <g, u>) / n``; where the norm was clamped to ``eps`` the division is by a constant, so the
    projection term is dropped there. Under ``create_graph`` the backward recomputes ``u`` and ``n`` from ``x``
    so that it is itself differentiable."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, eps: float) -> Tensor:
        norms = torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True).clamp_min_(eps)
        unit = x / norms
        ctx.dim, ctx.eps = dim, eps
        ctx.save_for_backward(x, unit, norms)
        return unit

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, unit, norms = ctx.saved_tensors
        differentiable = torch.is_grad_enabled()  # under create_graph
        if differentiable:
            norms = torch.linalg.vector_norm(x, ord=2, dim=ctx.dim, keepdim=True).clamp_min(ctx.eps)
            unit = x / norms
        dot = (grad * unit).sum(dim=ctx.dim, keepdim=True)
        clamped = norms <= ctx.eps
        if bool(clamped.any()):
            dot = dot.masked_fill(clamped, 0)
        if differentiable:
            return (grad - unit * dot) / norms, None, None
        out = unit * dot  # then in place: one (batch, dim) buffer besides the incoming gradient
        return out.neg_().add_(grad).div_(norms), None, None
