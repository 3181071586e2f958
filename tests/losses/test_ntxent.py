"""NTXentLoss against the float64 oracle in tests/reference/ntxent.py, SimCLR's formula, autograd, edge cases
and pytorch-metric-learning."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.indices import all_pairs
from dmlkit.losses.ntxent import NTXentLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import PerAnchorReducer
from tests.losses.cases import SOFTMAX_LOSS_DISTANCES
from tests.losses.cases import random_batch as _batch
from tests.reference import distances as ref_dist
from tests.reference import ntxent as ref
from tests.reference.triplet import all_pairs as oracle_pairs

DISTANCES = SOFTMAX_LOSS_DISTANCES
TEMPERATURES = [0.07, 0.5, 2.0]


def _oracle(
    distance: str,
    emb: Tensor,
    labels: Tensor | None,
    temperature: float,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    pairs: tuple[list, list, list, list] | None = None,
) -> float:
    _, matrix, higher, _ = DISTANCES[distance]
    mat = matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    if pairs is None:
        pairs = oracle_pairs(labels.tolist(), None if ref_labels is None else ref_labels.tolist())  # type: ignore[union-attr]
    a1, p, a2, n = pairs
    return ref.ntxent_loss(mat, list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True)), temperature, higher)


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][3]
    return getattr(distances, cls_name)(**kwargs)


def _tuple(pairs: tuple[list, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(x, dtype=torch.long) for x in pairs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_matches_oracle(distance: str, temperature: float) -> None:
    loss_fn = NTXentLoss(temperature=temperature, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(distance, emb, labels, temperature)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_two_views_equal_simclr(temperature: float) -> None:
    # SimCLR (Chen et al., 2020, eq. 1): l(i, j) = -log(exp(s_ij / T) / sum_{k != i} exp(s_ik / T)), averaged
    # over all 2N ordered positive pairs.
    emb, _ = _batch(11, n=12)
    labels = torch.arange(6).repeat(2)
    s = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    total = 0.0
    for i in range(12):
        j = (i + 6) % 12
        denominator = sum(math.exp(s[i][k] / temperature) for k in range(12) if k != i)
        total += -math.log(math.exp(s[i][j] / temperature) / denominator)
    got = NTXentLoss(temperature=temperature)(emb, labels).item()
    assert got == pytest.approx(total / 12, rel=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_matches_oracle_with_reference_set(distance: str) -> None:
    loss_fn = NTXentLoss(temperature=0.2, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = _oracle(distance, emb, labels, 0.2, ref_emb, ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_oracle_with_mined_pairs() -> None:
    loss_fn = NTXentLoss(temperature=0.3)
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
        pairs = (a1[::2], p[::2], a2[1::3], n[1::3])
        got = loss_fn(emb, labels, _tuple(pairs))
        assert got.item() == pytest.approx(_oracle("cosine", emb, labels, 0.3, pairs=pairs), rel=1e-10)
        # labels are not needed when pairs are given
        assert loss_fn(emb, indices_tuple=_tuple(pairs)).item() == pytest.approx(got.item(), rel=1e-12)


def test_repeated_pairs_count_as_often_as_listed() -> None:
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
    # the first positive pair three times, every other negative pair twice
    pairs = ([a1[0]] * 2 + a1, [p[0]] * 2 + p, a2 + a2[::2], n + n[::2])
    got = NTXentLoss(temperature=0.4)(emb, labels, _tuple(pairs)).item()
    assert got == pytest.approx(_oracle("cosine", emb, labels, 0.4, pairs=pairs), rel=1e-10)
    assert got != pytest.approx(_oracle("cosine", emb, labels, 0.4), rel=1e-6)


def test_matches_oracle_with_mined_triplets() -> None:
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        a, pos, neg = TripletMarginMiner(margin=0.6)(emb, labels)
        assert a.numel() > 0
        pairs = (a.tolist(), pos.tolist(), a.tolist(), neg.tolist())
        got = NTXentLoss(temperature=0.2)(emb, labels, (a, pos, neg))
        assert got.item() == pytest.approx(_oracle("cosine", emb, labels, 0.2, pairs=pairs), rel=1e-10)


def test_terms_are_positive_pairs() -> None:
    emb, labels = _batch(3)
    terms = NTXentLoss().compute_terms(emb, labels, None, emb, labels)["loss"]
    a1, _, _, _ = oracle_pairs(labels.tolist())
    assert terms.kind.value == "pos_pair" and terms.anchors.tolist() == a1


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck(distance: str) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = NTXentLoss(temperature=0.5, distance=DISTANCES[distance][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set_and_repeated_triplets() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    a1, p, a2, n = (t.tolist() for t in all_pairs(labels, ref_labels))
    triplets = [(a, q, m) for a, q in zip(a1, p, strict=True) for b, m in zip(a2, n, strict=True) if a == b]
    triplets = triplets + triplets[:3]
    t = tuple(torch.tensor(col) for col in zip(*triplets, strict=True))
    loss_fn = NTXentLoss(temperature=0.5)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, t, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    loss = NTXentLoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_single_class_gives_zero_zero_gradient_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("NTXentLoss: every label in the batch is 2")):
        loss = NTXentLoss()(emb, torch.full((10,), 2))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_anchor_without_negatives_contributes_zero() -> None:
    emb, labels = _batch(5, n=8)
    a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
    keep = [i for i, a in enumerate(a2) if a != a1[0]]
    pairs = (a1, p, [a2[i] for i in keep], [n[i] for i in keep])
    got = NTXentLoss(temperature=0.3)(emb, labels, _tuple(pairs)).item()
    assert got == pytest.approx(_oracle("cosine", emb, labels, 0.3, pairs=pairs), rel=1e-10)


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_identical_embeddings_are_finite(distance: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = NTXentLoss(distance=DISTANCES[distance][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    # every pair is tied: each positive is one of 1 + 4 equal candidates
    assert loss.item() == pytest.approx(math.log(5), rel=1e-12)


@pytest.mark.parametrize("temperature", [1e-4, 1e4])
def test_extreme_temperatures_stay_finite_in_float32(temperature: float) -> None:
    emb, labels = _batch(6)
    emb32 = emb.float().requires_grad_()
    loss = NTXentLoss(temperature=temperature)(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    assert loss.item() == pytest.approx(_oracle("cosine", emb, labels, temperature), rel=1e-3)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, -0.5])
def test_error_temperature(bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"NTXentLoss: `temperature` must be a number > 0, got {bad!r}.")):
        NTXentLoss(temperature=bad)


def test_error_temperature_type() -> None:
    with pytest.raises(TypeError, match=re.escape("NTXentLoss: `temperature` must be a number, got None.")):
        NTXentLoss(temperature=None)  # type: ignore[arg-type]


def test_error_bad_indices_tuple() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape("NTXentLoss: `indices_tuple[1]` must be indices in [0, 10), got 'values from 10 to 10'."),
    ):
        NTXentLoss()(emb, labels, (torch.tensor([0]), torch.tensor([10]), torch.tensor([2])))


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("distance,temperature", list(itertools.product(DISTANCES, TEMPERATURES)))
def test_pml_parity(distance: str, temperature: float) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = NTXentLoss(temperature=temperature, distance=DISTANCES[distance][0]())
    theirs = pml_losses.NTXentLoss(temperature=temperature, distance=_pml_distance(distance))
    for seed in range(3):
        emb, labels = _batch(seed, n=16, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_pml_parity_with_reference_set(distance: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = NTXentLoss(temperature=0.1, distance=DISTANCES[distance][0]())
    theirs = pml_losses.NTXentLoss(temperature=0.1, distance=_pml_distance(distance))
    for seed in range(3):
        emb, labels = _batch(seed, n=7)
        ref_emb, ref_labels = _batch(seed + 30, n=11)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-6,
        )


def test_pml_parity_self_supervised_views() -> None:
    # the way pytorch-metric-learning's SelfSupervisedLoss calls it: view 2 as the reference set
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, _ = _batch(9, n=8)
    ref_emb, _ = _batch(10, n=8)
    labels = torch.arange(8)
    ours = NTXentLoss()(emb, labels, ref_emb=ref_emb, ref_labels=labels.clone())
    assert ours.item() > 0
    torch.testing.assert_close(
        ours, pml_losses.NTXentLoss()(emb, labels, ref_emb=ref_emb, ref_labels=labels.clone()), rtol=0, atol=1e-6
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
        a, b = NTXentLoss(0.2)(x1, labels, indices), pml_losses.NTXentLoss(0.2)(x2, labels, indices)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_pml_parity_with_per_anchor_reducer() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    emb, labels = _batch(8, n=12)
    torch.testing.assert_close(
        NTXentLoss(reducer=PerAnchorReducer())(emb, labels),
        pml_losses.NTXentLoss(reducer=pml_reducers.PerAnchorReducer())(emb, labels),
        rtol=0,
        atol=1e-6,
    )


def test_differs_from_pml_where_the_positive_probability_underflows() -> None:
    # pytorch-metric-learning takes log(p + tiny): once p underflows (float32, loss above ~87) the loss is
    # stuck at -log(tiny) with no gradient. dmlkit computes log(1 + sum exp(...)) exactly.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([0])
    # the negatives are not mirror images, so the exact gradient (tangent to the unit circle) is not zero
    ref_emb, ref_labels = torch.tensor([[-1.0, 0.0], [1.0, 0.1], [1.0, -0.05]]), torch.tensor([0, 1, 2])
    ours = NTXentLoss(temperature=0.01)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    theirs = pml_losses.NTXentLoss(temperature=0.01)(emb.detach(), labels, ref_emb=ref_emb, ref_labels=ref_labels)
    expected = _oracle("cosine", emb.detach().double(), labels, 0.01, ref_emb.double(), ref_labels)
    assert expected > 150
    assert ours.item() == pytest.approx(expected, rel=1e-5)
    assert theirs.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-5)
    ours.backward()
    assert bool(torch.isfinite(emb.grad).all()) and emb.grad.abs().sum() > 0
