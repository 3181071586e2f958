"""P2SGradLoss against the float64 oracle in tests/reference/p2s_grad.py, sizes under both names, autograd, low
precision, training, errors and pytorch-metric-learning."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import DotProductSimilarity
from dmlkit.losses.p2s_grad import P2SGradLoss
from dmlkit.reducers import SumReducer
from tests.losses.cases import random_batch
from tests.losses.proxy_cases import (
    assert_finite_under_bf16_autocast,
    assert_gradcheck,
    assert_identical_embeddings_are_finite,
    assert_same_as_pml,
    blobs,
    copy_weights,
    pml_losses,
    train,
)
from tests.reference import distances as ref_dist
from tests.reference import p2s_grad as ref


def _oracle(loss_fn: P2SGradLoss, emb: Tensor, labels: Tensor) -> float:
    return ref.p2s_grad_loss(ref_dist.cosine_matrix(emb.tolist(), loss_fn.weight.t().tolist()), labels.tolist())


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("classes", [3, 7])
def test_matches_oracle(classes: int) -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = P2SGradLoss(4, classes).double()
        emb, labels = random_batch(seed, classes=classes, scale=5.0)
        assert loss_fn(emb, labels).item() == pytest.approx(_oracle(loss_fn, emb, labels), rel=1e-10)


def test_values_are_per_sample_for_the_reducer() -> None:
    torch.manual_seed(0)
    loss_fn = P2SGradLoss(4, 3, reducer=SumReducer()).double()
    emb, labels = random_batch(1)
    # the sum over samples of the per-sample class means: batch size times the mean loss
    assert loss_fn(emb, labels).item() == pytest.approx(10 * _oracle(loss_fn, emb, labels), rel=1e-10)


def test_weight_is_normalised_inside_and_never_mutated() -> None:
    torch.manual_seed(0)
    loss_fn = P2SGradLoss(4, 3).double()
    emb, labels = random_batch(2)
    expected = _oracle(loss_fn, emb, labels)
    with torch.no_grad():
        loss_fn.weight.mul_(torch.tensor([3.0, 0.5, 7.0], dtype=torch.float64))
    before = loss_fn.weight.detach().clone()
    assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)
    assert torch.equal(loss_fn.weight.detach(), before)


def test_sizes_under_either_name_and_init() -> None:
    loss_fn = P2SGradLoss(8, 5)
    assert (loss_fn.descriptors_dim, loss_fn.num_classes, loss_fn.embedding_size) == (8, 5, 8)
    assert loss_fn.weight.shape == (8, 5) and [n for n, _ in loss_fn.named_parameters()] == ["weight"]
    torch.testing.assert_close(loss_fn.weight.detach().norm(dim=0), torch.ones(5))
    assert P2SGradLoss(num_classes=5, embedding_size=8).weight.shape == (8, 5)
    assert P2SGradLoss(descriptors_dim=8, num_classes=5).weight.shape == (8, 5)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "P2SGradLoss: `descriptors_dim` must be the same as `embedding_size` (8) when both are given, got 9."
        ),
    ):
        P2SGradLoss(9, 5, embedding_size=8)
    with pytest.raises(TypeError, match=re.escape("P2SGradLoss: `num_classes` is required.")):
        P2SGradLoss(8)


# --------------------------------------------------------------------------------------------- gradients


def test_gradcheck() -> None:
    torch.manual_seed(0)
    loss_fn = P2SGradLoss(3, 3).double()
    emb, labels = random_batch(3, n=5, d=3)
    assert_gradcheck(loss_fn, emb, labels, "weight")


class _SameCosine(type(P2SGradLoss(2, 2).distance)):  # type: ignore[misc]
    """The same distance under another class: the loss takes its generic autograd path."""


@pytest.mark.parametrize("case", ["random", "clamped", "tiny_norms"])
def test_written_out_gradient_equals_autograd_of_the_formula(case: str) -> None:
    torch.manual_seed(0)
    fast = P2SGradLoss(6, 5).double()
    slow = P2SGradLoss(6, 5, distance=_SameCosine()).double()
    with torch.no_grad():
        slow.weight.copy_(fast.weight)
        fast.weight[:, 2] *= 1e-14  # a weight column below the norm floor
        slow.weight[:, 2] *= 1e-14
    emb, labels = random_batch(5, n=9, d=6)
    if case == "clamped":  # rows parallel to class columns: cos rounds to just above 1 or below -1
        columns = fast.weight.detach().t()
        # several scales of one column, so that at least one rounds past -1 whatever the normalisation's rounding
        scales = torch.tensor([[3.0], [5.0], [7.0]], dtype=columns.dtype)
        emb = torch.cat([columns[[0, 1, 3]] * 3.0, -columns[[4, 4, 4]] * scales, emb[:3]])
        labels = torch.tensor([0, 1, 3, 0, 2, 4, *labels[:3].tolist()])
        assert bool((slow.get_logits(emb).abs() > 1).any())  # the clamp is active on some cell
    if case == "tiny_norms":
        emb = emb.clone()
        emb[[1, 4]] *= 1e-14
    results = []
    for loss_fn in (fast, slow):
        x = emb.clone().requires_grad_()
        value = loss_fn(x, labels)
        value.backward()
        results.append((value.detach(), x.grad, loss_fn.weight.grad.clone()))
        loss_fn.weight.grad = None
    for got, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------- edge cases


def test_identical_embeddings_are_finite() -> None:
    assert_identical_embeddings_are_finite(P2SGradLoss(4, 3))


def test_bf16_autocast_is_finite() -> None:
    assert_finite_under_bf16_autocast(lambda: P2SGradLoss(6, 3), 6, lambda n: torch.arange(n) % 3)


def test_proxies_train() -> None:
    x, labels = blobs(0)
    torch.manual_seed(0)
    loss_fn = P2SGradLoss(8, 4)
    first, last, embedder = train(loss_fn, x, labels, 8)
    assert last < 0.5 * first
    with torch.no_grad():
        nearest = loss_fn.get_logits(embedder(x)).argmax(dim=1)
    assert torch.equal(nearest, labels)


# --------------------------------------------------------------------------------------------- errors


def test_errors() -> None:
    with pytest.raises(
        ValueError, match=re.escape("P2SGradLoss: `distance` must be a CosineSimilarity, got 'DotProductSimilarity'.")
    ):
        P2SGradLoss(4, 3, distance=DotProductSimilarity())
    emb, labels = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(
        ValueError, match=re.escape("P2SGradLoss: `indices_tuple` must be None: this loss scores every sample")
    ):
        P2SGradLoss(4, 3)(emb, labels, (torch.tensor([0]), torch.tensor([3]), torch.tensor([1])))
    with pytest.raises(ValueError, match=re.escape("P2SGradLoss: `labels` must be class indices in [0, 3), got 3.")):
        P2SGradLoss(4, 3)(emb, labels + 1)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_pml_parity(scale: float) -> None:
    losses = pml_losses()
    for seed in range(3):
        torch.manual_seed(seed)
        theirs = losses.P2SGradLoss(6, 5)
        ours = P2SGradLoss(6, 5)
        copy_weights(ours, theirs, "weight")
        emb, labels = random_batch(seed, n=16, d=6, classes=5, scale=scale)
        assert_same_as_pml(ours, theirs, emb, labels)
        # pytorch-metric-learning rescales `weight` in place and differentiates the unit columns as they are;
        # here they are normalised in the graph, so each column's gradient is theirs without its radial part
        w, g = ours.weight.detach(), theirs.weight.grad
        tangential = g - w * (w * g).sum(dim=0, keepdim=True)
        torch.testing.assert_close(ours.weight.grad, tangential, rtol=0, atol=1e-6)
