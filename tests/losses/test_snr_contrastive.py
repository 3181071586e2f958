"""SignalToNoiseRatioContrastiveLoss against the float64 oracle in tests/reference/snr_contrastive.py, autograd,
edge cases, errors and PML."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance, SNRDistance
from dmlkit.indices import all_pairs, all_triplets
from dmlkit.losses.contrastive import ContrastiveLoss
from dmlkit.losses.snr_contrastive import SignalToNoiseRatioContrastiveLoss
from dmlkit.reducers import MeanReducer
from dmlkit.regularizers import ZeroMeanRegularizer
from tests.reference import snr_contrastive as ref

MARGINS = [(0.0, 1.0), (0.2, 0.8), (0.5, 1.5)]


def _batch(seed: int, n: int = 10, d: int = 5, classes: int = 3, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale, torch.randint(0, classes, (n,), generator=g)


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


def _pml(**kwargs: Any) -> Any:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    return losses.SignalToNoiseRatioContrastiveLoss(**kwargs)


# --------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("pm,nm", MARGINS)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_oracle(pm: float, nm: float, normalize: bool) -> None:
    loss_fn = SignalToNoiseRatioContrastiveLoss(
        pos_margin=pm, neg_margin=nm, distance=SNRDistance(normalize_embeddings=normalize)
    )
    for seed in range(3):
        emb, labels = _batch(seed)
        expected = ref.snr_contrastive_loss(emb.tolist(), _pairs(labels), pm, nm, normalize=normalize)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("weight", [0.001, 0.5])
def test_matches_oracle_with_zero_mean_regularizer(weight: float) -> None:
    # the paper's full objective: SNR contrastive terms plus lambda * mean |sum of each embedding|
    loss_fn = SignalToNoiseRatioContrastiveLoss(
        embedding_regularizer=ZeroMeanRegularizer(), embedding_reg_weight=weight
    )
    for seed in range(3):
        emb, labels = _batch(seed)
        emb = emb + 0.3
        expected = ref.snr_contrastive_loss(emb.tolist(), _pairs(labels), reg_weight=weight)
        assert loss_fn(emb, labels).item() == pytest.approx(expected, rel=1e-10)


def test_matches_oracle_with_reference_set() -> None:
    loss_fn = SignalToNoiseRatioContrastiveLoss(pos_margin=0.1, neg_margin=1.2)
    for seed in range(3):
        emb, labels = _batch(seed, n=6)
        ref_emb, ref_labels = _batch(seed + 40, n=8)
        expected = ref.snr_contrastive_loss(emb.tolist(), _pairs(labels, ref_labels), 0.1, 1.2, ref_emb.tolist())
        got = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
        assert got.item() == pytest.approx(expected, rel=1e-10)


def test_matches_oracle_with_given_pairs_and_triplets() -> None:
    loss_fn = SignalToNoiseRatioContrastiveLoss(neg_margin=1.3)
    emb, labels = _batch(4, n=12)
    a1, p, a2, n = (x.tolist() for x in all_pairs(labels))
    pairs = (a1[1::2] + a1[:1], p[1::2] + p[:1], a2[::4], n[::4])
    got = loss_fn(emb, labels, tuple(torch.tensor(x) for x in pairs))
    assert got.item() == pytest.approx(ref.snr_contrastive_loss(emb.tolist(), pairs, 0.0, 1.3), rel=1e-10)
    trip = [x[::7] for x in all_triplets(labels)]
    tpairs = (trip[0].tolist(), trip[1].tolist(), trip[0].tolist(), trip[2].tolist())
    got = loss_fn(emb, labels, tuple(trip))
    assert got.item() == pytest.approx(ref.snr_contrastive_loss(emb.tolist(), tpairs, 0.0, 1.3), rel=1e-10)


def test_hand_computed() -> None:
    # raw 3-D embeddings: Var([1, 2, 3]) = 1; the positive differs by [0, 0, 1] (variance 1/3), the negative
    # by [1, 0, -1] (variance 1), so d(0, 1) = 1/3, d(0, 2) = 1 (queries are the signal).
    emb = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 4.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss_fn = SignalToNoiseRatioContrastiveLoss(
        pos_margin=0.1, neg_margin=1.5, distance=SNRDistance(normalize_embeddings=False), reducer=MeanReducer()
    )
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    assert loss_fn(emb, labels, pairs).item() == pytest.approx((1 / 3 - 0.1) + (1.5 - 1.0), abs=1e-12)
    # the ratio is not symmetric: from query 1 the signal is row 1
    back = (torch.tensor([1]), torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    # Var([1, 2, 4]) = 7/3; differences [0, 0, -1] -> 1/3 and [1, 0, -2] -> 7/3: d(1, 0) = 1/7, d(1, 2) = 1
    assert loss_fn(emb, labels, back).item() == pytest.approx((1 / 7 - 0.1) + (1.5 - 1.0), abs=1e-12)


def test_equals_contrastive_loss_on_snr_distance() -> None:
    emb, labels = _batch(5, n=14)
    a = SignalToNoiseRatioContrastiveLoss(pos_margin=0.2, neg_margin=0.9)(emb, labels)
    b = ContrastiveLoss(pos_margin=0.2, neg_margin=0.9, distance=SNRDistance())(emb, labels)
    assert a.item() == b.item()


# --------------------------------------------------------------------------------------------- gradients


def test_gradcheck_away_from_kinks() -> None:
    pm, nm = 0.1, 1.0
    for seed in range(100):
        emb, labels = _batch(seed, n=6, d=4, classes=2)
        pairs = _pairs(labels)
        query = [[v / sum(x * x for x in r) ** 0.5 for v in r] for r in emb.tolist()]
        pos = [ref.snr(query[i], query[j]) - pm for i, j in zip(pairs[0], pairs[1], strict=True)]
        neg = [nm - ref.snr(query[i], query[k]) for i, k in zip(pairs[2], pairs[3], strict=True)]
        if pos and neg and min(abs(v) for v in pos + neg) > 1e-3 and any(v > 0 for v in neg):
            break
    else:
        pytest.fail("no random batch away from the hinge kinks")
    loss_fn = SignalToNoiseRatioContrastiveLoss(
        pos_margin=pm, neg_margin=nm, embedding_regularizer=ZeroMeanRegularizer(), embedding_reg_weight=0.01
    )
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (emb.requires_grad_(),))


def test_gradcheck_with_reference_set() -> None:
    emb, labels = _batch(2, n=4, d=4, classes=2)
    ref_emb, ref_labels = _batch(3, n=5, d=4, classes=2)
    loss_fn = SignalToNoiseRatioContrastiveLoss(neg_margin=3.0, reducer=MeanReducer())
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


# --------------------------------------------------------------------------------------------- edge cases


def test_no_pair_gives_zero_and_zero_gradient() -> None:
    emb = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match=re.escape("SignalToNoiseRatioContrastiveLoss: every label in the batch is 0")):
        loss = SignalToNoiseRatioContrastiveLoss()(emb, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


def test_identical_embeddings_are_finite() -> None:
    emb = torch.tensor([[1.0, -2.0, 0.5]] * 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = SignalToNoiseRatioContrastiveLoss()(emb, labels)
    loss.backward()
    # every ratio is 0: positives cost nothing, every negative costs neg_margin
    assert loss.item() == pytest.approx(1.0, abs=1e-12)
    assert bool(torch.isfinite(emb.grad).all())


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_extreme_scales_stay_finite(scale: float) -> None:
    emb, labels = _batch(5, scale=scale)
    emb = emb.float().requires_grad_()
    loss = SignalToNoiseRatioContrastiveLoss()(emb, labels)
    loss.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(emb.grad).all())


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("distance", [LpDistance(), CosineSimilarity()])
def test_error_distance_must_be_snr(distance: object) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "SignalToNoiseRatioContrastiveLoss: `distance` must be an SNRDistance (the loss is defined on it), "
            f"got {type(distance).__name__}."
        ),
    ):
        SignalToNoiseRatioContrastiveLoss(distance=distance)  # type: ignore[arg-type]


def test_error_margin_not_a_number() -> None:
    with pytest.raises(
        TypeError, match=re.escape("SignalToNoiseRatioContrastiveLoss: `neg_margin` must be a number, got None.")
    ):
        SignalToNoiseRatioContrastiveLoss(neg_margin=None)  # type: ignore[arg-type]


def test_default_distance_is_snr() -> None:
    loss_fn = SignalToNoiseRatioContrastiveLoss()
    assert isinstance(loss_fn.distance, SNRDistance) and loss_fn.distance.normalize_embeddings


# --------------------------------------------------------------------------------------------- PML parity


@pytest.mark.parametrize("pm,nm", MARGINS)
def test_pml_parity(pm: float, nm: float) -> None:
    ours = SignalToNoiseRatioContrastiveLoss(pos_margin=pm, neg_margin=nm)
    theirs = _pml(pos_margin=pm, neg_margin=nm)
    for seed in range(4):
        emb, labels = _batch(seed, n=12, classes=4)
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        a, b = ours(x1, labels), theirs(x2, labels)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


def test_pml_parity_with_regularizer_reference_set_and_miner() -> None:
    pml_regularizers = pytest.importorskip("pytorch_metric_learning.regularizers")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    ours = SignalToNoiseRatioContrastiveLoss(embedding_regularizer=ZeroMeanRegularizer(), embedding_reg_weight=0.1)
    theirs = _pml(embedding_regularizer=pml_regularizers.ZeroMeanRegularizer(), embedding_reg_weight=0.1)
    miner = pml_miners.PairMarginMiner(pos_margin=0.2, neg_margin=0.8)
    for seed in range(4):
        emb, labels = _batch(seed, n=10)
        ref_emb, ref_labels = _batch(seed + 20, n=13)
        torch.testing.assert_close(ours(emb, labels), theirs(emb, labels), rtol=0, atol=1e-10)
        torch.testing.assert_close(
            ours(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            theirs(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels),
            rtol=0,
            atol=1e-10,
        )
        mined = miner(emb, labels)
        torch.testing.assert_close(ours(emb, labels, mined), theirs(emb, labels, mined), rtol=0, atol=1e-10)
