"""UniformityLoss against the float64 oracle in tests/reference/alignment.py (Wang and Isola, 2020), on the dense
and the tiled path; the paper's code; gradients; edge cases and exact errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from dmlkit.distances import DotProductSimilarity, LpDistance
from dmlkit.losses.uniformity import UniformityLoss
from tests.reference import alignment as ref

CHUNKS = [0, 3]


def _emb(seed: int, n: int = 9, d: int = 4) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("t", [0.5, 2.0, 10.0])
def test_matches_oracle(chunk: int, t: float) -> None:
    for seed in range(3):
        emb = _emb(seed)
        got = UniformityLoss(t=t, chunk_size=chunk)(emb).item()
        assert got == pytest.approx(ref.uniformity_loss(emb.tolist(), t=t), rel=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_paper_code_and_labels_are_ignored(chunk: int) -> None:
    emb = _emb(1, n=12)
    loss_fn = UniformityLoss(chunk_size=chunk)
    got = loss_fn(emb)
    # the paper's code: torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log() on normalised features
    x = torch.nn.functional.normalize(emb)
    assert got.item() == pytest.approx(torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log().item(), rel=1e-12)
    assert loss_fn(emb, torch.arange(12) % 3).item() == pytest.approx(got.item(), rel=1e-14)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_reference_set_and_raw_distance(chunk: int) -> None:
    emb, ref_emb = _emb(2, n=5), _emb(3, n=8)
    got = UniformityLoss(chunk_size=chunk)(emb, ref_emb=ref_emb).item()
    assert got == pytest.approx(ref.uniformity_loss(emb.tolist(), ref_emb.tolist()), rel=1e-10)
    raw = UniformityLoss(t=0.3, chunk_size=chunk, distance=LpDistance(normalize_embeddings=False, power=2))
    expected = ref.uniformity_loss(emb.tolist(), t=0.3, normalize=False)
    assert raw(emb).item() == pytest.approx(expected, rel=1e-10)


def test_spread_points_score_lower_than_clustered_ones() -> None:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    spread = torch.stack([angles.cos(), angles.sin()], dim=1)
    clustered = torch.stack([(angles / 8).cos(), (angles / 8).sin()], dim=1)
    assert UniformityLoss()(spread).item() < UniformityLoss()(clustered).item()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gradcheck(chunk: int) -> None:
    emb, ref_emb = _emb(4, n=6, d=3), _emb(5, n=5, d=3)
    loss_fn = UniformityLoss(chunk_size=chunk)
    assert torch.autograd.gradcheck(loss_fn, (emb.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(
        lambda x, r: loss_fn(x, ref_emb=r), (emb.clone().requires_grad_(), ref_emb.requires_grad_())
    )


@pytest.mark.parametrize("chunk", CHUNKS)
def test_one_sample_has_no_pair(chunk: int) -> None:
    emb = _emb(6, n=1).requires_grad_()
    loss = UniformityLoss(chunk_size=chunk)(emb)
    loss.backward()
    assert loss.item() == 0.0 and bool((emb.grad == 0).all())


@pytest.mark.parametrize("chunk", CHUNKS)
def test_identical_points_give_zero_and_a_finite_gradient(chunk: int) -> None:
    emb = torch.ones(5, 3, dtype=torch.float64, requires_grad=True)
    loss = UniformityLoss(chunk_size=chunk)(emb)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and bool(torch.isfinite(emb.grad).all())


def test_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("UniformityLoss: `t` must be a number > 0, got -1.")):
        UniformityLoss(t=-1)
    rule = "a distance (lower is closer), e.g. LpDistance(power=2)"
    with pytest.raises(
        ValueError, match=re.escape(f"UniformityLoss: `distance` must be {rule}, got 'DotProductSimilarity'.")
    ):
        UniformityLoss(distance=DotProductSimilarity())
