"""Shared pieces of the proxy-loss tests: PML twins with copied weights, separable blobs to train on, and the
inputs that stress low precision (huge and tiny norms, angles 0 and pi to a class weight)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dmlkit.losses.class_weights import BaseClassWeightLoss
from tests.losses.cases import random_batch


def pml_losses() -> object:
    return pytest.importorskip("pytorch_metric_learning.losses")


def copy_weights(ours: BaseClassWeightLoss, theirs: nn.Module, name: str) -> None:
    """Make ``ours`` float64 and give it ``theirs``'s parameter ``name``."""
    ours.double()
    with torch.no_grad():
        getattr(ours, name).copy_(getattr(theirs, name))


def blobs(seed: int = 0, classes: int = 4, per_class: int = 12, dim: int = 8) -> tuple[Tensor, Tensor]:
    """Well separated Gaussian blobs: ``classes`` random centres of norm ~6, unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=g), labels


def train(
    loss_fn: BaseClassWeightLoss, x: Tensor, labels: Tensor, embedding_size: int, steps: int = 200, lr: float = 0.05
) -> tuple[float, float, nn.Module]:
    """Adam on a linear embedder and the loss's own parameters; returns (first loss, last loss, embedder)."""
    torch.manual_seed(0)
    embedder = nn.Linear(x.shape[1], embedding_size)
    optimizer = torch.optim.Adam([*embedder.parameters(), *loss_fn.parameters()], lr=lr)
    first = last = float("nan")
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(embedder(x), labels)
        loss.backward()
        optimizer.step()
        if step == 0:
            first = loss.item()
        last = loss.item()
    return first, last, embedder


def hard_precision_inputs(weights: Tensor, dim: int, seed: int = 0) -> Tensor:
    """Rows at angle 0 and pi to class weight 0, with norms 1e4 and 1e-8, and random rows with those norms."""
    w = weights.detach().float()[0]
    direction = w / w.norm()
    g = torch.Generator().manual_seed(seed)
    random = torch.nn.functional.normalize(torch.randn(2, dim, generator=g), dim=1)
    rows = [direction, -direction, random[0], random[1]]
    return torch.stack([r * s for s in (1e4, 1e-8) for r in rows])


def assert_finite_under_bf16_autocast(
    make_loss: Callable[[], BaseClassWeightLoss], dim: int, labels_for: Callable[[int], Tensor]
) -> None:
    """Finite float32 loss and finite gradients for embeddings in float32 and in bfloat16 under autocast."""
    loss_fn = make_loss()
    base = hard_precision_inputs(loss_fn.class_weights(), dim)
    labels = labels_for(base.shape[0])
    for dtype in (torch.float32, torch.bfloat16):
        emb = base.to(dtype).detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(emb, labels)
        assert loss.dtype == torch.float32 and bool(torch.isfinite(loss)), (dtype, loss)
        loss.backward()
        assert emb.grad is not None and bool(torch.isfinite(emb.grad).all()), dtype
        for p in loss_fn.parameters():
            assert p.dtype == torch.float32 and (p.grad is None or bool(torch.isfinite(p.grad).all()))
        loss_fn.zero_grad()


def assert_gradcheck(loss_fn: BaseClassWeightLoss, emb: Tensor, labels: Tensor, name: str) -> None:
    """``torch.autograd.gradcheck`` of the float64 loss with respect to the embeddings, then to its parameter
    ``name`` (swapped for a leaf tensor during the call)."""
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.detach().clone().requires_grad_(),))
    weights = getattr(loss_fn, name).detach().clone().requires_grad_()

    def of_weights(w: Tensor) -> Tensor:
        saved = loss_fn._parameters[name]
        loss_fn._parameters[name] = w  # type: ignore[assignment]
        try:
            return loss_fn(emb.detach(), labels)
        finally:
            loss_fn._parameters[name] = saved

    assert torch.autograd.gradcheck(of_weights, (weights,))


def assert_same_as_pml(
    ours: BaseClassWeightLoss,
    theirs: nn.Module,
    emb: Tensor,
    labels: Tensor,
    name: str | None = None,
    call_theirs: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
) -> None:
    """Loss and embedding gradient within 1e-6 of pytorch-metric-learning's on the same inputs, and with ``name``
    the gradient of that parameter too. ``call_theirs(theirs, x, labels)`` replaces ``theirs(x, labels)``."""
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    a, b = ours(x1, labels), (call_theirs(theirs, x2, labels) if call_theirs else theirs(x2, labels))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a.backward()
    b.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)
    if name is not None:
        mine, other = getattr(ours, name).grad, getattr(theirs, name).grad
        torch.testing.assert_close(mine, other.to(mine.dtype), rtol=0, atol=1e-6)


def assert_same_as_pml_with_miner(
    make: Callable[[], tuple[nn.Module, BaseClassWeightLoss]], make_miner: Callable[[], Any], name: str = "proxies"
) -> None:
    """On three seeds, ``(theirs, ours) = make()`` with ``theirs``'s parameter ``name`` copied agree within 1e-6
    on the tuples a fresh pytorch-metric-learning miner mines from the batch."""
    for seed in range(3):
        torch.manual_seed(seed)
        theirs, ours = make()
        copy_weights(ours, theirs, name)
        emb, labels = random_batch(seed, n=16, d=5, classes=4)
        mined = make_miner()(emb, labels)
        torch.testing.assert_close(ours(emb, labels, mined), theirs(emb, labels, mined), rtol=0, atol=1e-6)


def assert_identical_embeddings_are_finite(loss_fn: BaseClassWeightLoss) -> None:
    """Six identical embeddings of three classes give a finite loss and a finite gradient."""
    emb = torch.ones(6, loss_fn.embedding_size, requires_grad=True)
    loss = loss_fn(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
