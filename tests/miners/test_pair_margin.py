"""PairMarginMiner against brute-force loops (tests/reference/miners.py), invariants and PML equality."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners.pair_margin import PairMarginMiner
from dmlkit.types import Pairs
from tests.reference import miners as ref
from tests.reference.triplet import COSINE, LP, DistanceSpec, distance_matrix, to_lists

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], DistanceSpec, str]] = {
    "lp": (LpDistance, LP, "LpDistance"),
    "cosine": (CosineSimilarity, COSINE, "CosineSimilarity"),
}
MARGINS = {"lp": [(0.2, 0.8), (0.6, 1.2), (1.0, 1.0)], "cosine": [(0.2, 0.8), (0.5, -0.1), (0.0, 0.0)]}


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _split(out: tuple[Tensor, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    a1, p, a2, n = (t.tolist() for t in out)
    return list(zip(a1, p, strict=True)), list(zip(a2, n, strict=True))


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("with_ref", [False, True])
def test_matches_brute_force(distance: str, with_ref: bool) -> None:
    factory, spec, _ = DISTANCES[distance]
    for pos_margin, neg_margin in MARGINS[distance]:
        miner = PairMarginMiner(pos_margin, neg_margin, distance=factory())
        for seed in range(3):
            emb, labels = _batch(seed)
            ref_emb, ref_labels = _batch(seed + 50, n=9) if with_ref else (emb, labels)
            out = miner(emb, labels, ref_emb, ref_labels) if with_ref else miner(emb, labels)
            assert isinstance(out, Pairs)
            mat = distance_matrix(to_lists(emb), to_lists(ref_emb), spec)
            expected = ref.pair_margin(
                mat,
                labels.tolist(),
                pos_margin,
                neg_margin,
                spec.is_similarity,
                ref_labels.tolist() if with_ref else None,
            )
            assert _split(out) == expected


def test_hand_computed_example() -> None:
    emb = torch.tensor([[0.0], [1.0], [0.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    lp = LpDistance(normalize_embeddings=False)
    # positive distances: (0,1) 1, (2,3) 2.5; negative distances: 0-2 .5, 0-3 3, 1-2 .5, 1-3 2
    out = _split(PairMarginMiner(pos_margin=1.0, neg_margin=2.0, distance=lp)(emb, labels))
    assert out == ([(2, 3), (3, 2)], [(0, 2), (1, 2), (2, 0), (2, 1)])
    # strict inequalities: d == pos_margin is not mined, d == neg_margin is not mined
    out = _split(PairMarginMiner(pos_margin=2.5, neg_margin=0.5, distance=lp)(emb, labels))
    assert out == ([], [])


@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a1, p, a2, n = PairMarginMiner(0.3, 1.3)(*args)
        assert a1.dtype == p.dtype == a2.dtype == n.dtype == torch.long
        assert a1.numel() and a2.numel()
        assert bool((labels[a1] == ref_labels[p]).all()) and bool((labels[a2] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a1 != p).all())
        pos, neg = _split((a1, p, a2, n))
        assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)
        assert pos == sorted(pos) and neg == sorted(neg)


def test_single_class_and_singletons() -> None:
    emb = _batch(0)[0]
    a1, p, a2, n = PairMarginMiner(-1.0, 10.0)(emb, torch.zeros(12, dtype=torch.long))
    assert a1.numel() == 12 * 11 and a2.numel() == 0
    a1, p, a2, n = PairMarginMiner(-1.0, 10.0)(emb, torch.arange(12))
    assert a1.numel() == 0 and a2.numel() == 12 * 11 and a1.dtype == torch.long


def test_no_gradient_flows_through_mining() -> None:
    emb, labels = _batch(1)
    emb.requires_grad_()
    assert not any(t.requires_grad for t in PairMarginMiner()(emb, labels))


@pytest.mark.parametrize("arg", ["pos_margin", "neg_margin"])
def test_invalid_margins_are_rejected(arg: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"PairMarginMiner: `{arg}` must be a number, got '0.2'.")):
        PairMarginMiner(**{arg: "0.2"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(f"PairMarginMiner: `{arg}` must be a number, not NaN, got nan.")):
        PairMarginMiner(**{arg: float("nan")})


def test_labels_are_required() -> None:
    with pytest.raises(ValueError, match=re.escape("PairMarginMiner: `labels` must be given: miners need labels")):
        PairMarginMiner()(_batch(0)[0], None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_equal_to_pml(distance: str) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    factory, _, pml_name = DISTANCES[distance]
    for pos_margin, neg_margin in MARGINS[distance]:
        ours = PairMarginMiner(pos_margin, neg_margin, distance=factory())
        theirs = pml_miners.PairMarginMiner(pos_margin, neg_margin, distance=getattr(pml_distances, pml_name)())
        for seed in range(3):
            emb, labels = _batch(seed, n=16, classes=4)
            ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
            for args in [(emb, labels), (emb, labels, ref_emb, ref_labels)]:
                for x, y in zip(ours(*args), theirs(*args), strict=True):
                    assert torch.equal(x, y)


def test_mined_pairs_fed_to_the_triplet_loss_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ours = TripletMarginLoss(margin=0.2)(emb, labels, PairMarginMiner(0.3, 1.2)(emb, labels))
        mined = pml_miners.PairMarginMiner(0.3, 1.2)(emb, labels)
        theirs = pml_losses.TripletMarginLoss(margin=0.2)(emb, labels, mined)
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_mined_pairs_fed_to_the_contrastive_loss_match_pml() -> None:
    contrastive = pytest.importorskip("dmlkit.losses.contrastive", reason="dmlkit has no ContrastiveLoss")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        for args in [(emb, labels), (emb, labels, ref_emb, ref_labels)]:
            mined = PairMarginMiner(0.3, 1.2)(*args)
            ours = contrastive.ContrastiveLoss(0.1, 0.9)(emb, labels, mined, *args[2:])
            theirs_mined = pml_miners.PairMarginMiner(0.3, 1.2)(*args)
            theirs = pml_losses.ContrastiveLoss(0.1, 0.9)(emb, labels, theirs_mined, *args[2:])
            assert ours > 0
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
