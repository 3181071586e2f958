"""Proxy losses for bench/class_losses.py: each builds the same loss in dmlkit and pytorch-metric-learning."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class _AssignmentAsIndices(nn.Module):
    """pytorch-metric-learning's ManifoldLoss rejects labels and takes each sample's proxy as ``indices_tuple``."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.loss(embeddings, indices_tuple=labels)


def _manifold(lib: Any, num_classes: int, dim: int) -> nn.Module:
    # positional order as in pytorch-metric-learning: (l = embedding size, K = number of proxies)
    loss = lib.losses.ManifoldLoss(dim, num_classes)
    return loss if lib.__name__ == "dmlkit" else _AssignmentAsIndices(loss)


CASES = {
    "ProxyNCALoss": lambda lib, num_classes, dim: lib.losses.ProxyNCALoss(num_classes, dim),
    "ProxyAnchorLoss": lambda lib, num_classes, dim: lib.losses.ProxyAnchorLoss(num_classes, dim),
    "SoftTripleLoss": lambda lib, num_classes, dim: lib.losses.SoftTripleLoss(num_classes, dim),
    "ManifoldLoss": _manifold,
    # positional order as in pytorch-metric-learning: (descriptors_dim, num_classes)
    "P2SGradLoss": lambda lib, num_classes, dim: lib.losses.P2SGradLoss(dim, num_classes),
}

__all__: list[Any] = ["CASES"]
