"""The margin-softmax losses' shared cross-entropy (``margin_softmax.margin_cross_entropy``): its written-out
backward against autograd of ``F.cross_entropy`` on the same replaced logits, gradcheck, extreme logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.losses.margin_softmax import margin_cross_entropy


def _problem(seed: int, n: int = 7, classes: int = 5, scale: float = 3.0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * scale
    target = torch.randn(n, generator=g, dtype=torch.float64) * scale
    return logits, target, torch.randint(0, classes, (n,), generator=g)


def _reference(logits: Tensor, target: Tensor | None, labels: Tensor) -> Tensor:
    if target is not None:
        logits = logits.scatter(1, labels.unsqueeze(1), target.unsqueeze(1))
    return F.cross_entropy(logits, labels, reduction="none")


@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("scale", [1.0, 64.0])
def test_values_and_gradients_equal_cross_entropy_of_the_replaced_logits(with_target: bool, scale: float) -> None:
    logits, target, labels = _problem(0, scale=scale)
    if scale == 64.0:  # replaced targets far below the rest: a log-probability of about -200
        target = target - 3 * scale
    weights = torch.rand(len(labels), dtype=torch.float64)  # a reducer's per-sample weights
    results = []
    for fn in (margin_cross_entropy, None):
        x, t = logits.clone().requires_grad_(), target.clone().requires_grad_()
        if fn is None:
            values = _reference(x, t if with_target else None, labels)
        else:
            values = fn(x, labels, t if with_target else None, None).values
        (values * weights).sum().backward()
        results.append((values.detach(), x.grad, t.grad if with_target else None))
    for got, expected in zip(*results, strict=True):
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck() -> None:
    logits, target, labels = _problem(1)

    def replaced(x: Tensor, t: Tensor) -> Tensor:
        return margin_cross_entropy(x, labels, t, None).values

    def plain(x: Tensor) -> Tensor:
        return margin_cross_entropy(x, labels, None, None).values

    assert torch.autograd.gradcheck(replaced, (logits.requires_grad_(), target.requires_grad_()))
    assert torch.autograd.gradcheck(plain, (logits.detach().requires_grad_(),))


def test_extreme_float32_logits_stay_finite() -> None:
    logits, target, labels = (t.float() if t.is_floating_point() else t for t in _problem(2, scale=64.0))
    x, t = logits.requires_grad_(), (target - 500).requires_grad_()
    values = margin_cross_entropy(x, labels, t, None).values
    values.sum().backward()
    assert bool(torch.isfinite(values).all()) and bool((values > 400).all())
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(t.grad).all())


def test_second_derivative_is_refused() -> None:
    logits, target, labels = _problem(3)
    x = logits.requires_grad_()
    (grad,) = torch.autograd.grad(margin_cross_entropy(x, labels, None, None).values.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()
