"""AngularMiner against brute-force loops (tests/reference/miners.py), hand-computed angles and PML equality."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses.triplet_margin import TripletMarginLoss
from dmlkit.miners import angular as angular_module
from dmlkit.miners.angular import AngularMiner
from dmlkit.types import Triplets
from tests.reference import miners as ref
from tests.reference.triplet import to_lists

ANGLES = [0, 10, 20, 35, 60, 90]


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _as_list(t: tuple[Tensor, ...]) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in t), strict=True))


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("with_ref", [False, True])
def test_matches_brute_force(angle: float, with_ref: bool) -> None:
    miner = AngularMiner(angle)
    for seed in range(3):
        emb, labels = _batch(seed)
        ref_emb, ref_labels = _batch(seed + 50, n=9) if with_ref else (emb, labels)
        out = miner(emb, labels, ref_emb, ref_labels) if with_ref else miner(emb, labels)
        assert isinstance(out, Triplets)
        expected = ref.angular_triplets(
            to_lists(emb),
            labels.tolist(),
            angle,
            to_lists(ref_emb) if with_ref else None,
            ref_labels.tolist() if with_ref else None,
        )
        assert _as_list(out) == expected


def test_hand_computed_angles() -> None:
    s = math.sqrt(0.5)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [s, s]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # tan(angle at n) = |a - p| / (2 |n - (a + p) / 2|):
    # (0, 1, 2): sqrt(2) / (2 sqrt(2.5)) -> 24.09 deg;  (0, 1, 3): sqrt(2) / (2 (1 - s)) -> 67.5 deg
    # (2, 3, 0): 37.6 deg;  (2, 3, 1): 54.4 deg; the pairs (1, 0) and (3, 2) have the same centre
    assert math.degrees(math.atan(math.sqrt(2) / (2 * math.sqrt(2.5)))) == pytest.approx(24.09, abs=0.01)
    assert math.degrees(math.atan(math.sqrt(2) / (2 * (1 - s)))) == pytest.approx(67.5)
    expected = {
        20: [(0, 1, 2), (0, 1, 3), (1, 0, 2), (1, 0, 3), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1)],
        30: [(0, 1, 3), (1, 0, 3), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1)],
        40: [(0, 1, 3), (1, 0, 3), (2, 3, 1), (3, 2, 1)],
        60: [(0, 1, 3), (1, 0, 3)],
        67: [(0, 1, 3), (1, 0, 3)],
        68: [],
    }
    for angle, triplets in expected.items():
        assert _as_list(AngularMiner(angle)(emb, labels)) == triplets, angle


def test_angles_are_measured_on_normalised_embeddings() -> None:
    emb, labels = _batch(4, n=16, classes=4)
    scales = torch.rand(16, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5 + 0.1
    assert _as_list(AngularMiner(20)(emb * scales, labels)) == _as_list(AngularMiner(20)(emb, labels))


def test_identical_embeddings_give_no_nan() -> None:
    emb = torch.ones(6, 3)
    assert all(t.numel() == 0 for t in AngularMiner(0)(emb, torch.tensor([0, 0, 1, 1, 2, 2])))


@pytest.mark.parametrize("with_ref", [False, True])
def test_invariants(with_ref: bool) -> None:
    for seed in range(4):
        emb, labels = _batch(seed, n=15, classes=4)
        ref_emb, ref_labels = _batch(seed + 9, n=11, classes=4) if with_ref else (emb, labels)
        args = (emb, labels, ref_emb, ref_labels) if with_ref else (emb, labels)
        a, p, n = AngularMiner(30)(*args)
        assert a.dtype == p.dtype == n.dtype == torch.long and a.numel()
        assert bool((labels[a] == ref_labels[p]).all()) and bool((labels[a] != ref_labels[n]).all())
        if not with_ref:
            assert bool((a != p).all())
        triplets = _as_list((a, p, n))
        assert len(set(triplets)) == len(triplets) and triplets == sorted(triplets)


def test_blocked_mining_equals_single_block(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(5, n=20, classes=4)
    whole = AngularMiner(25)(emb, labels)
    monkeypatch.setattr(angular_module, "_BLOCK_CELLS", 1)
    blocked = AngularMiner(25)(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(whole, blocked, strict=True))


def test_single_class_and_singletons_give_nothing() -> None:
    emb = _batch(0)[0]
    for labels in (torch.zeros(12, dtype=torch.long), torch.arange(12)):
        assert all(t.numel() == 0 and t.dtype == torch.long for t in AngularMiner(0)(emb, labels))


@pytest.mark.parametrize(
    "distance",
    [CosineSimilarity(), LpDistance(power=2), LpDistance(normalize_embeddings=False), LpDistance(p=1)],
)
def test_other_distances_are_rejected(distance: object) -> None:
    rule = "LpDistance(p=2, power=1, normalize_embeddings=True)"
    with pytest.raises(ValueError, match=re.escape(f"AngularMiner: `distance` must be {rule}, got {distance!r}.")):
        AngularMiner(distance=distance)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 90.5])
def test_angle_out_of_range_is_rejected(bad: float) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"AngularMiner: `angle` must be a number >= 0 and <= 90, got {bad}.")
    ):
        AngularMiner(angle=bad)


# --------------------------------------------------------------------------------------------- PML


@pytest.mark.parametrize("angle", ANGLES)
def test_equal_to_pml_on_normalised_embeddings(angle: float) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        ref_emb, ref_labels = _batch(seed + 70, n=9, classes=4)
        emb, ref_emb = torch.nn.functional.normalize(emb), torch.nn.functional.normalize(ref_emb)
        for args in [(emb, labels), (emb, labels, ref_emb, ref_labels)]:
            for x, y in zip(AngularMiner(angle)(*args), pml_miners.AngularMiner(angle)(*args), strict=True):
                assert torch.equal(x, y)


def test_pml_measures_angles_on_raw_embeddings() -> None:
    """PML requires a normalising distance but measures the angles on the raw embeddings, unlike its
    AngularLoss; rescaling the rows changes its output, not ours."""
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    emb, labels = _batch(4, n=16, classes=4)
    scaled = emb * torch.linspace(0.2, 5.0, 16, dtype=torch.float64).unsqueeze(1)
    theirs = [_as_list(pml_miners.AngularMiner(20)(x, labels)) for x in (emb, scaled)]
    assert theirs[0] != theirs[1]
    assert _as_list(AngularMiner(20)(scaled, labels)) == _as_list(
        pml_miners.AngularMiner(20)(torch.nn.functional.normalize(emb), labels)
    )


def test_mined_triplets_fed_to_the_triplet_loss_match_pml() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    for seed in range(3):
        emb, labels = _batch(seed, n=16, classes=4)
        emb = torch.nn.functional.normalize(emb)
        ours = TripletMarginLoss(margin=0.2)(emb, labels, AngularMiner(30)(emb, labels))
        theirs = pml_losses.TripletMarginLoss(margin=0.2)(emb, labels, pml_miners.AngularMiner(30)(emb, labels))
        assert ours > 0
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
