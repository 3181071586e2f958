"""Checks shared by the margin-softmax loss tests: random problems, gradcheck over embeddings and weights,
bfloat16 autocast at extreme norms and angles, PML parity, and "the class weights train"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dmlkit.losses.class_weights import BaseClassWeightLoss
from tests.reference.margin_softmax import miner_weights, weighted_mean

Matrix = list[list[float]]
#: a float64 oracle's per-sample values from (embeddings, labels, the loss's weights ``W``)
Oracle = Callable[[Matrix, list[int], Matrix], list[float]]


def problem(seed: int, n: int = 12, d: int = 5, classes: int = 4, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """``n`` float64 embeddings (times ``scale``) and labels in ``[0, classes)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def weights(loss: BaseClassWeightLoss, name: str = "W") -> Matrix:
    return getattr(loss, name).detach().double().tolist()


def assert_matches_oracle(make_loss: Callable[[], BaseClassWeightLoss], oracle: Oracle) -> None:
    """On three random problems (embeddings of norm ~4), the loss is the mean of the oracle's values."""
    for seed in range(3):
        emb, labels = problem(seed, scale=2.0)
        loss_fn = make_loss()
        values = oracle(emb.tolist(), labels.tolist(), weights(loss_fn))
        assert loss_fn(emb, labels).item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def assert_miner_output_weights_the_samples(
    loss_fn: BaseClassWeightLoss, oracle: Oracle, indices_tuple: tuple[Tensor, ...]
) -> None:
    """With a miner's ``indices_tuple`` the loss is the oracle's values weighted by how often each sample is mined."""
    emb, labels = problem(4)
    values = oracle(emb.tolist(), labels.tolist(), weights(loss_fn))
    expected = weighted_mean(values, miner_weights([t.tolist() for t in indices_tuple], len(labels)))
    assert loss_fn(emb, labels, indices_tuple).item() == pytest.approx(expected, rel=1e-10)


def gradcheck(loss: BaseClassWeightLoss, emb: Tensor, labels: Tensor, name: str = "W", **kwargs: Any) -> bool:
    """``torch.autograd.gradcheck`` of the loss with respect to the embeddings and the class weights."""
    w = getattr(loss, name).detach().double().requires_grad_()

    def fn(x: Tensor, w: Tensor) -> Tensor:
        return torch.func.functional_call(loss, {name: w}, (x, labels), kwargs)

    return torch.autograd.gradcheck(fn, (emb.clone().requires_grad_(), w))


def pml_copy(pml_name: str, ours: BaseClassWeightLoss, **kwargs: Any) -> Any:
    """pytorch-metric-learning's loss built with ``kwargs`` and our loss's weights copied in (skip if missing)."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses", reason="parity needs pytorch-metric-learning")
    pml = getattr(pml_losses, pml_name)(**kwargs)
    with torch.no_grad():
        pml.W.data = ours.W.detach().clone()
    return pml


def assert_same_as_pml(ours: nn.Module, pml: nn.Module, emb: Tensor, labels: Tensor, indices: Any = None) -> None:
    """Loss, embedding gradient and weight gradient agree within 1e-6 in float64."""
    ours, emb_ours, emb_pml = ours.double(), emb.clone().requires_grad_(), emb.clone().requires_grad_()
    value_ours, value_pml = ours(emb_ours, labels, indices), pml(emb_pml, labels, indices)
    value_ours.backward()
    value_pml.backward()
    assert value_ours.item() == pytest.approx(value_pml.item(), rel=1e-6, abs=1e-9)
    assert torch.allclose(emb_ours.grad, emb_pml.grad, rtol=1e-6, atol=1e-9)
    assert torch.allclose(ours.W.grad, pml.W.grad, rtol=1e-6, atol=1e-9)


def extreme_batches(loss: BaseClassWeightLoss, dim: int) -> dict[str, Tensor]:
    """Float32 embeddings at norm 1e4 and 1e-8, and at angle exactly 0 and pi to a weight of the label's class
    (exact in bfloat16 when the weights are)."""
    g = torch.Generator().manual_seed(3)
    rows = loss.class_weights().detach().float()
    k = rows.shape[0] // loss.num_classes  # sub-centres per class
    own = rows[torch.arange(loss.num_classes) * k]
    random = torch.randn(loss.num_classes, dim, generator=g)
    return {"large": random * 1e4, "tiny": random * 1e-8, "angle_0": own * 2.0, "angle_pi": -own * 2.0}


def assert_finite_under_bf16_autocast(make_loss: Callable[[], BaseClassWeightLoss], dim: int = 6) -> None:
    """Under ``torch.autocast("cpu", bfloat16)`` the loss is a finite float32 with finite gradients."""
    for case in ("large", "tiny", "angle_0", "angle_pi"):
        torch.manual_seed(0)
        loss_fn = make_loss()
        with torch.no_grad():
            for parameter in loss_fn.parameters():
                parameter.copy_(parameter.bfloat16().float())
        batch = extreme_batches(loss_fn, dim)[case]
        raw = batch.clone().requires_grad_()
        labels = torch.arange(len(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss_fn(raw.to(torch.bfloat16), labels)
        value.backward()
        assert value.dtype == torch.float32, case
        assert bool(torch.isfinite(value)), case
        assert bool(torch.isfinite(raw.grad).all()), case
        assert all(bool(torch.isfinite(p.grad).all()) for p in loss_fn.parameters()), case


def blobs(seed: int = 0, classes: int = 4, dim: int = 8, per_class: int = 16) -> tuple[Tensor, Tensor]:
    """Separable Gaussian blobs: class means 4 apart along the axes, unit noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    means = torch.eye(dim)[:classes] * 4.0
    return means[labels] + torch.randn(len(labels), dim, generator=g), labels


def nearest_class(loss: BaseClassWeightLoss, emb: Tensor) -> Tensor:
    """The class whose weight (best sub-centre) is closest to each embedding by the loss's own distance."""
    mat = loss.distance(emb, loss.class_weights().to(emb.dtype))
    mat = mat.view(len(emb), loss.num_classes, -1)
    return mat.amax(dim=2).argmax(dim=1) if loss.distance.is_inverted else mat.amin(dim=2).argmin(dim=1)


def assert_class_weights_train(make_loss: Callable[[int, int], BaseClassWeightLoss], steps: int = 200) -> None:
    """200 Adam steps on separable blobs, learning a linear embedder and the loss's weights: the loss drops
    and every sample ends nearest its own class's weight (and is classified correctly by the logits)."""
    torch.manual_seed(0)
    x, labels = blobs()
    embedder, loss_fn = nn.Linear(x.shape[1], 8), make_loss(4, 8)
    optimizer = torch.optim.Adam([*embedder.parameters(), *loss_fn.parameters()], lr=0.01)
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs would cost more than the arithmetic
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            value = loss_fn(embedder(x), labels)
            value.backward()
            optimizer.step()
            history.append(value.item())
    finally:
        torch.set_num_threads(threads)
    assert history[-1] < 0.5 * history[0], (history[0], history[-1])
    with torch.no_grad():
        emb = embedder(x)
        assert torch.equal(nearest_class(loss_fn, emb), labels)
        assert torch.equal(loss_fn.get_logits(emb).argmax(dim=1), labels)
