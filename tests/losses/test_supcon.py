"""SupConLoss against the float64 oracle in tests/reference/supcon.py, autograd, edge cases and
pytorch-metric-learning."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.indices import all_pairs
from dmlkit.losses.supcon import SupConLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import MeanReducer
from tests.losses.cases import SOFTMAX_LOSS_DISTANCES
from tests.losses.cases import random_batch as _batch
from tests.reference import distances as ref_dist
from tests.reference import supcon as ref
from tests.reference.triplet import all_pairs as oracle_pairs

DISTANCES = SOFTMAX_LOSS_DISTANCES
TEMPERATURES = [0.07, 0.5, 2.0]


def _pairs(
    labels: Tensor | None, ref_labels: Tensor | None, pairs: tuple[list, ...] | None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    if pairs is None:
        pairs = oracle_pairs(labels.tolist(), None if ref_labels is None else ref_labels.tolist())  # type: ignore[union-attr]
    a1, p, a2, n = pairs
    return list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True))


def _oracle(
    distance: str,
    emb: Tensor,
    labels: Tensor | None,
    temperature: float,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    pairs: tuple[list, ...] | None = None,
) -> float:
    _, matrix, higher, _ = DISTANCES[distance]
    mat = matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    return ref.supcon_loss(mat, *_pairs(labels, ref_labels, pairs), temperature, higher)


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
    loss_fn = SupConLoss(temperature=temperature, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(distance, emb, labels, temperature)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_mean_reducer_counts_anchors_without_positives_as_zero() -> None:
    emb, _ = _batch(3, n=7)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    mat = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    values = ref.supcon_values(mat, *_pairs(labels, None, None), 0.1)
    assert values[5] == values[6] == 0.0
    got = SupConLoss(reducer=MeanReducer())(emb, labels).item()
    assert got == pytest.approx(sum(values) / 7, rel=1e-10)
    assert SupConLoss()(emb, labels).item() == pytest.approx(sum(values) / 5, rel=1e-10)


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_matches_oracle_with_reference_set(distance: str) -> None:
    loss_fn = SupConLoss(temperature=0.2, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = _oracle(distance, emb, labels, 0.2, ref_emb, ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_oracle_with_mined_pairs_and_triplets() -> None:
    loss_fn = SupConLoss(temperature=0.3)
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
        pairs = (a1[::2], p[::2], a2[1::3], n[1::3])
        got = loss_fn(emb, labels, _tuple(pairs))
        assert got.item() == pytest.approx(_oracle("cosine", emb, labels, 0.3, pairs=pairs), rel=1e-10)
        a, pos, neg = TripletMarginMiner(margin=0.6)(emb, labels)
        triplet_pairs = (a.tolist(), pos.tolist(), a.tolist(), neg.tolist())
        expected = _oracle("cosine", emb, labels, 0.3, pairs=triplet_pairs)
        assert loss_fn(emb, labels, (a, pos, neg)).item() == pytest.approx(expected, rel=1e-10)


def test_repeated_pairs_count_once() -> None:
    emb, labels = _batch(4, n=12)
    pairs = tuple(t.tolist() for t in all_pairs(labels))
    doubled = tuple(x + x[::2] for x in pairs)
    loss_fn = SupConLoss(temperature=0.4)
    assert loss_fn(emb, labels, _tuple(doubled)).item() == pytest.approx(loss_fn(emb, labels).item(), rel=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck(distance: str) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = SupConLoss(temperature=0.5, distance=DISTANCES[distance][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = SupConLoss(temperature=0.5, reducer=MeanReducer())
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    loss = SupConLoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_single_class_gives_zero_zero_gradient_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("SupConLoss: every label in the batch is 1")):
        loss = SupConLoss()(emb, torch.ones(10, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_identical_embeddings_are_finite(distance: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = SupConLoss(distance=DISTANCES[distance][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    # every candidate is tied: each positive has probability 1/5
    assert loss.item() == pytest.approx(math.log(5), rel=1e-12)


@pytest.mark.parametrize("temperature", [1e-4, 1e4])
def test_extreme_temperatures_stay_finite_in_float32(temperature: float) -> None:
    emb, labels = _batch(6)
    emb32 = emb.float().requires_grad_()
    loss = SupConLoss(temperature=temperature, reducer=MeanReducer())(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    mat = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    values = ref.supcon_values(mat, *_pairs(labels, None, None), temperature)
    assert loss.item() == pytest.approx(sum(values) / len(values), rel=1e-3)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, -0.5])
def test_error_temperature(bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"SupConLoss: `temperature` must be a number > 0, got {bad!r}.")):
        SupConLoss(temperature=bad)


def test_error_reducer_type() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape("SupConLoss: `reducer` must be a dmlkit reducer (e.g. MeanReducer()), got 'str'."),
    ):
        SupConLoss(reducer="mean")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("distance,temperature", list(itertools.product(DISTANCES, TEMPERATURES)))
def test_pml_parity(distance: str, temperature: float) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = SupConLoss(temperature=temperature, distance=DISTANCES[distance][0]())
    theirs = pml_losses.SupConLoss(temperature=temperature, distance=_pml_distance(distance))
    for seed in range(3):
        emb, labels = _batch(seed, n=16, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_pml_parity_with_mean_reducer() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4])
    emb, _ = _batch(5, n=8)
    torch.testing.assert_close(
        SupConLoss(reducer=MeanReducer())(emb, labels),
        pml_losses.SupConLoss(reducer=pml_reducers.MeanReducer())(emb, labels),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_pml_parity_with_reference_set(distance: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = SupConLoss(temperature=0.1, distance=DISTANCES[distance][0]())
    theirs = pml_losses.SupConLoss(temperature=0.1, distance=_pml_distance(distance))
    for seed in range(3):
        emb, labels = _batch(seed, n=7)
        ref_emb, ref_labels = _batch(seed + 30, n=11)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
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
        a, b = SupConLoss(0.2)(x1, labels, indices), pml_losses.SupConLoss(0.2)(x2, labels, indices)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)
