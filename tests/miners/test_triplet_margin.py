"""TripletMarginMiner against brute-force loops (tests/reference/triplet.py), invariants and PML equality."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, LpDistance
from dmlkit.losses import TripletMarginLoss
from dmlkit.miners import TripletMarginMiner, TripletType
from dmlkit.miners import triplet_margin as miner_module
from dmlkit.types import Triplets
from tests.reference import triplet as ref

TYPES = ["all", "hard", "semihard", "easy"]
MARGINS = [0.0, 0.1, 0.5]

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], ref.DistanceSpec, tuple[str, dict]]] = {
    "lp": (LpDistance, ref.LP, ("LpDistance", {})),
    "lp_raw_squared": (
        lambda: LpDistance(normalize_embeddings=False, power=2),
        ref.DistanceSpec("lp", power=2, normalize=False),
        ("LpDistance", {"normalize_embeddings": False, "power": 2}),
    ),
    "cosine": (CosineSimilarity, ref.COSINE, ("CosineSimilarity", {})),
}


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _as_list(t: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in t), strict=True))


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][2]
    return getattr(distances, cls_name)(**kwargs)


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("type_of_triplets", TYPES)
@pytest.mark.parametrize("margin", MARGINS)
def test_matches_brute_force(distance: str, type_of_triplets: str, margin: float) -> None:
    factory, spec, _ = DISTANCES[distance]
    miner = TripletMarginMiner(margin=margin, type_of_triplets=type_of_triplets, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed)
        out = miner(emb, labels)
        assert isinstance(out, Triplets)
        assert _as_list(out) == ref.mine_triplets(emb, labels, margin, type_of_triplets, spec)


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("type_of_triplets", TYPES)
def test_matches_brute_force_with_reference_set(distance: str, type_of_triplets: str) -> None:
    factory, spec, _ = DISTANCES[distance]
    miner = TripletMarginMiner(margin=0.2, type_of_triplets=type_of_triplets, distance=factory())
    for seed in range(3):
        emb, labels = _batch(seed, n=7)
        ref_emb, ref_labels = _batch(seed + 40, n=10)
        out = miner(emb, labels, ref_emb, ref_labels)
        expected = ref.mine_triplets(emb, labels, 0.2, type_of_triplets, spec, ref_emb=ref_emb, ref_labels=ref_labels)
        assert _as_list(out) == expected


def test_types_partition_the_triplets() -> None:
    emb, labels = _batch(3, n=14)
    found = {t: set(_as_list(TripletMarginMiner(0.3, t)(emb, labels))) for t in TYPES}
    everything = set(ref.all_triplets(labels.tolist()))
    assert found["hard"] | found["semihard"] == found["all"]
    assert not found["hard"] & found["semihard"]
    assert found["all"] | found["easy"] == everything and not found["all"] & found["easy"]
    assert all(found.values())


def test_hand_computed_example() -> None:
    # 1-D points; raw Euclidean distances; labels 0 0 1 1
    emb = torch.tensor([[0.0], [1.0], [0.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    lp = LpDistance(normalize_embeddings=False)
    # gaps d(a,n) - d(a,p): (0,1,2) -0.5 (0,1,3) 2 (1,0,2) -0.5 (1,0,3) 1 (2,3,0) -2 (2,3,1) -2 (3,2,0) 0.5 (3,2,1) -0.5
    hard = [(0, 1, 2), (1, 0, 2), (2, 3, 0), (2, 3, 1), (3, 2, 1)]
    assert _as_list(TripletMarginMiner(0.6, "hard", distance=lp)(emb, labels)) == hard
    assert _as_list(TripletMarginMiner(0.6, "semihard", distance=lp)(emb, labels)) == [(3, 2, 0)]
    assert _as_list(TripletMarginMiner(0.6, "all", distance=lp)(emb, labels)) == sorted(hard + [(3, 2, 0)])
    assert _as_list(TripletMarginMiner(0.6, "easy", distance=lp)(emb, labels)) == [(0, 1, 3), (1, 0, 3)]
    # boundaries: gap == margin is "all"/"semihard", gap == 0 is "hard"
    assert (3, 2, 0) in _as_list(TripletMarginMiner(0.5, "semihard", distance=lp)(emb, labels))
    assert (3, 2, 0) not in _as_list(TripletMarginMiner(0.5, "easy", distance=lp)(emb, labels))


@pytest.mark.parametrize("type_of_triplets", TYPES)
@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(type_of_triplets: str, with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a, p, n = TripletMarginMiner(0.4, type_of_triplets)(*args)
        assert a.dtype == p.dtype == n.dtype == torch.long
        assert bool((labels[a] == ref_labels[p]).all())
        assert bool((labels[a] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a != p).all())
        triplets = _as_list((a, p, n))
        assert len(set(triplets)) == len(triplets)
        assert triplets == sorted(triplets)


def test_blocked_mining_equals_single_block(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(5, n=20, classes=4)
    whole = TripletMarginMiner(0.3, "all")(emb, labels)
    # force one anchor per block
    monkeypatch.setattr(miner_module, "_BLOCK_CELLS", 1)
    blocked = TripletMarginMiner(0.3, "all")(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(whole, blocked, strict=True))


def test_no_gradient_flows_through_mining() -> None:
    emb, labels = _batch(6)
    emb.requires_grad_()
    out = TripletMarginMiner()(emb, labels)
    assert not any(t.requires_grad for t in out)


def test_single_class_and_singletons_give_no_triplets() -> None:
    emb = _batch(0)[0]
    for labels in (torch.zeros(12, dtype=torch.long), torch.arange(12)):
        out = TripletMarginMiner(type_of_triplets="easy")(emb, labels)
        assert all(t.numel() == 0 and t.dtype == torch.long for t in out)


def test_type_of_triplets_accepts_enum_members() -> None:
    assert TripletMarginMiner(type_of_triplets=TripletType.SEMIHARD).type_of_triplets == "semihard"


def test_typo_in_type_of_triplets_is_rejected() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "TripletMarginMiner: `type_of_triplets` must be one of 'all', 'hard', 'semihard', 'easy', "
            "got 'semi-hard'. Did you mean 'semihard'"
        ),
    ):
        TripletMarginMiner(type_of_triplets="semi-hard")
    with pytest.raises(ValueError, match=re.escape("must be one of 'all', 'hard', 'semihard', 'easy', got 'Hard'")):
        TripletMarginMiner(type_of_triplets="Hard")


def test_negative_margin_is_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("TripletMarginMiner: `margin` must be a number >= 0, got -0.2.")):
        TripletMarginMiner(margin=-0.2)


def test_labels_are_required() -> None:
    with pytest.raises(ValueError, match=re.escape("TripletMarginMiner: `labels` must be given: miners need labels")):
        TripletMarginMiner()(_batch(0)[0], None)  # type: ignore[arg-type]


def test_bad_labels_are_rejected_with_the_miner_name() -> None:
    emb, labels = _batch(0)
    with pytest.raises(ValueError, match=re.escape("TripletMarginMiner: `labels` must be of the same length")):
        TripletMarginMiner()(emb, labels[:-1])


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("distance", list(DISTANCES))
@pytest.mark.parametrize("type_of_triplets", TYPES)
@pytest.mark.parametrize("margin", MARGINS)
def test_equal_to_pml(distance: str, type_of_triplets: str, margin: float) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    ours = TripletMarginMiner(margin=margin, type_of_triplets=type_of_triplets, distance=DISTANCES[distance][0]())
    theirs = pml_miners.TripletMarginMiner(
        margin=margin, type_of_triplets=type_of_triplets, distance=_pml_distance(distance)
    )
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        for x, y in zip(ours(emb, labels), theirs(emb, labels), strict=True):
            assert torch.equal(x, y)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        for x, y in zip(ours(emb, labels, ref_emb, ref_labels), theirs(emb, labels, ref_emb, ref_labels), strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("type_of_triplets", TYPES)
def test_mined_triplets_fed_to_the_loss_match_pml(type_of_triplets: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(4):
        emb, labels = _batch(seed, n=16, classes=4)
        ours = TripletMarginLoss(margin=0.2)(emb, labels, TripletMarginMiner(0.2, type_of_triplets)(emb, labels))
        theirs = pml_losses.TripletMarginLoss(margin=0.2)(
            emb, labels, pml_miners.TripletMarginMiner(0.2, type_of_triplets)(emb, labels)
        )
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
