"""SoftTripleLoss against the float64 oracle in tests/reference/soft_triple.py, the blocked path against the
plain one, autograd, low precision, training, errors and pytorch-metric-learning."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import DotProductSimilarity, LpDistance
from dmlkit.losses import soft_triple
from dmlkit.losses.soft_triple import SoftTripleLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.regularizers import SparseCentersRegularizer
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
from tests.reference import soft_triple as ref

# (centers_per_class, la, gamma, margin)
OPTIONS = [(10, 20.0, 0.1, 0.01), (3, 5.0, 0.5, 0.2), (1, 8.0, 0.1, 0.0)]


def _oracle(loss_fn: SoftTripleLoss, emb: Tensor, labels: Tensor, weights: list[float] | None = None) -> float:
    centers = loss_fn.fc.t().tolist()
    if loss_fn.distance.normalize_embeddings:
        mat = ref_dist.cosine_matrix(emb.tolist(), centers)
    else:
        mat = ref_dist.dot_matrix(emb.tolist(), centers, normalize=False)
    k = loss_fn.centers_per_class
    return ref.soft_triple_loss(
        mat, labels.tolist(), loss_fn.num_classes, k, loss_fn.la, loss_fn.gamma, loss_fn.margin, weights
    )


def _make(options: tuple[int, float, float, float], classes: int = 3, dim: int = 4, **kwargs: object) -> SoftTripleLoss:
    k, la, gamma, margin = options
    return SoftTripleLoss(classes, dim, centers_per_class=k, la=la, gamma=gamma, margin=margin, **kwargs).double()  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("distance", ["cosine", "dot_raw"])
def test_matches_oracle(options: tuple[int, float, float, float], distance: str) -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        kwargs = {"distance": DotProductSimilarity(normalize_embeddings=False)} if distance == "dot_raw" else {}
        loss_fn = _make(options, **kwargs)
        emb, labels = random_batch(seed, scale=0.5 if distance == "dot_raw" else 1.0)
        assert loss_fn(emb, labels).item() == pytest.approx(_oracle(loss_fn, emb, labels), rel=1e-10)


def test_get_logits_are_the_relaxed_similarities() -> None:
    torch.manual_seed(0)
    loss_fn = _make(OPTIONS[1])
    emb, _ = random_batch(4)
    mat = ref_dist.cosine_matrix(emb.tolist(), loss_fn.fc.t().tolist())
    expected = torch.tensor(ref.relaxed_similarities(mat, 3, 3, 0.5), dtype=torch.float64)
    torch.testing.assert_close(loss_fn.get_logits(emb), expected, rtol=1e-10, atol=1e-12)


def test_papers_regularizer_is_the_sparse_centers_weight_regularizer() -> None:
    torch.manual_seed(0)
    regularizer = SparseCentersRegularizer(3, 4)
    loss_fn = _make((4, 20.0, 0.1, 0.01), weight_regularizer=regularizer, weight_reg_weight=0.2)
    emb, labels = random_batch(5)
    # the paper's R: mean over same-class centre pairs t < t' of sqrt(2 - 2 cos)
    centers = loss_fn.fc.t().tolist()
    cos = ref_dist.cosine_matrix(centers, centers)
    pairs = [math.sqrt(2 - 2 * cos[c * 4 + t][c * 4 + u]) for c in range(3) for t in range(4) for u in range(t + 1, 4)]
    expected = _oracle(loss_fn, emb, labels) + 0.2 * sum(pairs) / (3 * 4 * 3)
    assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_defaults_shapes_and_init() -> None:
    loss_fn = SoftTripleLoss(50, 16)
    assert (loss_fn.centers_per_class, loss_fn.la, loss_fn.gamma, loss_fn.margin) == (10, 20, 0.1, 0.01)
    assert loss_fn.fc.shape == (16, 500) and [n for n, _ in loss_fn.named_parameters()] == ["fc"]
    assert loss_fn.class_weights().shape == (500, 16)
    # Kaiming-uniform with a = sqrt(5) on a (16, 500) tensor: uniform in +-1/sqrt(500)
    bound = 1 / math.sqrt(500)
    w = loss_fn.fc.detach()
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_mined_samples_weight_the_losses() -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = _make(OPTIONS[1])
        emb, labels = random_batch(seed, n=12)
        mined = TripletMarginMiner(margin=0.5)(emb, labels)
        counts = torch.bincount(torch.cat(list(mined)), minlength=12).tolist()
        weights = [c / max(counts) for c in counts]
        assert loss_fn(emb, labels, mined).item() == pytest.approx(_oracle(loss_fn, emb, labels, weights), rel=1e-10)


# --------------------------------------------------------------------------------------------- blocked path


@pytest.mark.parametrize("distance", ["cosine", "dot_squared"])
@pytest.mark.parametrize("block_elements", [60, 1 << 24])
def test_blocked_relaxation_equals_plain_autograd(
    monkeypatch: pytest.MonkeyPatch, distance: str, block_elements: int
) -> None:
    # cosine goes through the hand-written blocked backward, a squared inner product through checkpointed blocks;
    # both against autograd through one unblocked (batch, classes, K) computation
    torch.manual_seed(0)
    kwargs = {"distance": DotProductSimilarity(power=2)} if distance == "dot_squared" else {}
    loss_fn = _make((3, 20.0, 0.1, 0.01), classes=7, **kwargs)
    emb, _ = random_batch(6, n=10, classes=7)
    upstream = torch.randn(10, 7, dtype=torch.float64)
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    w1, w2 = loss_fn.fc.detach().clone().requires_grad_(), loss_fn.fc.detach().clone().requires_grad_()
    # 10 samples x 3 centres = 30 similarities per class: 60 elements make 2 classes per block, 4 blocks
    monkeypatch.setattr(soft_triple, "_BLOCK_ELEMENTS", block_elements)
    a = loss_fn._relaxed_similarity(x1, w1.t())
    b = loss_fn._relax_block(x2, w2.t())
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (a * upstream).sum().backward()
    (b * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------- gradients


def test_gradcheck() -> None:
    torch.manual_seed(0)
    loss_fn = _make((2, 4.0, 0.5, 0.1), classes=3, dim=3)
    emb, labels = random_batch(7, n=5, d=3)
    assert_gradcheck(loss_fn, emb, labels, "fc")


# --------------------------------------------------------------------------------------------- edge cases


def test_identical_embeddings_and_large_scale_are_finite() -> None:
    assert_identical_embeddings_are_finite(SoftTripleLoss(3, 4, la=1e4, gamma=1e-4))


def test_bf16_autocast_is_finite() -> None:
    assert_finite_under_bf16_autocast(lambda: SoftTripleLoss(3, 6), 6, lambda n: torch.arange(n) % 3)


def test_proxies_train() -> None:
    x, labels = blobs(0)
    loss_fn = SoftTripleLoss(4, 8, centers_per_class=3)
    first, last, embedder = train(loss_fn, x, labels, 8)
    assert last < 0.5 * first
    with torch.no_grad():
        nearest = loss_fn.get_logits(embedder(x)).argmax(dim=1)
    assert torch.equal(nearest, labels)


# --------------------------------------------------------------------------------------------- errors


def test_errors() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "SoftTripleLoss: `distance` must be a similarity (higher is closer), e.g. CosineSimilarity(), "
            "got 'LpDistance'."
        ),
    ):
        SoftTripleLoss(3, 4, distance=LpDistance())
    with pytest.raises(
        ValueError, match=re.escape("SoftTripleLoss: `centers_per_class` must be an integer >= 1, got 0.")
    ):
        SoftTripleLoss(3, 4, centers_per_class=0)
    with pytest.raises(ValueError, match=re.escape("SoftTripleLoss: `gamma` must be a number > 0, got 0.")):
        SoftTripleLoss(3, 4, gamma=0)
    with pytest.raises(ValueError, match=re.escape("SoftTripleLoss: `la` must be a number > 0, got -1.")):
        SoftTripleLoss(3, 4, la=-1)
    with pytest.raises(ValueError, match=re.escape("SoftTripleLoss: `margin` must be a number >= 0, got -0.5.")):
        SoftTripleLoss(3, 4, margin=-0.5)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("options", OPTIONS)
def test_pml_parity(options: tuple[int, float, float, float]) -> None:
    losses = pml_losses()
    k, la, gamma, margin = options
    for seed in range(2):
        torch.manual_seed(seed)
        theirs = losses.SoftTripleLoss(5, 6, centers_per_class=k, la=la, gamma=gamma, margin=margin)
        ours = SoftTripleLoss(5, 6, centers_per_class=k, la=la, gamma=gamma, margin=margin)
        copy_weights(ours, theirs, "fc")
        emb, labels = random_batch(seed, n=16, d=6, classes=5)
        assert_same_as_pml(ours, theirs, emb, labels, "fc")
        torch.testing.assert_close(ours.get_logits(emb), theirs.get_logits(emb), rtol=0, atol=1e-6)
    # pytorch-metric-learning keeps 1 / gamma under the name gamma; dmlkit keeps the argument
    assert theirs.gamma == pytest.approx(1 / gamma) and ours.gamma == gamma


def test_pml_parity_with_regularizer_and_miner() -> None:
    losses = pml_losses()
    regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")
    miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(2):
        torch.manual_seed(seed)
        theirs = losses.SoftTripleLoss(
            4,
            5,
            centers_per_class=3,
            weight_regularizer=regularizers.SparseCentersRegularizer(4, 3),
            weight_reg_weight=0.2,
        )
        ours = SoftTripleLoss(
            4, 5, centers_per_class=3, weight_regularizer=SparseCentersRegularizer(4, 3), weight_reg_weight=0.2
        )
        copy_weights(ours, theirs, "fc")
        emb, labels = random_batch(seed, n=16, d=5, classes=4)
        mined = miners.TripletMarginMiner(0.5)(emb, labels)
        torch.testing.assert_close(ours(emb, labels), theirs(emb, labels), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours(emb, labels, mined), theirs(emb, labels, mined), rtol=0, atol=1e-6)
