from __future__ import annotations

import pytest
import torch

from dmlkit.distances import DotProductSimilarity
from tests.reference.distances import dot_matrix


def _x(seed: int, n: int = 5, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("with_ref", [False, True])
def test_matrix_matches_oracle(normalize: bool, power: int, with_ref: bool) -> None:
    q = _x(0) * 2
    r = _x(1, n=3) if with_ref else q
    d = DotProductSimilarity(normalize_embeddings=normalize, power=power)
    got = d(q, r) if with_ref else d(q)
    expected = torch.tensor(dot_matrix(q.tolist(), r.tolist(), power, normalize), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_default_normalizes() -> None:
    d = DotProductSimilarity()
    assert d.normalize_embeddings and d.is_inverted and d.higher_is_closer
    assert d(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 5.0], [2.0, 0.0]])).tolist() == [[0.0, 1.0]]


def test_unnormalized_scales() -> None:
    q, r = _x(2), _x(3)
    d = DotProductSimilarity(normalize_embeddings=False)
    torch.testing.assert_close(d(q * 2, r * 3), 6 * d(q, r))


def test_pairwise_distance_is_row_wise_dot() -> None:
    q, r = _x(4), _x(5)
    got = DotProductSimilarity().pairwise_distance(q, r)
    expected = [sum(a * b for a, b in zip(qi, ri, strict=True)) for qi, ri in zip(q.tolist(), r.tolist(), strict=True)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_gradcheck_unnormalized() -> None:
    q = _x(6, n=3).requires_grad_()
    r = _x(7, n=2).requires_grad_()
    fn = DotProductSimilarity(normalize_embeddings=False, power=2)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b), (q, r))
    assert torch.autograd.gradcheck(lambda a: fn(a), (q,))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("with_ref", [False, True])
def test_pml_parity(normalize: bool, power: int, with_ref: bool) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(8, n=6), _x(9, n=4)
    args = (q, r) if with_ref else (q,)
    ours = DotProductSimilarity(normalize_embeddings=normalize, power=power)(*args)
    theirs = pml.DotProductSimilarity(normalize_embeddings=normalize, power=power)(*args)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
