"""Angular, margin and VICReg losses, alone and (for the labelled ones) on a miner's triplets."""

from __future__ import annotations

import importlib
from typing import Any

from torch import Tensor

_MODULES = {"AngularLoss": "angular", "MarginLoss": "margin", "VICRegLoss": "vicreg"}


def _loss(lib: Any, name: str, **kwargs: Any) -> Any:
    cls = getattr(lib.losses, name, None)
    if cls is None:  # not exported from the package yet: take it from its module
        cls = getattr(importlib.import_module(f"{lib.__name__}.losses.{_MODULES[name]}"), name)
    return cls(**kwargs)


class _TwoViews:
    """Runs a self-supervised two-view loss on the halves of the benchmark batch (labels are ignored).

    The halves are two leaf tensors sharing the batch's storage, as a two-view loss receives them from two
    augmented forward passes: splitting one leaf under autograd would add whole-batch gradient buffers that
    belong to neither library. Their gradients are cleared on every call, so each pass allocates them anew.
    """

    def __init__(self, loss: Any) -> None:
        self.loss = loss
        self.views: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, embeddings: Tensor, labels: Tensor | None = None, indices_tuple: Any = None) -> Tensor:
        if id(embeddings) not in self.views:
            half = embeddings.shape[0] // 2
            data = embeddings.detach()
            self.views[id(embeddings)] = (data[:half].requires_grad_(), data[half : 2 * half].requires_grad_())
        first, second = self.views[id(embeddings)]
        first.grad = second.grad = None
        return self.loss(first, ref_emb=second)


CASES = {
    "AngularLoss": lambda lib: (_loss(lib, "AngularLoss"), None),
    "AngularLoss + TripletMarginMiner(semihard)": lambda lib: (
        _loss(lib, "AngularLoss"),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
    "MarginLoss": lambda lib: (_loss(lib, "MarginLoss"), None),
    "MarginLoss(learn_beta, num_classes=1024)": lambda lib: (
        _loss(lib, "MarginLoss", learn_beta=True, nu=0.1, num_classes=1024),
        None,
    ),
    "MarginLoss + TripletMarginMiner(semihard)": lambda lib: (
        _loss(lib, "MarginLoss"),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
    "VICRegLoss (two views of batch/2)": lambda lib: (_TwoViews(_loss(lib, "VICRegLoss")), None),
}

__all__: list[Any] = ["CASES"]
