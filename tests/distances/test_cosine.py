from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import CosineSimilarity
from tests.reference.distances import cosine_matrix


def _x(seed: int, n: int = 5, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("with_ref", [False, True])
def test_matrix_matches_oracle(with_ref: bool) -> None:
    q = _x(0) * 3
    r = _x(1, n=3) if with_ref else q
    got = CosineSimilarity()(q, r) if with_ref else CosineSimilarity()(q)
    torch.testing.assert_close(got, torch.tensor(cosine_matrix(q.tolist(), r.tolist()), dtype=torch.float64))


def test_scale_invariant_and_bounded() -> None:
    q, r = _x(2), _x(3)
    d = CosineSimilarity()
    torch.testing.assert_close(d(q * 7.5, r * 0.01), d(q, r))
    mat = d(q)
    assert mat.abs().max().item() <= 1 + 1e-12
    torch.testing.assert_close(mat.diagonal(), torch.ones(5, dtype=torch.float64))


def test_is_a_similarity() -> None:
    d = CosineSimilarity()
    assert d.is_inverted and d.higher_is_closer and d.normalize_embeddings


def test_pairwise_distance_is_row_wise_cosine() -> None:
    q, r = _x(4), _x(5)
    d = CosineSimilarity()
    got = d.pairwise_distance(d.normalize(q), d.normalize(r))
    torch.testing.assert_close(got, torch.tensor(cosine_matrix(q.tolist(), r.tolist()), dtype=torch.float64).diagonal())


def test_normalize_embeddings_false_rejected() -> None:
    expected = (
        "CosineSimilarity: `normalize_embeddings` must be True (use DotProductSimilarity for unnormalised inner "
        "products), got False."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        CosineSimilarity(normalize_embeddings=False)


@pytest.mark.parametrize("p", [1, 3, 0])
def test_p_other_than_two_rejected(p: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"CosineSimilarity: `p` must be 2, got {p}.")):
        CosineSimilarity(p=p)


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("with_ref", [False, True])
def test_pml_parity(power: int, with_ref: bool) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(6, n=6), _x(7, n=4)
    args = (q, r) if with_ref else (q,)
    torch.testing.assert_close(
        CosineSimilarity(power=power)(*args), pml.CosineSimilarity(power=power)(*args), rtol=0, atol=1e-6
    )
