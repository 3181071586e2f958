"""RankedListLoss against the float64 oracle in tests/reference/ranked_list.py, autograd, edge cases and PML."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses.ranked_list import RankedListLoss
from dmlkit.miners import TripletMarginMiner
from tests.reference import ranked_list as ref
from tests.reference.triplet import DistanceSpec

OPTIONS = [
    {"margin": 0.4, "Tn": 10},
    {"margin": 0.8, "Tn": 2, "Tp": 3, "imbalance": 0.3, "alpha": 1.1},
    {"margin": 0.0, "Tn": 0, "imbalance": 1.0},
    {"margin": 1.5, "Tn": 0.5, "Tp": -1, "imbalance": 0.0},
]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _values(loss_fn: RankedListLoss, emb: Tensor, labels: Tensor, *args: object, **kwargs: Tensor) -> list[float]:
    ref_emb, ref_labels = kwargs.get("ref_emb", emb), kwargs.get("ref_labels", labels)
    indices = args[0] if args else None
    return loss_fn.compute_terms(emb, labels, indices, ref_emb, ref_labels)["loss"].values.tolist()  # type: ignore


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_oracle(options: dict) -> None:
    loss_fn = RankedListLoss(**options)
    for seed in range(3):
        emb, labels = _batch(seed)
        assert _values(loss_fn, emb, labels) == pytest.approx(ref.ranked_list_values(emb, labels, **options), rel=1e-10)
        assert loss_fn(emb, labels).item() == pytest.approx(ref.ranked_list_loss(emb, labels, **options), rel=1e-10)


@pytest.mark.parametrize(
    "distance,spec",
    [
        (LpDistance(power=2), DistanceSpec("lp", power=2)),
        (LpDistance(normalize_embeddings=False), DistanceSpec("lp", normalize=False)),
    ],
)
def test_other_distances(distance: LpDistance, spec: DistanceSpec) -> None:
    emb, labels = _batch(3, scale=0.5)
    loss_fn = RankedListLoss(margin=0.5, Tn=3, Tp=1, distance=distance)
    expected = ref.ranked_list_loss(emb, labels, 0.5, 3, Tp=1, spec=spec)
    assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed() -> None:
    # raw 1-D distances, alpha = 1.2, margin 0.4 -> positives violate beyond 0.8, negatives inside 1.2
    emb = torch.tensor([[0.0], [1.0], [0.5], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    loss_fn = RankedListLoss(margin=0.4, Tn=0, distance=LpDistance(normalize_embeddings=False))
    values = _values(loss_fn, emb, labels)
    # query 0: positive at 1.0 (excess 0.2); negatives at 0.5 (shortfall 0.7) and 3.0 (none) -> 0.5*0.2 + 0.5*0.7
    assert values[0] == pytest.approx(0.45, rel=1e-12)
    # query 3: positive at 2.5 (excess 1.7); negatives at 3.0 and 2.0, both outside 1.2 -> 0.5 * 1.7
    assert values[3] == pytest.approx(0.85, rel=1e-12)


def test_miner_pairs_restrict_the_sets() -> None:
    emb, labels = _batch(4, n=14)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    assert triplets[0].numel() > 0
    pairs = [t.tolist() for t in (triplets[0], triplets[1], triplets[0], triplets[2])]
    expected = ref.ranked_list_loss(emb, labels, 0.4, 5, pairs=pairs)
    assert RankedListLoss(margin=0.4, Tn=5)(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-10)
    assert RankedListLoss(margin=0.4, Tn=5)(emb, indices_tuple=triplets).item() == pytest.approx(expected, rel=1e-10)


def test_reference_set() -> None:
    emb, labels = _batch(5, n=5)
    ref_emb, ref_labels = _batch(6, n=11)
    expected = ref.ranked_list_loss(emb, labels, 0.4, 4, Tp=2, ref_emb=ref_emb, ref_labels=ref_labels)
    got = RankedListLoss(margin=0.4, Tn=4, Tp=2)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------------------------- gradients


def _away_from_boundaries(options: dict, n: int = 7) -> tuple[Tensor, Tensor]:
    alpha = options.get("alpha", 1 + options["margin"] / 2)
    for seed in range(100):
        emb, labels = _batch(seed, n=n, d=3, classes=2)
        dist = LpDistance()(emb)
        gaps = torch.cat([(dist - alpha).abs().flatten(), (dist - (alpha - options["margin"])).abs().flatten()])
        if gaps.min() > 1e-3:
            return emb, labels
    pytest.fail("no batch away from the violation boundaries")


@pytest.mark.parametrize("options", OPTIONS[:2])
def test_gradcheck(options: dict) -> None:
    emb, labels = _away_from_boundaries(options)
    loss_fn = RankedListLoss(**options)
    assert loss_fn(emb, labels).item() > 0
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


# --------------------------------------------------------------------------------------------- edge cases


def test_satisfied_batch_gives_zero_and_zero_gradient() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]], dtype=torch.float64, requires_grad=True)
    loss = RankedListLoss(margin=0.4, Tn=10)(emb, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.filterwarnings("ignore:Values of Tp or Tn are too high:UserWarning")
def test_identical_embeddings_count_coinciding_negatives() -> None:
    # every distance is 0: each negative violates by alpha; pytorch-metric-learning drops pairs at distance 0
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = RankedListLoss(margin=0.4, Tn=10)(emb, labels)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 1.2, rel=1e-12)
    assert bool(torch.isfinite(emb.grad).all())
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    assert pml_losses.RankedListLoss(margin=0.4, Tn=10)(emb.detach(), labels).item() == 0.0


def test_large_temperatures_stay_finite_in_float32() -> None:
    # weights exp(100 * 1.2) overflow float32: the softmax form keeps them finite, pytorch-metric-learning's do not
    emb, labels = _batch(7)
    x = emb.float().requires_grad_()
    loss = RankedListLoss(margin=0.4, Tn=100, Tp=100)(x, labels)
    loss.backward()
    assert bool(torch.isfinite(x.grad).all())
    assert loss.item() == pytest.approx(ref.ranked_list_loss(emb, labels, 0.4, 100, Tp=100), rel=1e-4)
    big = RankedListLoss(margin=0.4, Tn=1e4, Tp=1e4)(x, labels)
    assert bool(torch.isfinite(big))
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    with pytest.warns(UserWarning, match="Too large temperature"):
        theirs = pml_losses.RankedListLoss(margin=0.4, Tn=100, Tp=100)(emb.float(), labels)
    assert not bool(torch.isfinite(theirs))


def test_one_class_has_only_the_positive_part() -> None:
    emb, _ = _batch(8)
    labels = torch.zeros(12, dtype=torch.long)
    with pytest.warns(UserWarning, match=re.escape("RankedListLoss: every label in the batch is 0")):
        got = RankedListLoss(margin=0.4, Tn=10)(emb, labels).item()
    assert got == pytest.approx(ref.ranked_list_loss(emb, labels, 0.4, 10), rel=1e-10)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,error,text",
    [
        ({"margin": -0.1, "Tn": 1}, ValueError, "RankedListLoss: `margin` must be a number >= 0, got -0.1."),
        (
            {"margin": 0.4, "Tn": 1, "imbalance": 1.5},
            ValueError,
            "RankedListLoss: `imbalance` must be a number >= 0 and <= 1, got 1.5.",
        ),
        ({"margin": 0.4, "Tn": "10"}, TypeError, "RankedListLoss: `Tn` must be a number, got '10'."),
        (
            {"margin": 0.4, "Tn": 1, "alpha": None, "Tp": None},
            TypeError,
            "RankedListLoss: `Tp` must be a number, got None.",
        ),
    ],
)
def test_error_parameters(kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        RankedListLoss(**kwargs)


def test_error_similarity() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "RankedListLoss: `distance` must be a distance (lower is closer), e.g. LpDistance(), "
            "got 'CosineSimilarity'."
        ),
    ):
        RankedListLoss(margin=0.4, Tn=1, distance=CosineSimilarity())


def test_default_alpha() -> None:
    assert RankedListLoss(margin=0.4, Tn=1).alpha == pytest.approx(1.2)
    assert RankedListLoss(margin=0.4, Tn=1, alpha=0.9).alpha == 0.9


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.filterwarnings("ignore:Values of Tp or Tn are too high:UserWarning")
@pytest.mark.parametrize("options", OPTIONS)
def test_pml_differs_only_by_its_denominator_guard(options: dict) -> None:
    # pytorch-metric-learning adds 1e-5 per reference element to each weighted mean's denominator
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    for seed in range(3):
        emb, labels = _batch(seed + 20)
        theirs = pml_losses.RankedListLoss(**options, reducer=pml_reducers.DoNothingReducer())(emb, labels)
        assert theirs["loss"]["losses"].tolist() == pytest.approx(
            ref.ranked_list_values(emb, labels, **options, denominator_eps=1e-5), rel=1e-10, abs=1e-14
        )
        ours = _values(RankedListLoss(**options), emb, labels)
        assert ours == pytest.approx(ref.ranked_list_values(emb, labels, **options), rel=1e-10, abs=1e-14)
        assert RankedListLoss(**options)(emb, labels).item() == pytest.approx(
            pml_losses.RankedListLoss(**options)(emb, labels).item(), rel=1e-3
        )


def test_pml_rejects_miners_and_reference_sets() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    emb, labels = _batch(30)
    triplets = tuple(TripletMarginMiner(margin=0.3)(emb, labels))
    with pytest.raises(ValueError, match="indices_tuple is not supported"):
        pml_losses.RankedListLoss(margin=0.4, Tn=1)(emb, labels, triplets)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml_losses.RankedListLoss(margin=0.4, Tn=1)(emb, labels, ref_emb=emb.clone(), ref_labels=labels.clone())
