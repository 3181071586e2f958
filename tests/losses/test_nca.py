"""NCALoss against the float64 oracle in tests/reference/nca.py, autograd, edge cases and
pytorch-metric-learning."""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.losses.nca import NCALoss
from dmlkit.miners import TripletMarginMiner
from tests.losses.cases import random_batch as _batch
from tests.reference import distances as ref_dist
from tests.reference import nca as ref

Matrix = list[list[float]]

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], Callable[[Matrix, Matrix], Matrix], bool, tuple[str, dict]]] = {
    "lp_squared": (
        lambda: LpDistance(power=2),
        lambda q, r: ref_dist.lp_matrix(q, r, power=2),
        False,
        ("LpDistance", {"power": 2}),
    ),
    "lp": (LpDistance, ref_dist.lp_matrix, False, ("LpDistance", {})),
    "lp_raw_squared": (
        lambda: LpDistance(normalize_embeddings=False, power=2),
        lambda q, r: ref_dist.lp_matrix(q, r, power=2, normalize=False),
        False,
        ("LpDistance", {"normalize_embeddings": False, "power": 2}),
    ),
    "cosine": (CosineSimilarity, ref_dist.cosine_matrix, True, ("CosineSimilarity", {})),
    "dot_raw": (
        lambda: DotProductSimilarity(normalize_embeddings=False),
        lambda q, r: ref_dist.dot_matrix(q, r, normalize=False),
        True,
        ("DotProductSimilarity", {"normalize_embeddings": False}),
    ),
}
SCALES = [1.0, 0.3, 8.0]




def _oracle(
    distance: str,
    emb: Tensor,
    labels: Tensor,
    softmax_scale: float,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    weights: list[float] | None = None,
) -> float:
    _, matrix, higher, _ = DISTANCES[distance]
    mat = matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    refs = None if ref_labels is None else ref_labels.tolist()
    return ref.nca_loss(mat, labels.tolist(), refs, softmax_scale, higher, weights)


def _weights(indices: tuple[Tensor, ...], size: int, anchors_only: bool) -> list[float]:
    """How often each query index is mentioned, relative to the most mentioned one."""
    counts = [0] * size
    if anchors_only:
        mentioned = indices[0].tolist() + (indices[2].tolist() if len(indices) == 4 else [])
    else:
        mentioned = [i for t in indices for i in t.tolist()]
    for i in mentioned:
        counts[i] += 1
    top = max(counts)
    return [c / top for c in counts]


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][3]
    return getattr(distances, cls_name)(**kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("scale", SCALES)
def test_matches_oracle(distance: str, scale: float) -> None:
    loss_fn = NCALoss(softmax_scale=scale, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(distance, emb, labels, scale)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_default_distance_is_squared_euclidean_of_normalised_embeddings() -> None:
    distance = NCALoss().distance
    assert isinstance(distance, LpDistance) and distance.power == 2 and distance.normalize_embeddings
    # two classes of two points on the unit circle: each point's neighbours are at squared distances
    # 2 - 2 cos: the same-label one (cos 0.6) and two others (cos 0, cos -0.8 / 0.8 ...)
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    cos = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    expected = 0.0
    for i in range(4):
        logits = {j: -(2 - 2 * cos[i][j]) for j in range(4) if j != i}
        same = next(j for j in logits if labels[j] == labels[i])
        expected += -math.log(math.exp(logits[same]) / sum(math.exp(v) for v in logits.values()))
    assert NCALoss()(emb, labels).item() == pytest.approx(expected / 4, rel=1e-12)


@pytest.mark.parametrize("distance", ["lp_squared", "cosine"])
def test_matches_oracle_with_reference_set(distance: str) -> None:
    loss_fn = NCALoss(softmax_scale=2, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = _oracle(distance, emb, labels, 2.0, ref_emb, ref_labels)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_mined_indices_weight_the_queries() -> None:
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        mined = TripletMarginMiner(margin=0.3, type_of_triplets="semihard")(emb, labels)
        assert mined.anchors.numel() > 0
        expected = _oracle("lp_squared", emb, labels, 1.0, weights=_weights(tuple(mined), 12, False))
        assert NCALoss()(emb, labels, mined).item() == pytest.approx(expected, rel=1e-10)


def test_mined_indices_with_a_reference_set_count_anchors_only() -> None:
    emb, labels = _batch(7, n=6)
    ref_emb, ref_labels = _batch(8, n=9)
    pairs = (torch.tensor([0, 0, 3]), torch.tensor([4, 5, 8]), torch.tensor([1, 3]), torch.tensor([2, 2]))
    got = NCALoss()(emb, labels, pairs, ref_emb=ref_emb, ref_labels=ref_labels).item()
    expected = _oracle("lp_squared", emb, labels, 1.0, ref_emb, ref_labels, _weights(pairs, 6, True))
    assert got == pytest.approx(expected, rel=1e-10)


def test_empty_mined_indices_weigh_every_query_fully() -> None:
    # as in pytorch-metric-learning: an empty miner output does not switch the loss off
    emb, labels = _batch(9)
    e = torch.empty(0, dtype=torch.long)
    assert NCALoss()(emb, labels, (e, e, e)).item() == pytest.approx(NCALoss()(emb, labels).item(), rel=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck(distance: str) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = NCALoss(softmax_scale=2, distance=DISTANCES[distance][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    assert torch.autograd.gradcheck(
        lambda x, r: NCALoss()(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_same_label_neighbour_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = NCALoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_single_class_gives_zero_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("NCALoss: every label in the batch is 0")):
        loss = NCALoss()(emb, torch.zeros(10, dtype=torch.long))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    assert bool(torch.isfinite(emb.grad).all()) and float(emb.grad.abs().max()) < 1e-12


def test_single_sample() -> None:
    emb = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning):
        loss = NCALoss()(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_identical_embeddings_are_finite(distance: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = NCALoss(distance=DISTANCES[distance][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    # every neighbour is equally likely: 1 of 5 has the label
    assert loss.item() == pytest.approx(math.log(5), rel=1e-12)


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_extreme_scales_stay_finite_in_float32(scale: float) -> None:
    emb, labels = _batch(6)
    emb32 = emb.float().requires_grad_()
    loss = NCALoss(softmax_scale=scale, distance=LpDistance(power=2))(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    assert loss.item() == pytest.approx(_oracle("lp_squared", emb, labels, scale), rel=1e-3)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, -1])
def test_error_softmax_scale(bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"NCALoss: `softmax_scale` must be a number > 0, got {bad!r}.")):
        NCALoss(softmax_scale=bad)


def test_error_labels_needed_even_with_indices() -> None:
    emb, labels = _batch(0)
    mined = TripletMarginMiner(margin=1.0)(emb, labels)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "NCALoss: `labels` must be given (the loss needs them even with an `indices_tuple`), got None."
        ),
    ):
        NCALoss()(emb, indices_tuple=mined)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("distance,scale", list(itertools.product(DISTANCES, SCALES)))
def test_pml_parity(distance: str, scale: float) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = NCALoss(softmax_scale=scale, distance=DISTANCES[distance][0]())
    theirs = pml_losses.NCALoss(softmax_scale=scale, distance=_pml_distance(distance))
    for seed in range(3):
        emb, labels = _batch(seed, n=16, d=5, classes=5)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", ["lp_squared", "cosine"])
def test_pml_parity_with_reference_set(distance: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = NCALoss(distance=DISTANCES[distance][0]())
    theirs = pml_losses.NCALoss(distance=_pml_distance(distance))
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
@pytest.mark.parametrize("with_reference", [False, True])
def test_pml_parity_with_miner_output(miner: str, with_reference: bool) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    make = {
        "MultiSimilarityMiner": lambda: pml_miners.MultiSimilarityMiner(0.1),
        "TripletMarginMiner": lambda: pml_miners.TripletMarginMiner(0.3),
        "PairMarginMiner": lambda: pml_miners.PairMarginMiner(0.3, 0.6),
    }[miner]()
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        kwargs: dict[str, Tensor] = {}
        if with_reference:
            ref_emb, ref_labels = _batch(seed + 40, n=12, classes=4)
            kwargs = {"ref_emb": ref_emb, "ref_labels": ref_labels}
        indices = make(emb, labels, **kwargs)
        torch.testing.assert_close(
            NCALoss()(emb, labels, indices, **kwargs),
            pml_losses.NCALoss()(emb, labels, indices, **kwargs),
            rtol=0,
            atol=1e-6,
        )


def test_differs_from_pml_where_the_probability_underflows() -> None:
    # pytorch-metric-learning drops a query whose probability of a same-label neighbour underflows to 0
    # (the hardest ones); dmlkit computes -log p in log space and keeps it.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.1], [-1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ours = NCALoss(softmax_scale=100)(emb, labels)
    theirs = pml_losses.NCALoss(softmax_scale=100)(emb, labels)
    mat = ref_dist.lp_matrix(emb.double().tolist(), emb.double().tolist(), power=2)
    values, _ = ref.nca_values(mat, labels.tolist(), None, 100.0)
    assert min(values[:4]) > 150 and max(values[4:]) < 1
    assert ours.item() == pytest.approx(sum(values) / 6, rel=1e-5)
    assert theirs.item() == pytest.approx(sum(values[4:]) / 2, rel=1e-4)


def test_differs_from_pml_for_a_single_query_with_a_reference_set() -> None:
    # pytorch-metric-learning returns 0 for a batch of one even when a reference set is given
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(12, n=1, classes=1)
    ref_emb, ref_labels = _batch(13, n=6, classes=2)
    ref_labels[0] = 0
    got = NCALoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    assert got > 0 and got == pytest.approx(_oracle("lp_squared", emb, labels, 1.0, ref_emb, ref_labels), rel=1e-10)
    assert pml_losses.NCALoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item() == 0.0
