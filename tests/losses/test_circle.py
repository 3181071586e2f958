"""CircleLoss against the float64 oracle in tests/reference/circle.py, gradients, edge cases, errors and PML."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import DotProductSimilarity, LpDistance
from dmlkit.indices import all_pairs, all_triplets
from dmlkit.losses.circle import CircleLoss
from tests.losses.cases import random_batch as _batch
from tests.reference import circle as ref
from tests.reference import distances as dref

# (m, gamma): the paper's settings for re-identification, fine-grained retrieval and faces, and small ones
SETTINGS = [(0.25, 128.0), (0.4, 80.0), (0.25, 256.0), (0.1, 4.0), (0.0, 1.0)]




def _pairs(labels: Tensor, ref_labels: Tensor | None = None) -> tuple[list[int], ...]:
    lab = labels.tolist()
    other = lab if ref_labels is None else ref_labels.tolist()
    a1, p, a2, n = [], [], [], []
    for i, li in enumerate(lab):
        for j, lj in enumerate(other):
            if ref_labels is None and i == j:
                continue
            (a1 if li == lj else a2).append(i)
            (p if li == lj else n).append(j)
    return a1, p, a2, n


def _cos(emb: Tensor, ref_emb: Tensor | None = None) -> list[list[float]]:
    return dref.cosine_matrix(emb.tolist(), (emb if ref_emb is None else ref_emb).tolist())


def _pml(**kwargs: Any) -> Any:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    return losses.CircleLoss(**kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("m,gamma", SETTINGS)
def test_matches_oracle(m: float, gamma: float) -> None:
    loss_fn = CircleLoss(m=m, gamma=gamma)
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.circle_loss(_cos(emb), _pairs(labels), m, gamma)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_oracle_with_reference_set() -> None:
    loss_fn = CircleLoss(m=0.25, gamma=64)
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 90, n=9)
        expected = ref.circle_loss(_cos(emb, ref_emb), _pairs(labels, ref_labels), 0.25, 64)
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10)


def test_given_pairs_and_triplets_match_oracle() -> None:
    loss_fn = CircleLoss(m=0.3, gamma=32)
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    pairs = (a1[::2] + a1[:3], p[::2] + p[:3], a2[::3] + a2[:2], n[::3] + n[:2])
    got = loss_fn(emb, labels, tuple(torch.tensor(x) for x in pairs))
    assert got.item() == pytest.approx(ref.circle_loss(_cos(emb), pairs, 0.3, 32), rel=1e-10)
    trip = [x[::6] for x in all_triplets(labels)]
    tpairs = (trip[0].tolist(), trip[1].tolist(), trip[0].tolist(), trip[2].tolist())
    assert loss_fn(emb, labels, tuple(trip)).item() == pytest.approx(
        ref.circle_loss(_cos(emb), tpairs, 0.3, 32), rel=1e-10
    )


def test_hand_computed() -> None:
    # anchor 0 with one positive (cos 0.6) and one negative (cos 0): m = 0.25, gamma = 2
    # alpha_p = 1.25 - 0.6 = 0.65, alpha_n = 0.25; loss = softplus(2 * (0.25 * (0 - 0.25) - 0.65 * (0.6 - 0.75)))
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    z = 2 * (0.25 * (0 - 0.25) - 0.65 * (0.6 - 0.75))
    expected = math.log1p(math.exp(z))
    assert CircleLoss(m=0.25, gamma=2)(emb, indices_tuple=pairs).item() == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("m,gamma", [(0.25, 16.0), (0.4, 2.0)])
def test_gradient_holds_the_weights_constant(m: float, gamma: float) -> None:
    # The paper stops the gradient through alpha: the gradient is the derivative of the oracle whose alpha
    # weights are frozen at the current similarities (checked by central differences).
    emb, labels = _batch(3, n=8, classes=3)
    x = emb.clone().requires_grad_()
    CircleLoss(m=m, gamma=gamma)(x, labels).backward()
    assert x.grad is not None
    pairs, base, h = _pairs(labels), _cos(emb), 1e-6
    for i, k in [(0, 0), (2, 3), (5, 1), (7, 2)]:
        up, down = emb.clone(), emb.clone()
        up[i, k] += h
        down[i, k] -= h
        numeric = (
            ref.circle_loss(_cos(up), pairs, m, gamma, weights_from=base)
            - ref.circle_loss(_cos(down), pairs, m, gamma, weights_from=base)
        ) / (2 * h)
        assert x.grad[i, k].item() == pytest.approx(numeric, rel=1e-6, abs=1e-7)


def test_gradient_with_reference_set_reaches_both() -> None:
    emb, labels = _batch(2, n=4, classes=2)
    ref_emb, ref_labels = _batch(3, n=6, classes=2)
    emb.requires_grad_()
    ref_emb.requires_grad_()
    CircleLoss(m=0.25, gamma=8)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).backward()
    assert emb.grad.abs().sum() > 0 and ref_emb.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("gamma", [80.0, 1e3, 1e5, 1e8])
def test_large_gamma_stays_finite(gamma: float) -> None:
    emb, labels = _batch(5, n=12)
    expected = ref.circle_loss(_cos(emb), _pairs(labels), 0.4, gamma)
    got = CircleLoss(gamma=gamma)(emb, labels)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    x = emb.float().requires_grad_()
    loss = CircleLoss(gamma=gamma)(x, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(x.grad).all())
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_rows_without_positives_or_negatives_score_zero() -> None:
    emb = _batch(1)[0].requires_grad_()
    loss = CircleLoss()(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())
    emb.grad = None
    with pytest.warns(UserWarning, match=re.escape("CircleLoss: every label in the batch is 7")):
        loss = CircleLoss()(emb, torch.full((10,), 7))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_empty_indices_tuple_gives_zero() -> None:
    emb = _batch(1)[0].requires_grad_()
    e = torch.empty(0, dtype=torch.long)
    loss = CircleLoss()(emb, torch.arange(10) % 2, (e, e, e))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_identical_embeddings_are_finite() -> None:
    emb = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = CircleLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(emb.grad).all())
    assert loss.item() == pytest.approx(ref.circle_loss(_cos(emb.detach()), _pairs(labels)), rel=1e-10)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("distance", [LpDistance(), DotProductSimilarity()])
def test_error_distance_must_be_cosine(distance: object) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "CircleLoss: `distance` must be a CosineSimilarity (the loss is defined on it), "
            f"got {type(distance).__name__}."
        ),
    ):
        CircleLoss(distance=distance)  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [0, -1.0])
def test_error_gamma_not_positive(gamma: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"CircleLoss: `gamma` must be a number > 0, got {gamma!r}.")):
        CircleLoss(gamma=gamma)


def test_error_m_not_a_number() -> None:
    with pytest.raises(TypeError, match=re.escape("CircleLoss: `m` must be a number, got '0.4'.")):
        CircleLoss(m="0.4")  # type: ignore[arg-type]


def test_error_pair_both_positive_and_negative() -> None:
    emb, labels = _batch(0)
    pairs = (torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2, 0]), torch.tensor([3, 1]))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CircleLoss: `indices_tuple` must be pairs that are either positive or negative, not both, "
            "got 2 pair(s) listed as both."
        ),
    ):
        CircleLoss()(emb, labels, pairs)


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("m,gamma", SETTINGS)
def test_pml_parity(m: float, gamma: float) -> None:
    ours, theirs = CircleLoss(m=m, gamma=gamma), _pml(m=m, gamma=gamma)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, d=5, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-9)


def test_pml_parity_with_reference_set_and_miners() -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    ours, theirs = CircleLoss(m=0.25, gamma=128), _pml(m=0.25, gamma=128)
    miners = [pml_miners.PairMarginMiner(pos_margin=0.4, neg_margin=1.0), pml_miners.TripletMarginMiner(margin=0.3)]
    for seed in range(3):
        emb, labels = _batch(seed, n=12, classes=4)
        ref_emb, ref_labels = _batch(seed + 10, n=15, classes=4)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-9,
        )
        for miner in miners:
            mined = miner(emb, labels)
            assert mined[0].numel() > 1
            torch.testing.assert_close(ours(emb, labels, mined), theirs(emb, labels, mined), rtol=0, atol=1e-9)
