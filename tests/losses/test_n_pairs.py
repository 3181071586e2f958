"""NPairsLoss against the float64 oracle in tests/reference/n_pairs.py, pair selection, autograd, edge cases
and pytorch-metric-learning."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from dmlkit.distances import BaseDistance, CosineSimilarity, DotProductSimilarity, LpDistance
from dmlkit.indices import all_pairs
from dmlkit.losses.n_pairs import NPairsLoss, _first_pair_per_label
from dmlkit.miners import TripletMarginMiner
from tests.reference import distances as ref_dist
from tests.reference import n_pairs as ref
from tests.reference.triplet import all_pairs as oracle_pairs

Matrix = list[list[float]]

DISTANCES: dict[str, tuple[Callable[[], BaseDistance], Callable[[Matrix, Matrix], Matrix], bool, tuple[str, dict]]] = {
    "dot": (DotProductSimilarity, ref_dist.dot_matrix, True, ("DotProductSimilarity", {})),
    "dot_raw": (
        lambda: DotProductSimilarity(normalize_embeddings=False),
        lambda q, r: ref_dist.dot_matrix(q, r, normalize=False),
        True,
        ("DotProductSimilarity", {"normalize_embeddings": False}),
    ),
    "cosine": (CosineSimilarity, ref_dist.cosine_matrix, True, ("CosineSimilarity", {})),
    "lp": (LpDistance, ref_dist.lp_matrix, False, ("LpDistance", {})),
}


def _batch(seed: int, n: int = 12, d: int = 4, classes: int = 5, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


def _oracle(distance: str, emb: Tensor, labels: Tensor, positive_pairs: list[tuple[int, int]] | None = None) -> float:
    _, matrix, higher, _ = DISTANCES[distance]
    mat = matrix(emb.tolist(), emb.tolist())
    if positive_pairs is None:
        a1, p, _, _ = oracle_pairs(labels.tolist())
        positive_pairs = list(zip(a1, p, strict=True))
    return ref.n_pairs_loss(mat, positive_pairs, labels.tolist(), higher)


def _pml_distance(name: str) -> object:
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    cls_name, kwargs = DISTANCES[name][3]
    return getattr(distances, cls_name)(**kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_matches_oracle(distance: str) -> None:
    loss_fn = NPairsLoss(distance=DISTANCES[distance][0]())
    for seed in range(4):
        emb, labels = _batch(seed)
        assert loss_fn(emb, labels).item() == pytest.approx(_oracle(distance, emb, labels), rel=1e-10, abs=1e-12)


def test_hand_computed() -> None:
    # classes 7 and 3 have pairs (1, 4) and (0, 2); class 5 has one sample and is left out
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 1.0], [0.8, 0.6]], dtype=torch.float64)
    labels = torch.tensor([3, 7, 3, 5, 7])
    s = ref_dist.dot_matrix(emb.tolist(), emb.tolist())
    # ordered by label: (0, 2) for 3, then (1, 4) for 7
    first = -math.log(math.exp(s[0][2]) / (math.exp(s[0][2]) + math.exp(s[0][4])))
    second = -math.log(math.exp(s[1][4]) / (math.exp(s[1][2]) + math.exp(s[1][4])))
    assert NPairsLoss()(emb, labels).item() == pytest.approx((first + second) / 2, rel=1e-12)


def test_pairs_are_the_first_per_label_like_pml() -> None:
    lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")
    for seed in range(5):
        _, labels = _batch(seed, n=20, classes=6)
        a1, p, _, _ = all_pairs(labels)
        perm = torch.randperm(a1.numel(), generator=torch.Generator().manual_seed(seed))
        for order in (torch.arange(a1.numel()), perm):
            ours = _first_pair_per_label(a1[order], p[order], labels)
            theirs = lmu.convert_to_pos_pairs_with_unique_labels((a1[order], p[order], a1[:0], p[:0]), labels)
            assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]


def test_matches_oracle_with_mined_pairs_in_their_order() -> None:
    emb, labels = _batch(5, n=16)
    a1, p, a2, n = (t.tolist() for t in all_pairs(labels))
    order = torch.randperm(len(a1), generator=torch.Generator().manual_seed(0)).tolist()
    mined = ([a1[i] for i in order], [p[i] for i in order], a2, n)
    got = NPairsLoss()(emb, labels, tuple(torch.tensor(x) for x in mined)).item()
    assert got == pytest.approx(_oracle("dot", emb, labels, list(zip(mined[0], mined[1], strict=True))), rel=1e-10)


def test_matches_oracle_with_mined_triplets() -> None:
    emb, labels = _batch(6, n=16)
    a, pos, neg = TripletMarginMiner(margin=0.5)(emb, labels)
    got = NPairsLoss()(emb, labels, (a, pos, neg)).item()
    assert got == pytest.approx(_oracle("dot", emb, labels, list(zip(a.tolist(), pos.tolist(), strict=True))))


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_gradcheck(distance: str) -> None:
    emb, labels = _batch(1, n=8, d=3, classes=3)
    loss_fn = NPairsLoss(distance=DISTANCES[distance][0]())
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


# --------------------------------------------------------------------------------------------- edge cases


def test_no_positive_pair_gives_zero_and_zero_gradient() -> None:
    emb = _batch(0)[0].requires_grad_()
    loss = NPairsLoss()(emb, torch.arange(12))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


def test_single_class_gives_zero_and_a_warning() -> None:
    emb = _batch(0)[0].requires_grad_()
    with pytest.warns(UserWarning, match=re.escape("NPairsLoss: every label in the batch is 4")):
        loss = NPairsLoss()(emb, torch.full((12,), 4))
    loss.backward()
    # one pair, classified among itself only
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_identical_embeddings_are_finite(distance: str) -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = NPairsLoss(distance=DISTANCES[distance][0]())(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(math.log(3), rel=1e-12)


def test_huge_logits_stay_finite_in_float32() -> None:
    emb, labels = _batch(7, scale=100.0)
    emb32 = emb.float().requires_grad_()
    loss = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))(emb32, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb32.grad).all())
    assert loss.item() == pytest.approx(_oracle("dot_raw", emb, labels), rel=1e-4)


# --------------------------------------------------------------------------------------------- errors


def test_error_reference_set_not_supported() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "NPairsLoss: `ref_emb` must be None: this loss does not support a reference set, got 'a tensor'."
        ),
    ):
        NPairsLoss()(emb, labels, ref_emb=emb, ref_labels=labels)


def test_error_labels_needed_even_with_indices() -> None:
    emb, labels = _batch(0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "NPairsLoss: `labels` must be given (the loss needs them even with an `indices_tuple`), got None."
        ),
    ):
        NPairsLoss()(emb, indices_tuple=tuple(all_pairs(labels)))


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_pml_parity(distance: str) -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    ours = NPairsLoss(distance=DISTANCES[distance][0]())
    theirs = pml_losses.NPairsLoss(distance=_pml_distance(distance))
    for seed in range(4):
        emb, labels = _batch(seed, n=16, d=5, classes=6)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


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
        emb, labels = _batch(seed, n=16, classes=5)
        indices = make(emb, labels)
        torch.testing.assert_close(
            NPairsLoss()(emb, labels, indices),
            pml_losses.NPairsLoss()(emb, labels, indices),
            rtol=0,
            atol=1e-6,
        )
