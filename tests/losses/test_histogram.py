"""HistogramLoss against the float64 oracle in tests/reference/histogram.py, autograd, edge cases and PML."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch import Tensor

import dmlkit.losses.fast_ap as fast_ap_module
from dmlkit.distances import DotProductSimilarity, LpDistance
from dmlkit.indices import all_triplets
from dmlkit.losses.histogram import HistogramLoss
from dmlkit.miners import TripletMarginMiner
from tests.reference import histogram as ref


def _batch(seed: int, n: int = 14, d: int = 5, classes: int = 5, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[0], labels[1] = 90, 91  # two singletons: their pair is in no triplet
    return emb, labels


def _mined(emb: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    triplets = tuple(TripletMarginMiner(margin=0.5)(emb, labels))
    assert triplets[0].numel() > 0
    return triplets


def _triplet_list(triplets: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(t.tolist() for t in triplets), strict=True))


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("options,delta", [({}, 0.02), ({"n_bins": 10}, 0.2), ({"n_bins": 7}, 2 / 7)])
def test_matches_oracle(options: dict, delta: float) -> None:
    loss_fn = HistogramLoss(**options)
    for seed in range(3):
        emb, labels = _batch(seed)
        assert loss_fn(emb, labels).item() == pytest.approx(ref.histogram_loss(emb, labels, delta), rel=1e-10)


def test_delta_that_does_not_divide_two() -> None:
    # nodes -1, -0.97, ..., 1.01 (round(1 + 2 / 0.03) = 68 of them)
    emb, labels = _batch(3)
    assert HistogramLoss(delta=0.03)(emb, labels).item() == pytest.approx(
        ref.histogram_loss(emb, labels, 0.03), rel=1e-10
    )


def test_hand_computed() -> None:
    # n_bins=4: nodes -1, -0.5, 0, 0.5, 1. Labels (0, 0, 1): one positive pair {0, 1} at similarity 0 (node 0),
    # negative pairs {0, 2} and {1, 2}. The loss is the share of negative mass at or above the positive's node.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.cos(math.pi / 3), math.sin(math.pi / 3)]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    assert HistogramLoss(n_bins=4)(emb, labels).item() == pytest.approx(1.0, rel=1e-12)  # negatives at 0.5, 0.87
    emb[2] = torch.tensor([math.cos(2.5), math.sin(2.5)], dtype=torch.float64)  # negatives at -0.80 and 0.60
    assert HistogramLoss(n_bins=4)(emb, labels).item() == pytest.approx(0.5, rel=1e-12)


def test_mined_triplets_and_pairs() -> None:
    emb, labels = _batch(4, n=16)
    triplets = _mined(emb, labels)
    expected = ref.histogram_loss(emb, labels, triplets=_triplet_list(triplets))
    assert HistogramLoss()(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)
    # mined pairs become the triplets of pairs sharing an anchor
    pairs = (triplets[0][::2], triplets[1][::2], triplets[0][1::3], triplets[2][1::3])
    from_pairs = [
        (a, p, n)
        for a, p in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True)
        for b, n in zip(pairs[2].tolist(), pairs[3].tolist(), strict=True)
        if a == b
    ]
    assert from_pairs
    expected = ref.histogram_loss(emb, labels, triplets=from_pairs)
    assert HistogramLoss()(emb, labels, pairs).item() == pytest.approx(expected, rel=1e-10)


def test_reference_set() -> None:
    emb, labels = _batch(5, n=6)
    ref_emb, ref_labels = _batch(6, n=15)
    expected = ref.histogram_loss(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    got = HistogramLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_sparse_and_dense_negative_histograms_agree() -> None:
    # all negatives (dense pass minus the few others) vs mined negatives given explicitly (their list)
    emb, labels = _batch(7, n=12)
    triplets = all_triplets(labels)
    assert HistogramLoss()(emb, labels, tuple(triplets)).item() == pytest.approx(
        HistogramLoss()(emb, labels).item(), rel=1e-12
    )


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("n_bins", [4, 25])
def test_gradcheck(n_bins: int) -> None:
    emb, labels = _batch(8, n=7, d=3, classes=3)
    loss_fn = HistogramLoss(n_bins=n_bins)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(9, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(10, n=6, d=3, classes=2)
    loss_fn = HistogramLoss(n_bins=8)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


def test_blocked_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(11, n=20)
    x1 = emb.clone().requires_grad_()
    one = HistogramLoss(n_bins=20)(x1, labels)
    one.backward()
    monkeypatch.setattr(fast_ap_module, "_BLOCK_ELEMENTS", 7)
    x2 = emb.clone().requires_grad_()
    blocked = HistogramLoss(n_bins=20)(x2, labels)
    blocked.backward()
    assert blocked.item() == pytest.approx(one.item(), rel=1e-12)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------- edge cases


def test_no_triplet_gives_zero_and_zero_gradient() -> None:
    emb = _batch(12)[0].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = HistogramLoss()(emb, torch.arange(14))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_one_class_gives_zero() -> None:
    emb = _batch(13)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("HistogramLoss: every label in the batch is 2")):
        loss = HistogramLoss()(emb, torch.full((14,), 2))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_identical_embeddings_are_finite_where_pml_indexes_past_its_last_bin() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = HistogramLoss()(emb, labels)
    loss.backward()
    # every similarity is 1: negatives are as similar as positives
    assert loss.item() == pytest.approx(1.0, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    with pytest.raises((IndexError, RuntimeError), match="out of bounds"):
        pml_losses.HistogramLoss()(emb.detach(), labels)


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(14, scale=scale)
    emb = emb.float().requires_grad_()
    loss = HistogramLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,error,text",
    [
        ({"n_bins": 0}, ValueError, "HistogramLoss: `n_bins` must be an integer >= 1, got 0."),
        ({"n_bins": 2.0}, TypeError, "HistogramLoss: `n_bins` must be an integer, got 2.0."),
        ({"delta": 3}, ValueError, "HistogramLoss: `delta` must be a number > 0 and <= 2, got 3."),
        (
            {"n_bins": 10, "delta": 0.3},
            ValueError,
            "HistogramLoss: `delta` must be 2 / n_bins = 0.2 when both are given, got 0.3.",
        ),
    ],
)
def test_error_parameters(kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        HistogramLoss(**kwargs)


def test_consistent_n_bins_and_delta_are_accepted() -> None:
    assert HistogramLoss(n_bins=10, delta=0.2).delta == 0.2
    assert HistogramLoss().delta == 0.02 and HistogramLoss().num_nodes == 101


def test_error_distance() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "HistogramLoss: `distance` must be a similarity in [-1, 1] (CosineSimilarity), got 'LpDistance'."
        ),
    ):
        HistogramLoss(distance=LpDistance())
    with pytest.raises(
        ValueError,
        match=re.escape(
            "HistogramLoss: `distance` must be a similarity in [-1, 1] (normalize_embeddings=True, power=1), "
            "got 'normalize_embeddings=False, power=1'."
        ),
    ):
        HistogramLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    HistogramLoss(distance=DotProductSimilarity())  # normalised inner products are cosines


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("options,delta", [({}, 0.02), ({"n_bins": 10}, 0.2), ({"delta": 0.03}, 0.03)])
def test_pml_parity(options: dict, delta: float) -> None:
    # pytorch-metric-learning finds the bins (and multiplies bin index by delta) in float32, even for float64
    # inputs: it equals the oracle doing the same, and the float64 definition (ours) up to that rounding.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(4):
        emb, labels = _batch(seed + 20, n=12)
        theirs = pml_losses.HistogramLoss(**options)(emb, labels).item()
        assert theirs == pytest.approx(ref.histogram_loss(emb, labels, delta, pml_float32=True), abs=1e-12)
        assert HistogramLoss(**options)(emb, labels).item() == pytest.approx(theirs, abs=1e-5)
        triplets = _mined(emb, labels)
        theirs = pml_losses.HistogramLoss(**options)(emb, labels, triplets).item()
        expected = ref.histogram_loss(emb, labels, delta, triplets=_triplet_list(triplets), pml_float32=True)
        assert theirs == pytest.approx(expected, abs=1e-12)
        assert HistogramLoss(**options)(emb, labels, triplets).item() == pytest.approx(theirs, abs=1e-5)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_pml_gradient_parity() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(25, n=12)
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    HistogramLoss()(x1, labels).backward()
    pml_losses.HistogramLoss()(x2, labels).backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
