"""AlignmentLoss against the float64 oracle in tests/reference/alignment.py (Wang and Isola, 2020), on the matrix
path and the pairs-only path; the paper's code; gradients; edge cases and exact errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.losses.alignment import AlignmentLoss
from dmlkit.miners import PairMarginMiner
from tests.reference import alignment as ref
from tests.reference.triplet import all_pairs as oracle_pairs

CHUNKS = [0, 4]


def _batch(seed: int, n: int = 10, d: int = 4, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _label_pairs(labels: Tensor, ref_labels: Tensor | None = None) -> list[tuple[int, int]]:
    a1, p, _, _ = oracle_pairs(labels.tolist(), None if ref_labels is None else ref_labels.tolist())
    return list(zip(a1, p, strict=True))


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_matches_oracle(chunk: int, alpha: float) -> None:
    for seed in range(3):
        emb, labels = _batch(seed)
        got = AlignmentLoss(alpha=alpha, chunk_size=chunk)(emb, labels).item()
        expected = ref.alignment_loss(emb.tolist(), emb.tolist(), _label_pairs(labels), alpha)
        assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_two_views_as_in_the_paper(chunk: int) -> None:
    x, _ = _batch(1, n=8)
    y, _ = _batch(2, n=8)
    labels = torch.arange(8)
    got = AlignmentLoss(chunk_size=chunk)(x, labels, ref_emb=y, ref_labels=labels.clone())
    # the paper's code: (x - y).norm(p=2, dim=1).pow(alpha).mean() on normalised features
    xn, yn = torch.nn.functional.normalize(x), torch.nn.functional.normalize(y)
    assert got.item() == pytest.approx((xn - yn).norm(p=2, dim=1).pow(2).mean().item(), rel=1e-12)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_reference_set_mined_pairs_and_distance(chunk: int) -> None:
    emb, labels = _batch(3, n=6)
    ref_emb, ref_labels = _batch(4, n=9)
    got = AlignmentLoss(chunk_size=chunk)(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels).item()
    expected = ref.alignment_loss(emb.tolist(), ref_emb.tolist(), _label_pairs(labels, ref_labels))
    assert got == pytest.approx(expected, rel=1e-10)
    pairs = PairMarginMiner(pos_margin=0.2, neg_margin=0.5)(emb, labels)
    assert pairs[0].numel() > 0
    repeated = (torch.cat([pairs[0], pairs[0][:1]]), torch.cat([pairs[1], pairs[1][:1]]), pairs[2], pairs[3])
    listed = list(zip(repeated[0].tolist(), repeated[1].tolist(), strict=True))
    got = AlignmentLoss(alpha=1.5, chunk_size=chunk)(emb, None, repeated).item()
    assert got == pytest.approx(ref.alignment_loss(emb.tolist(), emb.tolist(), listed, 1.5), rel=1e-10)
    raw = AlignmentLoss(chunk_size=chunk, distance=LpDistance(normalize_embeddings=False))(emb, labels).item()
    expected = ref.alignment_loss(emb.tolist(), emb.tolist(), _label_pairs(labels), normalize=False)
    assert raw == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gradcheck(chunk: int) -> None:
    emb, labels = _batch(5, n=6, d=3, classes=2)
    ref_emb, ref_labels = _batch(6, n=5, d=3, classes=2)
    loss_fn = AlignmentLoss(alpha=2.5, chunk_size=chunk)
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels),
        (emb.requires_grad_(), ref_emb.requires_grad_()),
    )


@pytest.mark.parametrize("chunk", CHUNKS)
def test_no_positive_pair_gives_zero_and_zero_gradient(chunk: int) -> None:
    emb = _batch(7)[0].requires_grad_()
    loss = AlignmentLoss(chunk_size=chunk)(emb, torch.arange(10))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad and bool((emb.grad == 0).all())


@pytest.mark.parametrize("chunk", CHUNKS)
def test_identical_views_give_zero_and_a_finite_gradient(chunk: int) -> None:
    emb = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    loss = AlignmentLoss(chunk_size=chunk)(emb, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and bool(torch.isfinite(emb.grad).all())


def test_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("AlignmentLoss: `alpha` must be a number > 0, got 0.")):
        AlignmentLoss(alpha=0)
    rule = "a distance (lower is closer), e.g. LpDistance()"
    with pytest.raises(
        ValueError, match=re.escape(f"AlignmentLoss: `distance` must be {rule}, got 'CosineSimilarity'.")
    ):
        AlignmentLoss(distance=CosineSimilarity())
