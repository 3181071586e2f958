"""TupletMarginLoss against the float64 oracle in tests/reference/tuplet_margin.py, autograd, edge cases and
pytorch-metric-learning."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import DotProductSimilarity, LpDistance
from dmlkit.indices import all_pairs
from dmlkit.losses.tuplet_margin import TupletMarginLoss, _cos_minus_angle
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import PerAnchorReducer
from tests.losses.cases import random_batch as _batch
from tests.reference import distances as ref_dist
from tests.reference import tuplet_margin as ref
from tests.reference.triplet import all_pairs as oracle_pairs

MARGINS = [0.0, 5.73, 30.0]
SCALES = [1.0, 16.0, 64.0]




def _oracle(
    emb: Tensor,
    labels: Tensor | None,
    margin: float = 5.73,
    scale: float = 64.0,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    pairs: tuple[list, ...] | None = None,
) -> float:
    cos = ref_dist.cosine_matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    if pairs is None:
        pairs = oracle_pairs(labels.tolist(), None if ref_labels is None else ref_labels.tolist())  # type: ignore[union-attr]
    a1, p, a2, n = pairs
    return ref.tuplet_margin_loss(cos, list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True)), margin, scale)


def _tuple(pairs: tuple[list, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(x, dtype=torch.long) for x in pairs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("margin,scale", list(itertools.product(MARGINS, SCALES)))
def test_matches_oracle(margin: float, scale: float) -> None:
    loss_fn = TupletMarginLoss(margin=margin, scale=scale)
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(emb, labels, margin, scale)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_margin_is_stored_in_radians() -> None:
    assert TupletMarginLoss(margin=90).margin == pytest.approx(math.pi / 2, rel=1e-15)


def test_cos_minus_angle_matches_arccos() -> None:
    c = torch.linspace(-1, 1, 101, dtype=torch.float64)
    for angle in [0.0, 0.1, 1.0, 3.0]:
        expected = torch.cos(torch.acos(c) - angle)
        torch.testing.assert_close(_cos_minus_angle(c, angle), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("value", [1.0, -1.0, 1.0 + 1e-7])
def test_cos_minus_angle_gradient_is_finite_at_the_ends(value: float) -> None:
    c = torch.tensor([value], dtype=torch.float64, requires_grad=True)
    out = _cos_minus_angle(c, 0.1)
    out.backward()
    assert out.item() == pytest.approx(math.cos(math.acos(max(-1.0, min(1.0, value))) - 0.1), rel=1e-12)
    assert bool(torch.isfinite(c.grad).all())


def test_matches_oracle_with_reference_set() -> None:
    loss_fn = TupletMarginLoss(margin=10, scale=8)
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = _oracle(emb, labels, 10, 8, ref_emb, ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_oracle_with_mined_pairs_and_triplets() -> None:
    loss_fn = TupletMarginLoss(scale=16)
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
        pairs = (a1[::2], p[::2], a2[1::3], n[1::3])
        got = loss_fn(emb, labels, _tuple(pairs))
        assert got.item() == pytest.approx(_oracle(emb, labels, scale=16, pairs=pairs), rel=1e-10)
        a, pos, neg = TripletMarginMiner(margin=0.6)(emb, labels)
        triplet_pairs = (a.tolist(), pos.tolist(), a.tolist(), neg.tolist())
        expected = _oracle(emb, labels, scale=16, pairs=triplet_pairs)
        assert loss_fn(emb, labels, (a, pos, neg)).item() == pytest.approx(expected, rel=1e-10)


def test_repeated_pairs_count_as_often_as_listed() -> None:
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
    pairs = ([a1[1]] * 3 + a1, [p[1]] * 3 + p, a2 + a2[::2], n + n[::2])
    got = TupletMarginLoss(scale=8)(emb, labels, _tuple(pairs)).item()
    assert got == pytest.approx(_oracle(emb, labels, scale=8, pairs=pairs), rel=1e-10)
    assert got != pytest.approx(_oracle(emb, labels, scale=8), rel=1e-6)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("margin", [0.0, 5.73, 30.0])
def test_gradcheck(margin: float) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = TupletMarginLoss(margin=margin, scale=4)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set_and_repeated_triplets() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    a1, p, a2, n = (t.tolist() for t in all_pairs(labels, ref_labels))
    triplets = [(a, q, m) for a, q in zip(a1, p, strict=True) for b, m in zip(a2, n, strict=True) if a == b]
    triplets = triplets + triplets[:3]
    t = tuple(torch.tensor(col) for col in zip(*triplets, strict=True))
    loss_fn = TupletMarginLoss(scale=4)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, t, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    loss = TupletMarginLoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_single_class_gives_zero_zero_gradient_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("TupletMarginLoss: every label in the batch is 0")):
        loss = TupletMarginLoss()(emb, torch.zeros(10, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_embeddings_are_finite(dtype: torch.dtype) -> None:
    emb = torch.ones(6, 3, dtype=dtype, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = TupletMarginLoss(scale=8)(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    # every cosine is 1: each of the 4 negatives contributes exp(s (1 - cos(margin)))
    expected = math.log(1 + 4 * math.exp(8 * (1 - math.cos(math.radians(5.73)))))
    # in float32 the cosine rounds to 1 - 6e-8, an angle of 3e-4 rad that arccos resolves
    assert loss.item() == pytest.approx(expected, rel=1e-12 if dtype == torch.float64 else 1e-3)


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_extreme_scales_stay_finite_in_float32(scale: float) -> None:
    emb, labels = _batch(6)
    emb32 = emb.float().requires_grad_()
    loss = TupletMarginLoss(scale=scale)(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    assert loss.item() == pytest.approx(_oracle(emb, labels, scale=scale), rel=1e-3)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("distance", [LpDistance, DotProductSimilarity])
def test_error_distance_must_be_cosine(distance: type) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(f"TupletMarginLoss: `distance` must be a CosineSimilarity, got '{distance.__name__}'."),
    ):
        TupletMarginLoss(distance=distance())


def test_error_margin() -> None:
    with pytest.raises(ValueError, match=re.escape("TupletMarginLoss: `margin` must be a number >= 0, got -1.")):
        TupletMarginLoss(margin=-1)


@pytest.mark.parametrize("bad", [0, -64])
def test_error_scale(bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"TupletMarginLoss: `scale` must be a number > 0, got {bad!r}.")):
        TupletMarginLoss(scale=bad)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("margin,scale", list(itertools.product(MARGINS, SCALES)))
def test_pml_parity(margin: float, scale: float) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = TupletMarginLoss(margin=margin, scale=scale)
    theirs = pml_losses.TupletMarginLoss(margin=margin, scale=scale)
    for seed in range(3):
        emb, labels = _batch(seed, n=16, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_pml_parity_with_reference_set() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(3):
        emb, labels = _batch(seed, n=7)
        ref_emb, ref_labels = _batch(seed + 30, n=11)
        torch.testing.assert_close(
            TupletMarginLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            pml_losses.TupletMarginLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-6,
        )


@pytest.mark.parametrize("miner", ["MultiSimilarityMiner", "TripletMarginMiner", "PairMarginMiner"])
def test_pml_parity_with_miner_output(miner: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    make = {
        "MultiSimilarityMiner": lambda: pml_miners.MultiSimilarityMiner(0.1),
        "TripletMarginMiner": lambda: pml_miners.TripletMarginMiner(0.3),
        "PairMarginMiner": lambda: pml_miners.PairMarginMiner(0.3, 0.6),
    }[miner]()
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        indices = make(emb, labels)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = (
            TupletMarginLoss(scale=16)(x1, labels, indices),
            pml_losses.TupletMarginLoss(scale=16)(x2, labels, indices),
        )
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_per_anchor_reducer_averages_each_anchors_pairs() -> None:
    # (pytorch-metric-learning's PerAnchorReducer fails on this loss's output, so the oracle is the reference)
    emb, labels = _batch(8, n=12)
    a1, p, a2, n = oracle_pairs(labels.tolist())
    cos = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    values = ref.tuplet_margin_values(cos, list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True)), 5.73, 64)
    per_anchor = []
    for i in range(12):
        mine = [v for v, a in zip(values, a1, strict=True) if a == i]
        per_anchor.append(sum(mine) / len(mine) if mine else 0.0)
    got = TupletMarginLoss(reducer=PerAnchorReducer())(emb, labels).item()
    assert got == pytest.approx(sum(per_anchor) / 12, rel=1e-10)


def test_differs_from_pml_for_identical_positives() -> None:
    # arccos has an infinite derivative at 1: pytorch-metric-learning's gradient is NaN when a positive pair
    # coincides; dmlkit's stays finite with the same value.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(10, n=6)
    emb[1] = emb[0]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    ours, theirs = TupletMarginLoss(scale=8)(x1, labels), pml_losses.TupletMarginLoss(scale=8)(x2, labels)
    ours.backward()
    theirs.backward()
    assert ours.item() == pytest.approx(_oracle(emb, labels, scale=8), rel=1e-10)
    assert bool(torch.isfinite(x1.grad).all())
    assert not bool(torch.isfinite(x2.grad).all())
