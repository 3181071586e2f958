"""MultiSimilarityLoss against the float64 oracle in tests/reference/multi_similarity.py, autograd, edge cases
and pytorch-metric-learning."""

from __future__ import annotations

import itertools
import math
import re
import warnings

import pytest
import torch
from torch import Tensor

from dmlkit.indices import all_pairs
from dmlkit.losses.multi_similarity import MultiSimilarityLoss
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import PerAnchorReducer, SumReducer
from tests.losses.cases import SOFTMAX_LOSS_DISTANCES
from tests.losses.cases import random_batch as _batch
from tests.reference import distances as ref_dist
from tests.reference import multi_similarity as ref
from tests.reference.triplet import all_pairs as oracle_pairs

# name -> (dmlkit distance factory, oracle matrix, higher is closer, PML distance class name and kwargs)
DISTANCES = SOFTMAX_LOSS_DISTANCES


def _oracle(
    distance: str,
    emb: Tensor,
    labels: Tensor,
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    pairs: tuple[list, list, list, list] | None = None,
    **params: float,
) -> float:
    _, matrix, higher, _ = DISTANCES[distance]
    mat = matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())
    if pairs is None:
        pairs = oracle_pairs(labels.tolist(), None if ref_labels is None else ref_labels.tolist())
    a1, p, a2, n = pairs
    return ref.multi_similarity_loss(
        mat, zip(a1, p, strict=True), zip(a2, n, strict=True), higher_is_closer=higher, **params
    )


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][3]
    return getattr(distances, cls_name)(**kwargs)


PARAMS = [
    {"alpha": 2.0, "beta": 50.0, "base": 0.5},
    {"alpha": 0.5, "beta": 5.0, "base": 0.0},
    {"alpha": 10.0, "beta": 40.0, "base": 1.2},
]

# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("params", PARAMS)
def test_matches_oracle(distance: str, params: dict[str, float]) -> None:
    loss_fn = MultiSimilarityLoss(**params, distance=DISTANCES[distance][0]())  # type: ignore[arg-type]
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = _oracle(distance, emb, labels, **params)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_oracle_sanity_hand_computed() -> None:
    # cosines: the pair (0, 1) at 0.6, the pairs (0, 2), (1, 2) at 0 and 0.8
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    a, b, base = 2.0, 10.0, 0.5
    row0 = math.log1p(math.exp(-a * (0.6 - base))) / a + math.log1p(math.exp(b * (0.0 - base))) / b
    row1 = math.log1p(math.exp(-a * (0.6 - base))) / a + math.log1p(math.exp(b * (0.8 - base))) / b
    row2 = math.log1p(math.exp(b * (0.0 - base)) + math.exp(b * (0.8 - base))) / b
    got = MultiSimilarityLoss(alpha=a, beta=b, base=base)(emb, labels).item()
    assert got == pytest.approx((row0 + row1 + row2) / 3, rel=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "lp"])
def test_matches_oracle_with_reference_set(distance: str) -> None:
    loss_fn = MultiSimilarityLoss(alpha=3, beta=20, base=0.3, distance=DISTANCES[distance][0]())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 50, n=9)
        expected = _oracle(distance, emb, labels, ref_emb, ref_labels, alpha=3, beta=20, base=0.3)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_oracle_with_mined_pairs_and_triplets() -> None:
    loss_fn = MultiSimilarityLoss(alpha=2, beta=10, base=0.4)
    for seed in range(3):
        emb, labels = _batch(seed, n=12)
        a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
        pairs = (a1[::2], p[::2], a2[1::3], n[1::3])
        got = loss_fn(emb, labels, tuple(torch.tensor(x, dtype=torch.long) for x in pairs))
        assert got.item() == pytest.approx(_oracle("cosine", emb, labels, pairs=pairs, alpha=2, beta=10, base=0.4))
        a, pos, neg = TripletMarginMiner(margin=0.5)(emb, labels)
        triplet_pairs = (a.tolist(), pos.tolist(), a.tolist(), neg.tolist())
        expected = _oracle("cosine", emb, labels, pairs=triplet_pairs, alpha=2, beta=10, base=0.4)
        assert loss_fn(emb, labels, (a, pos, neg)).item() == pytest.approx(expected, rel=1e-10)


def test_sub_loss_name_and_per_anchor_values() -> None:
    # one value per batch element: summing them gives the oracle's sum
    emb, labels = _batch(3)
    got = MultiSimilarityLoss(reducer=SumReducer())(emb, labels).item()
    assert got == pytest.approx(_oracle("cosine", emb, labels, alpha=2, beta=50, base=0.5) * 10, rel=1e-10)
    terms = MultiSimilarityLoss().compute_terms(emb, labels, None, emb, labels)
    assert list(terms) == ["loss"] and terms["loss"].anchors.tolist() == list(range(10))


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck(distance: str) -> None:
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = MultiSimilarityLoss(alpha=2, beta=5, base=0.3, distance=DISTANCES[distance][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set_and_miner() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = MultiSimilarityLoss(alpha=2, beta=5)
    pairs = all_pairs(labels, ref_labels)
    sub = (pairs[0][::2], pairs[1][::2], pairs[2], pairs[3])
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, sub, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_pairs_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    e = torch.empty(0, dtype=torch.long)
    loss = MultiSimilarityLoss()(emb, torch.arange(10), (e, e, e, e))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_single_class_warns_and_keeps_the_positive_term() -> None:
    emb, _ = _batch(4)
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.warns(UserWarning, match=re.escape("MultiSimilarityLoss: every label in the batch is 0")):
        got = MultiSimilarityLoss()(emb, labels).item()
    assert got == pytest.approx(_oracle("cosine", emb, labels, alpha=2, beta=50, base=0.5), rel=1e-10)


def test_all_unique_labels_keep_the_negative_term() -> None:
    emb, _ = _batch(5)
    labels = torch.arange(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = MultiSimilarityLoss()(emb, labels).item()
    assert got > 0 and got == pytest.approx(_oracle("cosine", emb, labels, alpha=2, beta=50, base=0.5), rel=1e-10)


def test_single_sample() -> None:
    emb = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="every label in the batch is 3"):
        loss = MultiSimilarityLoss()(emb, torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_identical_embeddings_are_finite(distance: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = MultiSimilarityLoss(distance=DISTANCES[distance][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(_oracle(distance, emb.detach(), labels, alpha=2, beta=50, base=0.5))


@pytest.mark.parametrize("alpha,beta", [(1e4, 1e4), (1e-4, 1e-4)])
def test_extreme_weights_stay_finite_in_float32(alpha: float, beta: float) -> None:
    emb, labels = _batch(6)
    emb = emb.float().requires_grad_()
    loss = MultiSimilarityLoss(alpha=alpha, beta=beta, base=0.0)(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    expected = _oracle("cosine", emb.detach().double(), labels, alpha=alpha, beta=beta, base=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("arg", ["alpha", "beta"])
@pytest.mark.parametrize("bad", [0, -1.5])
def test_error_non_positive_weight(arg: str, bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"MultiSimilarityLoss: `{arg}` must be a number > 0, got {bad!r}.")):
        MultiSimilarityLoss(**{arg: bad})


def test_error_base_not_a_number() -> None:
    with pytest.raises(TypeError, match=re.escape("MultiSimilarityLoss: `base` must be a number, got '0.5'.")):
        MultiSimilarityLoss(base="0.5")  # type: ignore[arg-type]


def test_error_distance_type() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape("MultiSimilarityLoss: `distance` must be a dmlkit distance (e.g. LpDistance()), got 'str'."),
    ):
        MultiSimilarityLoss(distance="cosine")  # type: ignore[arg-type]


def test_error_labels_or_indices_needed() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape("MultiSimilarityLoss: `labels` must be given (or an `indices_tuple` from a miner), got None."),
    ):
        MultiSimilarityLoss()(_batch(0)[0])


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("distance,params", list(itertools.product(DISTANCES, PARAMS)))
def test_pml_parity(distance: str, params: dict[str, float]) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = MultiSimilarityLoss(**params, distance=DISTANCES[distance][0]())  # type: ignore[arg-type]
    theirs = pml_losses.MultiSimilarityLoss(**params, distance=_pml_distance(distance))
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
    ours = MultiSimilarityLoss(distance=DISTANCES[distance][0]())
    theirs = pml_losses.MultiSimilarityLoss(distance=_pml_distance(distance))
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
        torch.testing.assert_close(
            MultiSimilarityLoss(beta=20)(emb, labels, indices),
            pml_losses.MultiSimilarityLoss(beta=20)(emb, labels, indices),
            rtol=0,
            atol=1e-6,
        )


def test_pml_parity_with_per_anchor_reducer() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    emb, labels = _batch(8, n=12)
    torch.testing.assert_close(
        MultiSimilarityLoss(reducer=PerAnchorReducer())(emb, labels),
        pml_losses.MultiSimilarityLoss(reducer=pml_reducers.PerAnchorReducer())(emb, labels),
        rtol=0,
        atol=1e-6,
    )


def test_differs_from_pml_for_a_single_mined_pair_of_each_kind() -> None:
    # pytorch-metric-learning returns 0 whenever at most one positive and one negative pair are given;
    # dmlkit scores them like any other pairs.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = torch.eye(3, dtype=torch.float64), torch.tensor([0, 0, 1])
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    mat = ref_dist.cosine_matrix(emb.tolist(), emb.tolist())
    expected = ref.multi_similarity_loss(mat, [(0, 1)], [(0, 2)])
    assert expected > 0
    assert MultiSimilarityLoss()(emb, labels, pairs).item() == pytest.approx(expected, rel=1e-12)
    assert pml_losses.MultiSimilarityLoss()(emb, labels, pairs).item() == 0.0
