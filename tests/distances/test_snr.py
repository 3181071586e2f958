from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import SNRDistance
from tests.reference.distances import snr_matrix, variance


def _x(seed: int, n: int = 5, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _oracle(q: torch.Tensor, r: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return torch.tensor(snr_matrix(q.tolist(), r.tolist(), **kwargs), dtype=torch.float64)  # type: ignore[arg-type]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("with_ref", [False, True])
def test_matrix_matches_oracle(normalize: bool, power: int, with_ref: bool) -> None:
    q = _x(0) + 0.5
    r = _x(1, n=3) if with_ref else q
    d = SNRDistance(normalize_embeddings=normalize, power=power)
    got = d(q, r) if with_ref else d(q)
    torch.testing.assert_close(got, _oracle(q, r, power=power, normalize=normalize), rtol=1e-10, atol=1e-12)


def test_hand_computed() -> None:
    # Var([1, 2, 3]) = 1; [2, 2, 2] - [1, 2, 3] = [1, 0, -1] has variance 1; [3, 6, 9] - x = [2, 4, 6]: 4.
    d = SNRDistance(normalize_embeddings=False)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert d(x, torch.tensor([[2.0, 2.0, 2.0], [3.0, 6.0, 9.0], [11.0, 12.0, 13.0]])).tolist() == [[1.0, 4.0, 0.0]]


def test_not_symmetric_and_invariant_to_shifts() -> None:
    q, r = _x(2), _x(3)
    d = SNRDistance(normalize_embeddings=False)
    mat = d(q, r)
    assert not torch.allclose(mat, d(r, q).T)
    # Adding a constant to a row changes neither variance.
    torch.testing.assert_close(d(q + 5.0, r - 2.0), mat)


def test_no_cancellation_for_large_offsets() -> None:
    # Means of 1e3 in float32: centring before the matrix product keeps the relative error small.
    q, r = _x(4, n=8, d=32), _x(5, n=8, d=32)
    d = SNRDistance(normalize_embeddings=False)
    got = d((q + 1e3).float(), (r + 1e3).float()).double()
    torch.testing.assert_close(got, _oracle(q, r, normalize=False), rtol=1e-4, atol=1e-5)


def test_near_identical_rows_clamped_at_zero() -> None:
    x = _x(6, n=4, d=64).float()
    mat = SNRDistance(normalize_embeddings=False)(x, x + 1e-7)
    assert mat.min().item() >= 0
    assert mat.diagonal().max().item() < 1e-5


def test_pairwise_distance_matches_oracle() -> None:
    q, r = _x(7), _x(8)
    got = SNRDistance().pairwise_distance(q, r)
    expected = []
    for qi, ri in zip(q.tolist(), r.tolist(), strict=True):
        expected.append(variance([b - a for a, b in zip(qi, ri, strict=True)]) / variance(qi))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(got, SNRDistance(normalize_embeddings=False)(q, r).diagonal())


def test_is_a_distance() -> None:
    d = SNRDistance()
    assert not d.is_inverted and not d.higher_is_closer and d.normalize_embeddings


def test_is_inverted_rejected() -> None:
    with pytest.raises(
        ValueError, match=re.escape("SNRDistance: `is_inverted` must be False (it is a distance), got True.")
    ):
        SNRDistance(is_inverted=True)


def test_embedding_size_one_rejected() -> None:
    expected = (
        "SNRDistance: `query_emb` must be of embedding size >= 2 (the variance over one dimension is undefined), got 1."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        SNRDistance()(torch.randn(3, 1))
    with pytest.raises(ValueError, match=re.escape(expected)):
        SNRDistance().pairwise_distance(torch.randn(3, 1), torch.randn(3, 1))


def test_does_not_build_a_three_dimensional_tensor() -> None:
    # 100 x 100 pairs of 256 dimensions would need 2.56M floats as (N, M, D) differences; the matrix
    # product only needs the inputs and the output. Check via the autograd graph's saved tensors.
    q = torch.randn(100, 256, requires_grad=True)
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SNRDistance()(q)
    assert max(sizes) <= 100 * 256


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("power", [1, 2])
def test_gradcheck(normalize: bool, power: int) -> None:
    q = _x(9, n=3, d=4).requires_grad_()
    r = _x(10, n=2, d=4).requires_grad_()
    fn = SNRDistance(normalize_embeddings=normalize, power=power)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b), (q, r))
    assert torch.autograd.gradcheck(lambda a: fn(a), (q,))


def test_bfloat16() -> None:
    q, r = _x(11).float(), _x(12).float()
    got = SNRDistance()(q.bfloat16(), r.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), SNRDistance()(q, r), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("with_ref", [False, True])
def test_pml_parity(normalize: bool, power: int, with_ref: bool) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(13, n=6), _x(14, n=4)
    args = (q, r) if with_ref else (q,)
    ours = SNRDistance(normalize_embeddings=normalize, power=power)(*args)
    theirs = pml.SNRDistance(normalize_embeddings=normalize, power=power)(*args)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pairwise_pml_parity() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(15), _x(16)
    torch.testing.assert_close(
        SNRDistance().pairwise_distance(q, r), pml.SNRDistance().pairwise_distance(q, r), rtol=0, atol=1e-6
    )
