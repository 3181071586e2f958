"""TripletMarginLoss against the float64 oracle in tests/reference/triplet.py, autograd, edge cases and PML."""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.indices import all_pairs, random_triplets
from dmlkit.losses import TripletMarginLoss
from dmlkit.losses import triplet_margin as triplet_module
from dmlkit.miners import TripletMarginMiner
from dmlkit.reducers import AvgNonZeroReducer, MeanReducer, SumReducer
from tests.reference import triplet as ref

# name -> (dmlkit distance factory, oracle spec, PML distance class name and kwargs)
DISTANCES: dict[str, tuple[Callable[[], BaseDistance], ref.DistanceSpec, tuple[str, dict]]] = {
    "lp": (LpDistance, ref.DistanceSpec("lp"), ("LpDistance", {})),
    "lp_raw": (
        lambda: LpDistance(normalize_embeddings=False),
        ref.DistanceSpec("lp", normalize=False),
        ("LpDistance", {"normalize_embeddings": False}),
    ),
    "lp_squared": (
        lambda: LpDistance(power=2),
        ref.DistanceSpec("lp", power=2),
        ("LpDistance", {"power": 2}),
    ),
    "lp_raw_squared": (
        lambda: LpDistance(normalize_embeddings=False, power=2),
        ref.DistanceSpec("lp", power=2, normalize=False),
        ("LpDistance", {"normalize_embeddings": False, "power": 2}),
    ),
    "lp1_raw": (
        lambda: LpDistance(normalize_embeddings=False, p=1),
        ref.DistanceSpec("lp", p=1, normalize=False),
        ("LpDistance", {"normalize_embeddings": False, "p": 1}),
    ),
    "cosine": (CosineSimilarity, ref.COSINE, ("CosineSimilarity", {})),
}


def _batch(seed: int, n: int = 10, d: int = 4, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (n,), generator=g)
    return emb, labels


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][2]
    return getattr(distances, cls_name)(**kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.05, 0.5])
def test_matches_oracle(distance: str, swap: bool, smooth: bool, margin: float) -> None:
    factory, spec, _ = DISTANCES[distance]
    loss_fn = TripletMarginLoss(margin=margin, swap=swap, smooth_loss=smooth, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.triplet_margin_loss(emb, labels, margin, spec, swap=swap, smooth=smooth)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("distance", ["lp", "lp_raw_squared", "cosine"])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("smooth", [False, True])
def test_matches_oracle_with_reference_set(distance: str, swap: bool, smooth: bool) -> None:
    factory, spec, _ = DISTANCES[distance]
    loss_fn = TripletMarginLoss(margin=0.3, swap=swap, smooth_loss=smooth, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 100, n=9)
        expected = ref.triplet_margin_loss(
            emb, labels, 0.3, spec, swap=swap, smooth=smooth, ref_emb=ref_emb, ref_labels=ref_labels
        )
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_oracle_sanity_hand_computed() -> None:
    # 1-D points, raw Euclidean distance: anchor 0 at 0, positive at 1, negative at 1.5 -> gap 0.5
    emb = torch.tensor([[0.0], [1.0], [1.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss_fn = TripletMarginLoss(margin=1.0, distance=LpDistance(normalize_embeddings=False))
    # triplets (0,1,2): 1 - (1.5 - 1) = 0.5 ; (1,0,2): 1 - (0.5 - 1) = 1.5 -> mean of non-zero = 1.0
    assert loss_fn(emb, labels).item() == pytest.approx(1.0, abs=1e-12)
    assert ref.triplet_margin_loss(emb, labels, 1.0, ref.DistanceSpec("lp", normalize=False)) == pytest.approx(1.0)
    # with swap, (0,1,2) uses min(d(0,2)=1.5, d(1,2)=0.5) -> 1 - (0.5 - 1) = 1.5; (1,0,2) unchanged 1.5
    loss_fn.swap = True
    assert loss_fn(emb, labels).item() == pytest.approx(1.5, abs=1e-12)


def test_avg_non_zero_ignores_satisfied_triplets() -> None:
    emb = torch.tensor([[0.0], [0.1], [5.0], [5.1], [0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1])
    loss_fn = TripletMarginLoss(margin=0.5, distance=LpDistance(normalize_embeddings=False))
    values = ref.triplet_values(
        ref.to_lists(emb), ref.all_triplets(labels.tolist()), 0.5, ref.DistanceSpec("lp", normalize=False)
    )
    assert 0 < sum(v > 0 for v in values) < len(values)
    positive = [v for v in values if v > 0]
    assert loss_fn(emb, labels).item() == pytest.approx(sum(positive) / len(positive), rel=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("swap", [False, True])
def test_gradcheck_smooth(distance: str, swap: bool) -> None:
    factory = DISTANCES[distance][0]
    emb, labels = _batch(1, n=6, d=3, classes=2)
    loss_fn = TripletMarginLoss(margin=0.2, swap=swap, smooth_loss=True, distance=factory())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck_hinge_away_from_kinks(distance: str) -> None:
    factory, spec, _ = DISTANCES[distance]
    margin = 0.3
    for seed in range(50):
        emb, labels = _batch(seed, n=6, d=3, classes=2)
        triplets = ref.all_triplets(labels.tolist())
        violations = [margin - g for g in ref.triplet_gaps(ref.to_lists(emb), triplets, spec)]
        # the hinge (and the non-zero average) has a kink at violation == 0: stay clear of it, some active
        if triplets and min(abs(v) for v in violations) > 1e-3 and any(v > 0 for v in violations):
            break
    else:
        pytest.fail("no random batch away from the hinge kinks")
    loss_fn = TripletMarginLoss(margin=margin, distance=factory())
    assert loss_fn(emb, labels).item() > 0
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=3, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=3, classes=2)
    loss_fn = TripletMarginLoss(margin=0.2, swap=True, smooth_loss=True)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_every_label_equal_gives_zero_loss_zero_gradient_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    labels = torch.full((10,), 4)
    with pytest.warns(UserWarning, match=re.escape("TripletMarginLoss: every label in the batch is 4")):
        loss = TripletMarginLoss()(emb, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert emb.grad is not None and bool((emb.grad == 0).all())


def test_single_class_warning_points_at_the_caller() -> None:
    emb = _batch(0)[0]
    with pytest.warns(UserWarning, match="every label in the batch") as record:
        TripletMarginLoss()(emb, torch.zeros(10, dtype=torch.long))
    assert record[0].filename == __file__


def test_no_triplet_without_positives_gives_zero_without_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = TripletMarginLoss()(emb, torch.arange(10))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and bool((emb.grad == 0).all())


def test_single_sample() -> None:
    emb = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="every label in the batch is 0"):
        loss = TripletMarginLoss()(emb, torch.tensor([0]))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and bool((emb.grad == 0).all())


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("smooth", [False, True])
def test_identical_embeddings_are_finite(distance: str, smooth: bool) -> None:
    factory, spec, _ = DISTANCES[distance]
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = TripletMarginLoss(margin=0.1, smooth_loss=smooth, distance=factory())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    # every gap is 0, so every triplet contributes margin (hinge) or log(1 + e^margin) (smooth)
    assert loss.item() == pytest.approx(ref.triplet_margin_loss(emb.detach(), labels, 0.1, spec, smooth=smooth))


@pytest.mark.parametrize("scale", [1e-8, 1e6])
@pytest.mark.parametrize("distance", ["lp", "lp_raw", "cosine"])
def test_extreme_scales_stay_finite(scale: float, distance: str) -> None:
    emb, labels = _batch(5, scale=scale)
    emb = emb.float().requires_grad_()
    loss = TripletMarginLoss(margin=0.2, smooth_loss=True, distance=DISTANCES[distance][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- indices_tuple


def test_indices_tuple_of_triplets() -> None:
    emb, labels = _batch(6)
    spec = DISTANCES["lp"][1]
    triplets = ref.all_triplets(labels.tolist())[::3]
    t = tuple(torch.tensor(col) for col in zip(*triplets, strict=True))
    got = TripletMarginLoss(margin=0.4)(emb, labels, indices_tuple=t)
    assert got.item() == pytest.approx(ref.triplet_margin_loss(emb, labels, 0.4, spec, triplets=triplets), rel=1e-9)
    # labels are not needed when triplets are given
    assert TripletMarginLoss(margin=0.4)(emb, indices_tuple=t).item() == pytest.approx(got.item(), rel=1e-12)


def test_indices_tuple_of_pairs() -> None:
    emb, labels = _batch(7)
    spec = DISTANCES["lp"][1]
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    keep_pos = list(range(0, len(a1), 2))
    keep_neg = list(range(1, len(a2), 3))
    pos = [(a1[i], p[i]) for i in keep_pos]
    neg = [(a2[j], n[j]) for j in keep_neg]
    triplets = [(a, q, m) for a, q in pos for b, m in neg if a == b]
    assert triplets
    pairs = (
        torch.tensor([a for a, _ in pos]),
        torch.tensor([q for _, q in pos]),
        torch.tensor([a for a, _ in neg]),
        torch.tensor([m for _, m in neg]),
    )
    got = TripletMarginLoss(margin=0.4)(emb, labels, indices_tuple=pairs)
    assert got.item() == pytest.approx(ref.triplet_margin_loss(emb, labels, 0.4, spec, triplets=triplets), rel=1e-9)


def test_empty_indices_tuple_gives_zero_and_zero_gradient() -> None:
    emb = _batch(8)[0].requires_grad_()
    e = torch.empty(0, dtype=torch.long)
    loss = TripletMarginLoss()(emb, torch.arange(10) % 3, indices_tuple=(e, e, e))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


# --------------------------------------------------------------------------------------------- reference set


def test_reference_set_semantics() -> None:
    emb, labels = _batch(9, n=6)
    spec = DISTANCES["lp"][1]
    # a copy of the batch as the reference is a different set: (i, i, n) triplets are allowed
    ref_emb, ref_labels = emb.clone(), labels.clone()
    triplets = ref.all_triplets(labels.tolist(), ref_labels.tolist())
    assert any(a == p for a, p, _ in triplets)
    loss_fn = TripletMarginLoss(margin=2.5)
    with_ref = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    assert with_ref == pytest.approx(ref.triplet_margin_loss(emb, labels, 2.5, spec, triplets=triplets), rel=1e-9)
    assert with_ref != pytest.approx(loss_fn(emb, labels).item(), rel=1e-6)


def test_reference_set_gradients_flow_to_both() -> None:
    emb, labels = _batch(10, n=5)
    ref_emb, ref_labels = _batch(11, n=7)
    emb.requires_grad_()
    ref_emb.requires_grad_()
    TripletMarginLoss(margin=1.0)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).backward()
    assert emb.grad.abs().sum() > 0 and ref_emb.grad.abs().sum() > 0


def test_reference_set_larger_than_batch_with_swap() -> None:
    # positives and negatives index the reference set; swap compares reference rows with each other
    emb, labels = _batch(12, n=3)
    ref_emb, ref_labels = _batch(13, n=12)
    spec = DISTANCES["lp"][1]
    got = TripletMarginLoss(margin=0.5, swap=True)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    expected = ref.triplet_margin_loss(emb, labels, 0.5, spec, swap=True, ref_emb=ref_emb, ref_labels=ref_labels)
    assert got.item() == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------------------------- random triplets


def test_triplets_per_anchor_reproducible_with_generator() -> None:
    emb, labels = _batch(14, n=12)
    values = [
        TripletMarginLoss(margin=0.5, triplets_per_anchor=3, generator=torch.Generator().manual_seed(7))(emb, labels)
        for _ in range(2)
    ]
    assert values[0].item() == values[1].item()
    # the loss scores exactly the triplets that the same generator draws
    drawn = random_triplets(labels, t_per_anchor=3, generator=torch.Generator().manual_seed(7))
    triplets = list(zip(*(x.tolist() for x in drawn), strict=True))
    expected = ref.triplet_margin_loss(emb, labels, 0.5, DISTANCES["lp"][1], triplets=triplets)
    assert values[0].item() == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------------------------- errors


def test_error_labels_length() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape("TripletMarginLoss: `labels` must be of the same length as `embeddings` (10), got length 9."),
    ):
        TripletMarginLoss()(emb, labels[:9])


def test_error_float_labels() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "TripletMarginLoss: `labels` must be an integer tensor (call .long()), "
            "got tensor of shape (10,) and dtype torch.float32."
        ),
    ):
        TripletMarginLoss()(emb, labels.float())


@pytest.mark.parametrize("shape", [(10,), (1, 10, 4)])
def test_error_embeddings_not_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "TripletMarginLoss: `embeddings` must be a 2-D tensor of shape (batch_size, embedding_size), "
            f"got tensor of shape {shape} and dtype torch.float32."
        ),
    ):
        TripletMarginLoss()(torch.zeros(shape), torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_error_non_finite_embeddings(bad: float) -> None:
    emb, labels = _batch(0)
    emb[2, 1] = bad
    emb[5, 0] = bad
    with pytest.raises(
        ValueError,
        match=re.escape(
            "TripletMarginLoss: `embeddings` must be finite (no NaN or Inf); check the model's outputs and "
            "learning rate, got 2 row(s) containing NaN or Inf."
        ),
    ):
        TripletMarginLoss()(emb, labels)


def test_error_negative_margin() -> None:
    with pytest.raises(ValueError, match=re.escape("TripletMarginLoss: `margin` must be a number >= 0, got -0.1.")):
        TripletMarginLoss(margin=-0.1)


def test_error_ref_emb_without_ref_labels() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "TripletMarginLoss: `ref_labels` must be given when `ref_emb` and `labels` are given, got None."
        ),
    ):
        TripletMarginLoss()(emb, labels, ref_emb=emb)


def test_error_ref_labels_without_ref_emb() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "TripletMarginLoss: `ref_labels` must be given only together with `ref_emb`, "
            "got ref_labels without ref_emb."
        ),
    ):
        TripletMarginLoss()(emb, labels, ref_labels=labels)


def test_error_ref_emb_size() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "TripletMarginLoss: `ref_emb` must be of embedding size 4 like `embeddings`, got embedding size 3."
        ),
    ):
        TripletMarginLoss()(emb, labels, ref_emb=emb[:, :3], ref_labels=labels)


@pytest.mark.parametrize("bad", [0, -1, "some", True, 2.0, None])
def test_error_bad_triplets_per_anchor(bad: object) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(f'TripletMarginLoss: `triplets_per_anchor` must be "all" or a positive integer, got {bad!r}.'),
    ):
        TripletMarginLoss(triplets_per_anchor=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- PML parity

PARITY_GRID = list(itertools.product(list(DISTANCES), [0.0, 0.05, 0.2, 1.0], [False, True], [False, True]))


@pytest.mark.parametrize("distance,margin,swap,smooth", PARITY_GRID)
def test_pml_parity(distance: str, margin: float, swap: bool, smooth: bool) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = TripletMarginLoss(margin=margin, swap=swap, smooth_loss=smooth, distance=DISTANCES[distance][0]())
    theirs = pml_losses.TripletMarginLoss(
        margin=margin, swap=swap, smooth_loss=smooth, distance=_pml_distance(distance)
    )
    for seed in range(5):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1 = emb.clone().requires_grad_()
        x2 = emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("smooth", [False, True])
def test_pml_parity_with_reference_set(distance: str, smooth: bool) -> None:
    # swap is left out: pytorch-metric-learning indexes its (query x reference) matrix with two reference
    # indices there; dmlkit's swap with a reference set is checked against the oracle above.
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = TripletMarginLoss(margin=0.2, smooth_loss=smooth, distance=DISTANCES[distance][0]())
    theirs = pml_losses.TripletMarginLoss(margin=0.2, smooth_loss=smooth, distance=_pml_distance(distance))
    for seed in range(5):
        emb, labels = _batch(seed, n=7, classes=3)
        ref_emb, ref_labels = _batch(seed + 30, n=11, classes=3)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-6,
        )


@pytest.mark.parametrize("type_of_triplets", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("distance", ["lp", "cosine"])
def test_pml_parity_with_miner_output(type_of_triplets: str, distance: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    factory = DISTANCES[distance][0]
    ours_miner = TripletMarginMiner(margin=0.3, type_of_triplets=type_of_triplets, distance=factory())
    theirs_miner = pml_miners.TripletMarginMiner(
        margin=0.3, type_of_triplets=type_of_triplets, distance=_pml_distance(distance)
    )
    ours = TripletMarginLoss(margin=0.1, distance=factory())
    theirs = pml_losses.TripletMarginLoss(margin=0.1, distance=_pml_distance(distance))
    for seed in range(5):
        emb, labels = _batch(seed, n=12, classes=3)
        torch.testing.assert_close(
            ours(emb, labels, ours_miner(emb, labels)),
            theirs(emb, labels, theirs_miner(emb, labels)),
            rtol=0,
            atol=1e-6,
        )


def test_pml_parity_with_pairs_indices_tuple() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for seed in range(5):
        emb, labels = _batch(seed, n=10)
        pairs = all_pairs(labels)
        g = torch.Generator().manual_seed(seed)
        keep_p = torch.randperm(pairs[0].numel(), generator=g)[: pairs[0].numel() // 2]
        keep_n = torch.randperm(pairs[2].numel(), generator=g)[: pairs[2].numel() // 2]
        sub = (pairs[0][keep_p], pairs[1][keep_p], pairs[2][keep_n], pairs[3][keep_n])
        torch.testing.assert_close(
            TripletMarginLoss(margin=0.5)(emb, labels, sub),
            pml_losses.TripletMarginLoss(margin=0.5)(emb, labels, sub),
            rtol=0,
            atol=1e-6,
        )


# ------------------------------------------------------------------------- fused (chunked) reductions


def _plain_reducer(reducer_cls: type) -> object:
    """A subclass of ``reducer_cls`` reduces the same way, but the loss keeps every term for it (per-term path)."""
    return type(f"Plain{reducer_cls.__name__}", (reducer_cls,), {})()


def _chunked_cases() -> list[tuple[type, str, bool, bool, str]]:
    """Every reducer x input kind, each under two of the distance / swap / smooth combinations (in rotation)."""
    options = [("lp", False, False), ("cosine", True, True), ("lp_raw_squared", True, False), ("lp", False, True)]
    inputs = ["nothing", "triplets", "pairs", "repeated pairs"]
    pairs = itertools.product([AvgNonZeroReducer, MeanReducer, SumReducer], inputs)
    return [
        (reducer, *options[(i + shift) % len(options)], mined)
        for i, (reducer, mined) in enumerate(pairs)
        for shift in (0, 1)
    ]


@pytest.mark.parametrize("reducer_cls,distance,swap,smooth,mined", _chunked_cases())
def test_chunked_reduction_equals_the_per_term_path(
    monkeypatch: pytest.MonkeyPatch, reducer_cls: type, distance: str, swap: bool, smooth: bool, mined: str
) -> None:
    # Small chunks so that every path crosses a few chunk boundaries (3 row blocks, listed triplets in several).
    monkeypatch.setattr(triplet_module, "_CHUNK_CELLS", 4 * 24 * 8)
    monkeypatch.setattr(triplet_module, "_LISTED_CHUNK", 700)
    factory = DISTANCES[distance][0]
    emb, labels = _batch(5, n=24, classes=4)
    indices: tuple[Tensor, ...] | None = None
    if mined == "triplets":
        indices = TripletMarginMiner(0.3, "all", distance=factory())(emb, labels)
    elif mined != "nothing":
        a1, p, a2, n = all_pairs(labels)
        keep_pos, keep_neg = torch.arange(a1.numel()) % 3 != 0, torch.arange(a2.numel()) % 2 == 0
        indices = (a1[keep_pos], p[keep_pos], a2[keep_neg], n[keep_neg])
        if mined == "repeated pairs":  # repeated pairs repeat their triplets: the masks cannot say so
            indices = tuple(torch.cat([t, t[:5]]) for t in indices)
    values, grads = [], []
    for reducer in (reducer_cls(), _plain_reducer(reducer_cls)):
        x = emb.clone().requires_grad_(True)
        loss = TripletMarginLoss(margin=0.2, swap=swap, smooth_loss=smooth, distance=factory(), reducer=reducer)
        value = loss(x, labels, indices)
        value.backward()
        values.append(value.detach())
        grads.append(x.grad)
    assert values[0].item() > 0
    assert torch.allclose(values[0], values[1], rtol=1e-12, atol=1e-14)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("swap", [False, True])
def test_chunked_reduction_with_a_reference_set(monkeypatch: pytest.MonkeyPatch, swap: bool) -> None:
    monkeypatch.setattr(triplet_module, "_CHUNK_CELLS", 4 * 16 * 4)
    emb, labels = _batch(6, n=12, classes=3)
    ref_emb, ref_labels = _batch(7, n=16, classes=3)
    values, grads = [], []
    for reducer in (AvgNonZeroReducer(), _plain_reducer(AvgNonZeroReducer)):
        x, r = emb.clone().requires_grad_(True), ref_emb.clone().requires_grad_(True)
        value = TripletMarginLoss(margin=0.3, swap=swap, reducer=reducer)(x, labels, ref_emb=r, ref_labels=ref_labels)
        value.backward()
        values.append(value.detach())
        grads.append(torch.cat([x.grad, r.grad]))
    assert torch.allclose(values[0], values[1], rtol=1e-12)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-13)


def test_chunked_reduction_without_positive_terms_is_a_connected_zero() -> None:
    emb = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for indices in (None, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))):
        loss = TripletMarginLoss(margin=0.1)(emb, labels, indices)
        loss.backward()
        assert loss.item() == 0.0 and emb.grad is not None and not emb.grad.any()
        emb.grad = None
