"""ThresholdConsistentMarginLoss against the float64 oracle in tests/reference/threshold_consistent_margin.py,
autograd, the reference set, edge cases and PML."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import LpDistance
from dmlkit.losses.threshold_consistent_margin import ThresholdConsistentMarginLoss
from dmlkit.miners import TripletMarginMiner
from tests.reference import threshold_consistent_margin as ref

OPTIONS = [
    {},
    {"lambda_plus": 0.3, "lambda_minus": 2.0, "margin_plus": 0.5, "margin_minus": -0.2},
    {"lambda_plus": 0.0, "margin_minus": 0.9},
]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_oracle(options: dict) -> None:
    loss_fn = ThresholdConsistentMarginLoss(**options)
    for seed in range(3):
        emb, labels = _batch(seed)
        assert loss_fn(emb, labels).item() == pytest.approx(ref.tcm_loss(emb, labels, **options), rel=1e-10)


def test_hand_computed() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]], dtype=torch.float64)
    # positive pairs (0, 1) and (2, 3) at 0.6 (both below 0.9: mean shortfall 0.3); negative pairs at 0, 0.8,
    # 0.8, 0.96 (three above 0.5: mean excess (0.3 + 0.3 + 0.46) / 3)
    got = ThresholdConsistentMarginLoss()(emb, torch.tensor([0, 0, 1, 1])).item()
    assert got == pytest.approx(0.3 + (0.3 + 0.3 + 0.46) / 3, rel=1e-12)


@pytest.mark.parametrize("options", OPTIONS[:2])
def test_mined_pairs_count_every_occurrence(options: dict) -> None:
    emb, labels = _batch(4, n=14)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    assert triplets[0].numel() > 0
    pairs = [t.tolist() for t in (triplets[0], triplets[1], triplets[0], triplets[2])]
    expected = ref.tcm_loss(emb, None, pairs=pairs, **options)
    loss_fn = ThresholdConsistentMarginLoss(**options)
    assert loss_fn(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)
    as_pairs = (triplets[0], triplets[1], triplets[0], triplets[2])
    assert loss_fn(emb, indices_tuple=as_pairs).item() == pytest.approx(expected, rel=1e-10)


def test_reference_set_is_used() -> None:
    emb, labels = _batch(5, n=5)
    ref_emb, ref_labels = _batch(6, n=11)
    expected = ref.tcm_loss(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    loss_fn = ThresholdConsistentMarginLoss()
    got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    assert got == pytest.approx(expected, rel=1e-10)
    # another reference set with the same labels gives another value: the reference embeddings matter
    other = loss_fn(emb, labels, ref_emb=_batch(7, n=11)[0], ref_labels=ref_labels).item()
    assert other != pytest.approx(got, rel=1e-6)
    # and gradients reach the reference embeddings
    r = ref_emb.clone().requires_grad_()
    loss_fn(emb, labels, ref_emb=r, ref_labels=ref_labels).backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


def test_reference_set_with_mined_pairs() -> None:
    emb, labels = _batch(8, n=5)
    ref_emb, ref_labels = _batch(9, n=9)
    triplets = tuple(TripletMarginMiner(margin=1.0)(emb, labels, ref_emb, ref_labels))
    assert triplets[0].numel() > 0
    pairs = [t.tolist() for t in (triplets[0], triplets[1], triplets[0], triplets[2])]
    expected = ref.tcm_loss(emb, None, ref_emb=ref_emb, pairs=pairs)
    got = ThresholdConsistentMarginLoss()(emb, labels, triplets, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


def test_gradcheck_away_from_the_margins() -> None:
    for seed in range(100):
        emb, labels = _batch(seed, n=7, d=3, classes=2)
        sims = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(emb).T
        if min((sims - 0.9).abs().min(), (sims - 0.5).abs().min()) > 1e-3:
            break
    else:
        pytest.fail("no batch away from the margins")
    loss_fn = ThresholdConsistentMarginLoss()
    assert loss_fn(emb, labels).item() > 0
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


# --------------------------------------------------------------------------------------------- edge cases


def test_satisfied_pairs_give_zero_and_zero_gradient() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]], dtype=torch.float64, requires_grad=True)
    loss = ThresholdConsistentMarginLoss()(emb, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_no_pair_gives_zero_and_zero_gradient() -> None:
    emb = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="every label in the batch is 0"):
        loss = ThresholdConsistentMarginLoss()(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = ThresholdConsistentMarginLoss()(emb, labels)
    loss.backward()
    # every similarity is 1: positives are above 0.9 (fine), every negative is 0.5 above 0.5
    assert loss.item() == pytest.approx(0.5, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("scale", [1e-8, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(10, scale=scale)
    emb = emb.float().requires_grad_()
    loss = ThresholdConsistentMarginLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"lambda_plus": -1.0}, "ThresholdConsistentMarginLoss: `lambda_plus` must be a number >= 0, got -1.0."),
        ({"lambda_minus": -0.5}, "ThresholdConsistentMarginLoss: `lambda_minus` must be a number >= 0, got -0.5."),
        (
            {"margin_plus": 1.5},
            "ThresholdConsistentMarginLoss: `margin_plus` must be a number >= -1 and <= 1, got 1.5.",
        ),
        (
            {"margin_minus": -2.0},
            "ThresholdConsistentMarginLoss: `margin_minus` must be a number >= -1 and <= 1, got -2.0.",
        ),
    ],
)
def test_error_parameters(kwargs: dict, text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(text)):
        ThresholdConsistentMarginLoss(**kwargs)


def test_error_distance() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape("ThresholdConsistentMarginLoss: `distance` must be a CosineSimilarity, got 'LpDistance'."),
    ):
        ThresholdConsistentMarginLoss(distance=LpDistance())


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("options", OPTIONS)
def test_pml_parity(options: dict) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = _batch(seed + 20)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a = ThresholdConsistentMarginLoss(**options)(x1, labels)
        b = pml_losses.ThresholdConsistentMarginLoss(**options)(x2, labels)
        a.backward()
        b.backward()
        assert a.item() == pytest.approx(b.item(), abs=1e-12)
        assert torch.allclose(x1.grad, x2.grad, atol=1e-12)
        triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
        assert ThresholdConsistentMarginLoss(**options)(emb, labels, triplets).item() == pytest.approx(
            pml_losses.ThresholdConsistentMarginLoss(**options)(emb, labels, triplets).item(), abs=1e-12
        )


def test_pml_ignores_the_reference_set() -> None:
    # PML indexes `embeddings` with the reference indices: another reference set changes nothing, and a larger
    # one than the batch indexes out of range
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(30, n=8)
    ref_a, ref_labels = _batch(31, n=8)
    ref_b = _batch(32, n=8)[0]
    theirs = pml_losses.ThresholdConsistentMarginLoss()
    assert theirs(emb, labels, ref_emb=ref_a, ref_labels=ref_labels).item() == pytest.approx(
        theirs(emb, labels, ref_emb=ref_b, ref_labels=ref_labels).item(), abs=1e-15
    )
    expected = ref.tcm_loss(emb, labels, ref_emb=ref_a, ref_labels=ref_labels)
    assert ThresholdConsistentMarginLoss()(emb, labels, ref_emb=ref_a, ref_labels=ref_labels).item() == pytest.approx(
        expected, rel=1e-10
    )
    big_ref, big_labels = _batch(33, n=20)
    with pytest.raises(IndexError):
        theirs(emb, labels, ref_emb=big_ref, ref_labels=big_labels)
