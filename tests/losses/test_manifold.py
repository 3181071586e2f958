"""ManifoldLoss against the float64 oracle in tests/reference/manifold.py (Gauss-Jordan inverse), the proxy
assignment spellings, autograd, low precision, training, errors and pytorch-metric-learning."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor, nn

from dmlkit.distances import LpDistance
from dmlkit.losses.manifold import ManifoldLoss
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
from tests.reference import manifold as ref

# (lambdaC, alpha, margin)
OPTIONS = [(1.0, 0.8, 5e-4), (0.0, 0.99, 0.0), (math.inf, 0.5, 0.01), (2.5, 0.8, 0.05)]


def _make(options: tuple[float, float, float], k: int = 3, dim: int = 4) -> ManifoldLoss:
    lambda_c, alpha, margin = options
    return ManifoldLoss(dim, K=k, lambdaC=lambda_c, alpha=alpha, margin=margin).double()


def _oracle(loss_fn: ManifoldLoss, emb: Tensor, labels: Tensor) -> float:
    return ref.manifold_loss(
        emb.tolist(), loss_fn.proxies.tolist(), labels.tolist(), loss_fn.lambdaC, loss_fn.alpha, loss_fn.margin
    )


# --------------------------------------------------------------------------------------------- oracle


def test_oracle_inverse_is_an_inverse() -> None:
    m = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]]
    inv = ref.invert(m)
    for i in range(3):
        for j in range(3):
            assert sum(m[i][t] * inv[t][j] for t in range(3)) == pytest.approx(float(i == j), abs=1e-14)


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_oracle(options: tuple[float, float, float]) -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = _make(options)
        emb, labels = random_batch(seed, n=8)
        assert loss_fn(emb, labels).item() == pytest.approx(_oracle(loss_fn, emb, labels), rel=1e-9, abs=1e-12)


def test_pml_spelling_of_the_assignment_is_the_same_as_labels() -> None:
    torch.manual_seed(0)
    loss_fn = _make(OPTIONS[0])
    emb, labels = random_batch(1, n=8)
    assert loss_fn(emb, indices_tuple=labels).item() == loss_fn(emb, labels).item()


def test_random_assignment_uses_every_proxy_and_the_generator() -> None:
    torch.manual_seed(0)
    loss_fn = _make(OPTIONS[0], k=4)
    emb, _ = random_batch(2, n=9)
    drawn = [loss_fn._random_proxies(emb) for _ in range(5)]
    assert all(sorted(set(d.tolist())) == [0, 1, 2, 3] and len(d) == 9 for d in drawn)
    loss_fn.generator = torch.Generator().manual_seed(3)
    first = loss_fn(emb)
    loss_fn.generator = torch.Generator().manual_seed(3)
    assignment = loss_fn._random_proxies(emb)
    assert first.item() == pytest.approx(_oracle(loss_fn, emb, assignment), rel=1e-9)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("lambda_c", [1.0, 0.0, math.inf])
def test_gradcheck(lambda_c: float) -> None:
    torch.manual_seed(0)
    loss_fn = _make((lambda_c, 0.8, 0.0), k=2, dim=3)
    emb, labels = random_batch(3, n=4, d=3, classes=2)
    assert_gradcheck(loss_fn, emb, labels, "proxies")


# --------------------------------------------------------------------------------------------- edge cases


def test_identical_embeddings_are_finite() -> None:
    assert_identical_embeddings_are_finite(ManifoldLoss(4, K=3))


def test_bf16_autocast_is_finite() -> None:
    assert_finite_under_bf16_autocast(lambda: ManifoldLoss(6, K=3), 6, lambda n: torch.arange(n) % 3)


def test_proxies_train() -> None:
    x, labels = blobs(0)
    torch.manual_seed(0)
    loss_fn = ManifoldLoss(8, K=4, alpha=0.5)
    first, last, embedder = train(loss_fn, x, labels, 8)
    assert first > 1 and last < 0.1 * first
    # nearest by the loss's own similarity: the random-walk similarity to each proxy, and its context cosine
    with torch.no_grad():
        n = len(labels)
        nodes = torch.cat([embedder(x), loss_fn.proxies])
        affinity = torch.exp(loss_fn.distance(nodes).clamp(min=0) / 0.5).fill_diagonal_(0)
        scale = affinity.sum(1).rsqrt()
        manifold = torch.linalg.inv(torch.eye(n + 4) - 0.5 * scale[:, None] * affinity * scale[None, :])
        rows = torch.nn.functional.normalize(manifold, dim=1)
    assert torch.equal(manifold[:n, n:].argmax(dim=1), labels)
    assert torch.equal((rows[:n] @ rows[n:].T).argmax(dim=1), labels)


# --------------------------------------------------------------------------------------------- sizes and errors


def test_sizes_under_either_name() -> None:
    loss_fn = ManifoldLoss(8)
    assert (loss_fn.K, loss_fn.l, loss_fn.num_classes, loss_fn.embedding_size) == (50, 8, 50, 8)
    assert loss_fn.proxies.shape == (50, 8) and (loss_fn.lambdaC, loss_fn.alpha, loss_fn.margin) == (1.0, 0.8, 5e-4)
    assert ManifoldLoss(num_classes=5, embedding_size=8).proxies.shape == (5, 8)
    assert ManifoldLoss(8, 5, num_classes=5).proxies.shape == (5, 8)
    with pytest.raises(
        ValueError,
        match=re.escape("ManifoldLoss: `K` must be the same as `num_classes` (6) when both are given, got 5."),
    ):
        ManifoldLoss(8, 5, num_classes=6)
    with pytest.raises(TypeError, match=re.escape("ManifoldLoss: `embedding_size` is required.")):
        ManifoldLoss()


def test_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("ManifoldLoss: `lambdaC` must be a number >= 0, got -1.")):
        ManifoldLoss(4, lambdaC=-1)
    with pytest.raises(ValueError, match=re.escape("ManifoldLoss: `alpha` must be a number > 0 and < 1, got 1.")):
        ManifoldLoss(4, alpha=1)
    with pytest.raises(ValueError, match=re.escape("ManifoldLoss: `margin` must be a number >= 0, got -0.1.")):
        ManifoldLoss(4, margin=-0.1)
    with pytest.raises(ValueError, match=re.escape("ManifoldLoss: `distance` must be a similarity (higher is closer)")):
        ManifoldLoss(4, distance=LpDistance())
    loss_fn = ManifoldLoss(4, K=3)
    emb = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "ManifoldLoss: `embeddings` must be at least K=3 embeddings when no `labels` are given "
            "(each proxy needs one), got 2."
        ),
    ):
        loss_fn(emb[:2])
    with pytest.raises(
        TypeError,
        match=re.escape(
            "ManifoldLoss: `indices_tuple` must be None or a 1-D tensor of one proxy index per embedding "
            "(pairs or triplets have no use here), got 'tuple'."
        ),
    ):
        loss_fn(emb, labels, (labels, labels, labels))
    with pytest.raises(
        ValueError, match=re.escape("ManifoldLoss: `indices_tuple` must be None when `labels` are given")
    ):
        loss_fn(emb, labels, labels)
    with pytest.raises(ValueError, match=re.escape("ManifoldLoss: `labels` must be class indices in [0, 3), got 3.")):
        loss_fn(emb, indices_tuple=labels + 1)


# --------------------------------------------------------------------------------------------- PML parity


def _pml_call(theirs: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """pytorch-metric-learning takes the proxy assignment as ``indices_tuple`` and returns a 1-element tensor."""
    return theirs(x, indices_tuple=labels).reshape(())


@pytest.mark.parametrize("options", [o for o in OPTIONS if not math.isinf(o[0])])
def test_pml_parity(options: tuple[float, float, float]) -> None:
    losses = pml_losses()
    lambda_c, alpha, margin = options
    for seed in range(3):
        torch.manual_seed(seed)
        theirs = losses.ManifoldLoss(6, K=4, lambdaC=lambda_c, alpha=alpha, margin=margin)
        ours = ManifoldLoss(6, K=4, lambdaC=lambda_c, alpha=alpha, margin=margin)
        copy_weights(ours, theirs, "proxies")
        emb, labels = random_batch(seed, n=16, d=6, classes=4)
        # pytorch-metric-learning inverts in float32 even for float64 input: agreement is within that
        # precision; it leaves its proxies in float32 (torch.cat promotes them): their gradient is compared in float64
        assert_same_as_pml(ours, theirs, emb, labels, "proxies", _pml_call)


def test_pml_rejects_labels_and_fails_for_infinite_lambda() -> None:
    # pytorch-metric-learning documents lambdaC=inf as "context loss only" but computes 0 + inf * context
    losses = pml_losses()
    torch.manual_seed(0)
    theirs = losses.ManifoldLoss(6, K=4, lambdaC=math.inf)
    ours = ManifoldLoss(6, K=4, lambdaC=math.inf)
    copy_weights(ours, theirs, "proxies")
    emb, labels = random_batch(0, n=16, d=6, classes=4)
    assert not bool(torch.isfinite(theirs(emb, indices_tuple=labels)).all())
    assert ours(emb, labels).item() == pytest.approx(_oracle(ours, emb, labels), rel=1e-9)
    with pytest.raises(Exception):  # noqa: B017 (pytorch-metric-learning raises a bare Exception subclass)
        theirs(emb, labels)
