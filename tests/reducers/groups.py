"""Random groups of un-reduced terms, each with the equivalent pytorch-metric-learning ``loss_dict`` entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dmlkit.types import TermKind, Terms

__all__ = ["Group", "make_group", "KINDS", "NUM_EMBEDDINGS", "NUM_CLASSES"]

KINDS = [TermKind.ELEMENT, TermKind.POS_PAIR, TermKind.NEG_PAIR, TermKind.TRIPLET]
NUM_EMBEDDINGS = 7
NUM_CLASSES = 3


@dataclass
class Group:
    terms: Terms
    #: the pytorch-metric-learning indices: a tensor for elements, (anchors, others) for pairs, (a, p, n).
    pml_indices: Any
    embeddings: torch.Tensor
    labels: torch.Tensor

    @property
    def values(self) -> list[float]:
        return self.terms.values.tolist()

    @property
    def anchors(self) -> list[int]:
        assert self.terms.anchors is not None
        return self.terms.anchors.tolist()

    def pml_loss_dict(self, **extra: Any) -> dict[str, dict[str, Any]]:
        info = {"losses": self.terms.values, "indices": self.pml_indices, "reduction_type": self.terms.kind.value}
        return {"loss": {**info, **extra}}


def make_group(
    kind: TermKind,
    seed: int = 0,
    size: int = 12,
    num_embeddings: int = NUM_EMBEDDINGS,
    hinge: bool = True,
    divisor: float | None = None,
) -> Group:
    """Float64 values (``relu`` of Gaussians when ``hinge``, so about half are 0) on unique index tuples.

    Element groups have one value per embedding; pairs and triplets are distinct tuples drawn without
    replacement, so their anchors repeat and some embeddings anchor nothing.
    """
    g = torch.Generator().manual_seed(seed)
    n = num_embeddings
    embeddings = torch.randn(n, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    if kind is TermKind.ELEMENT:
        pml_indices: Any = torch.arange(n)
        anchors = pml_indices
    elif kind in (TermKind.POS_PAIR, TermKind.NEG_PAIR):
        a, o = torch.nonzero(~torch.eye(n, dtype=torch.bool), as_tuple=True)
        pick = torch.randperm(a.numel(), generator=g)[:size]
        pml_indices = (a[pick], o[pick])
        anchors = a[pick]
    else:
        grid = torch.cartesian_prod(torch.arange(n), torch.arange(n), torch.arange(n))
        grid = grid[(grid[:, 0] != grid[:, 1]) & (grid[:, 0] != grid[:, 2]) & (grid[:, 1] != grid[:, 2])]
        pick = torch.randperm(grid.shape[0], generator=g)[:size]
        pml_indices = tuple(grid[pick].unbind(1))
        anchors = grid[pick, 0]
    values = torch.randn(anchors.numel(), generator=g, dtype=torch.float64)
    if hinge:
        values = values.relu()
    terms = Terms(values.requires_grad_(), anchors, kind, divisor)
    return Group(terms, pml_indices, embeddings, labels)
