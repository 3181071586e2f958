"""ProxyAnchorLoss against the float64 oracle in tests/reference/proxy_anchor.py, autograd, low precision,
training, errors and pytorch-metric-learning."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses.proxy_anchor import ProxyAnchorLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import DivisorReducer, MeanReducer
from tests.losses.cases import random_batch
from tests.losses.proxy_cases import (
    assert_finite_under_bf16_autocast,
    assert_gradcheck,
    assert_identical_embeddings_are_finite,
    assert_same_as_pml,
    assert_same_as_pml_with_miner,
    blobs,
    copy_weights,
    pml_losses,
    train,
)
from tests.reference import distances as ref_dist
from tests.reference import proxy_anchor as ref

OPTIONS = [(0.1, 32.0), (0.0, 4.0), (0.3, 16.0)]


def _oracle(loss_fn: ProxyAnchorLoss, emb: Tensor, labels: Tensor, offsets: list[float] | None = None) -> float:
    proxies = loss_fn.proxies.tolist()
    higher = loss_fn.distance.higher_is_closer
    mat = ref_dist.cosine_matrix(emb.tolist(), proxies) if higher else ref_dist.lp_matrix(emb.tolist(), proxies)
    return ref.proxy_anchor_loss(
        mat, labels.tolist(), loss_fn.num_classes, loss_fn.margin, loss_fn.alpha, higher, offsets
    )


def _weights(indices: tuple[Tensor, ...], size: int) -> list[float]:
    counts = [0] * size
    for t in indices:
        for i in t.tolist():
            counts[i] += 1
    return [c / max(counts) for c in counts]


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", ["cosine", "lp"])
@pytest.mark.parametrize("margin,alpha", OPTIONS)
def test_matches_oracle(distance: str, margin: float, alpha: float) -> None:
    make = CosineSimilarity if distance == "cosine" else LpDistance
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = ProxyAnchorLoss(5, 4, margin=margin, alpha=alpha, distance=make()).double()
        # 5 classes, labels in [0, 3): two proxies have no positives (they count in the negative term only)
        emb, labels = random_batch(seed)
        expected = _oracle(loss_fn, emb, labels)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_groups_hold_one_value_per_proxy_with_the_papers_divisors() -> None:
    torch.manual_seed(0)
    loss_fn = ProxyAnchorLoss(6, 4).double()
    emb, labels = random_batch(1)  # labels in [0, 3)
    terms = loss_fn.compute_terms(emb, labels, None, emb, labels)
    assert set(terms) == {"pos_loss", "neg_loss"}
    pos, neg = terms["pos_loss"], terms["neg_loss"]
    assert pos.divisor == 3 and neg.divisor == 6
    assert torch.equal(pos.anchors, torch.arange(6)) and torch.equal(neg.anchors, torch.arange(6))
    assert bool((pos.values[3:] == 0).all())  # no positives: no positive term
    mat = ref_dist.cosine_matrix(emb.tolist(), loss_fn.proxies.tolist())
    want_pos, want_neg, _ = ref.proxy_anchor_terms(mat, labels.tolist(), 6, 0.1, 32.0)
    torch.testing.assert_close(pos.values, torch.tensor(want_pos, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(neg.values, torch.tensor(want_neg, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # another reducer sees the same per-proxy values: MeanReducer averages each group over the proxies
    mean = ProxyAnchorLoss(6, 4, reducer=MeanReducer()).double()
    with torch.no_grad():
        mean.proxies.copy_(loss_fn.proxies)
    assert mean(emb, labels).item() == pytest.approx(sum(want_pos) / 6 + sum(want_neg) / 6, rel=1e-10)


def test_defaults() -> None:
    loss_fn = ProxyAnchorLoss(1000, 64)
    assert (loss_fn.margin, loss_fn.alpha) == (0.1, 32)
    assert isinstance(loss_fn.distance, CosineSimilarity) and isinstance(loss_fn.reducer, DivisorReducer)
    assert loss_fn.proxies.shape == (1000, 64) and [n for n, _ in loss_fn.named_parameters()] == ["proxies"]
    # Kaiming-normal with mode fan_out: fan_out of a (1000, 64) tensor is 1000, std = sqrt(2 / 1000)
    assert float(loss_fn.proxies.detach().std()) == pytest.approx(math.sqrt(2 / 1000), rel=0.03)
    assert abs(float(loss_fn.proxies.detach().mean())) < 0.002


def test_mined_samples_offset_their_exponents() -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        loss_fn = ProxyAnchorLoss(3, 4, alpha=8).double()
        emb, labels = random_batch(seed, n=12)
        mined = TripletMarginMiner(margin=0.5)(emb, labels)
        assert mined.anchors.numel() > 0
        offsets = [w - 1 for w in _weights(tuple(mined), 12)]
        assert loss_fn(emb, labels, mined).item() == pytest.approx(_oracle(loss_fn, emb, labels, offsets), rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_gradcheck(distance: str) -> None:
    torch.manual_seed(0)
    make = CosineSimilarity if distance == "cosine" else LpDistance
    loss_fn = ProxyAnchorLoss(3, 3, alpha=4, distance=make()).double()
    emb, labels = random_batch(2, n=5, d=3)
    assert_gradcheck(loss_fn, emb, labels, "proxies")


# --------------------------------------------------------------------------------------------- edge cases


def test_one_class_batch() -> None:
    torch.manual_seed(0)
    loss_fn = ProxyAnchorLoss(3, 4).double()
    emb = random_batch(3, n=4)[0].requires_grad_()
    labels = torch.ones(4, dtype=torch.long)
    loss = loss_fn(emb, labels)
    loss.backward()
    assert loss.item() == pytest.approx(_oracle(loss_fn, emb.detach(), labels), rel=1e-10)
    assert bool(torch.isfinite(emb.grad).all())


def test_identical_embeddings_and_large_alpha_are_finite() -> None:
    assert_identical_embeddings_are_finite(ProxyAnchorLoss(3, 4, alpha=1e4))


def test_bf16_autocast_is_finite() -> None:
    assert_finite_under_bf16_autocast(lambda: ProxyAnchorLoss(3, 6), 6, lambda n: torch.arange(n) % 3)


def test_proxies_train() -> None:
    x, labels = blobs(0)
    loss_fn = ProxyAnchorLoss(4, 8)
    first, last, embedder = train(loss_fn, x, labels, 8)
    assert last < 0.5 * first
    with torch.no_grad():
        nearest = loss_fn.distance(embedder(x), loss_fn.proxies).argmax(dim=1)
    assert torch.equal(nearest, labels)


# --------------------------------------------------------------------------------------------- errors


def test_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("ProxyAnchorLoss: `margin` must be a number >= 0, got -0.1.")):
        ProxyAnchorLoss(3, 4, margin=-0.1)
    with pytest.raises(ValueError, match=re.escape("ProxyAnchorLoss: `alpha` must be a number > 0, got 0.")):
        ProxyAnchorLoss(3, 4, alpha=0)
    with pytest.raises(
        ValueError, match=re.escape("ProxyAnchorLoss: `num_classes` must be a positive integer, got 0.")
    ):
        ProxyAnchorLoss(0, 4)
    with pytest.raises(
        ValueError, match=re.escape("ProxyAnchorLoss: `labels` must be class indices in [0, 3), got -1.")
    ):
        ProxyAnchorLoss(3, 4)(torch.randn(2, 4), torch.tensor([0, -1]))


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("distance", ["cosine", "lp"])
@pytest.mark.parametrize("margin,alpha", OPTIONS)
def test_pml_parity(distance: str, margin: float, alpha: float) -> None:
    losses = pml_losses()
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    for seed in range(2):
        torch.manual_seed(seed)
        their_distance = pml_distances.CosineSimilarity() if distance == "cosine" else pml_distances.LpDistance()
        our_distance = CosineSimilarity() if distance == "cosine" else LpDistance()
        theirs = losses.ProxyAnchorLoss(6, 5, margin=margin, alpha=alpha, distance=their_distance)
        ours = ProxyAnchorLoss(6, 5, margin=margin, alpha=alpha, distance=our_distance)
        copy_weights(ours, theirs, "proxies")
        emb, labels = random_batch(seed, n=16, d=5, classes=5)
        assert_same_as_pml(ours, theirs, emb, labels, "proxies")


@pytest.mark.parametrize("miner", ["TripletMarginMiner", "MultiSimilarityMiner"])
def test_pml_parity_with_miner_output(miner: str) -> None:
    losses = pml_losses()
    miners = pytest.importorskip("pytorch_metric_learning.miners")
    make = {
        "TripletMarginMiner": lambda: miners.TripletMarginMiner(0.5),
        "MultiSimilarityMiner": lambda: miners.MultiSimilarityMiner(0.1),
    }
    assert_same_as_pml_with_miner(
        lambda: (losses.ProxyAnchorLoss(4, 5, alpha=8), ProxyAnchorLoss(4, 5, alpha=8)), make[miner]
    )
