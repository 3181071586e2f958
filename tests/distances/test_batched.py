from __future__ import annotations

import re

import pytest
import torch

from dmlkit.distances import BatchedDistance, CosineSimilarity, LpDistance, SNRDistance


def _x(seed: int, n: int = 7, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _Collect:
    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, int, int]] = []

    def __call__(self, mat: torch.Tensor, start: int, end: int) -> None:
        self.calls.append((mat, start, end))

    def stacked(self) -> torch.Tensor:
        return torch.cat([mat for mat, _, _ in self.calls])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("distance", [LpDistance(), CosineSimilarity(), SNRDistance(power=2)])
def test_blocks_reassemble_the_matrix(batch_size: int, distance: torch.nn.Module) -> None:
    q, r = _x(0), _x(1, n=5)
    collect = _Collect()
    assert BatchedDistance(distance, collect, batch_size=batch_size)(q, r) is None
    torch.testing.assert_close(collect.stacked(), distance(q, r), rtol=0, atol=1e-12)
    starts = list(range(0, 7, batch_size))
    assert [(s, e) for _, s, e in collect.calls] == [(s, min(s + batch_size, 7)) for s in starts]
    for mat, s, e in collect.calls:
        assert mat.shape == (e - s, 5)


def test_ref_defaults_to_query() -> None:
    q = _x(2)
    collect = _Collect()
    BatchedDistance(LpDistance(), collect, batch_size=3)(q)
    torch.testing.assert_close(collect.stacked(), LpDistance()(q))


def test_empty_query_calls_nothing() -> None:
    collect = _Collect()
    BatchedDistance(LpDistance(), collect)(torch.zeros(0, 4), _x(3))
    assert collect.calls == []


def test_gradients_match_the_full_matrix() -> None:
    q = _x(4).requires_grad_()
    r = _x(5, n=6).requires_grad_()
    weights = torch.linspace(0.5, 2.0, 7 * 6, dtype=torch.float64).reshape(7, 6)
    losses: list[torch.Tensor] = []
    BatchedDistance(LpDistance(), lambda mat, s, e: losses.append((mat * weights[s:e]).sum()), batch_size=2)(q, r)
    batched_grads = torch.autograd.grad(torch.stack(losses).sum(), (q, r))
    full_grads = torch.autograd.grad((LpDistance()(q, r) * weights).sum(), (q, r))
    for got, expected in zip(batched_grads, full_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_attributes_fall_through_to_the_distance() -> None:
    inner = CosineSimilarity(power=2)
    batched = BatchedDistance(inner, _Collect(), batch_size=4)
    assert batched.distance is inner
    assert batched.is_inverted is True and batched.higher_is_closer is True
    assert batched.power == 2 and batched.p == 2 and batched.normalize_embeddings is True
    mat = torch.tensor([[0.1, 0.7]])
    assert batched.smallest_dist(mat).item() == pytest.approx(0.7)
    assert batched.batch_size == 4
    with pytest.raises(AttributeError):
        _ = batched.no_such_attribute


def test_missing_iter_fn() -> None:
    batched = BatchedDistance(LpDistance())
    expected = "BatchedDistance: `iter_fn` must be set (pass iter_fn=... or assign .iter_fn) before calling, got None."
    with pytest.raises(ValueError, match=re.escape(expected)):
        batched(_x(6))
    collect = _Collect()
    batched.iter_fn = collect
    batched(_x(6))
    assert len(collect.calls) == 1


def test_iter_fn_must_be_callable() -> None:
    expected = "BatchedDistance: `iter_fn` must be callable as iter_fn(mat, start, end), got 3."
    with pytest.raises(TypeError, match=re.escape(expected)):
        BatchedDistance(LpDistance(), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("batch_size", "error", "expected"),
    [
        (0, ValueError, "BatchedDistance: `batch_size` must be an integer >= 1, got 0."),
        (-4, ValueError, "BatchedDistance: `batch_size` must be an integer >= 1, got -4."),
        (2.0, TypeError, "BatchedDistance: `batch_size` must be an integer, got 2.0."),
        (True, TypeError, "BatchedDistance: `batch_size` must be an integer, got True."),
    ],
)
def test_invalid_batch_size(batch_size: object, error: type[Exception], expected: str) -> None:
    with pytest.raises(error, match=re.escape(expected)):
        BatchedDistance(LpDistance(), _Collect(), batch_size=batch_size)  # type: ignore[arg-type]


def test_distance_must_be_a_distance() -> None:
    expected = "BatchedDistance: `distance` must be a dmlkit distance (e.g. LpDistance()), got str."
    with pytest.raises(TypeError, match=re.escape(expected)):
        BatchedDistance("lp")  # type: ignore[arg-type]


def test_query_validated() -> None:
    expected = (
        "BatchedDistance: `query_emb` must be a 2-D tensor of shape (batch_size, embedding_size), "
        "got tensor of shape (3,) and dtype torch.float32."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        BatchedDistance(LpDistance(), _Collect())(torch.randn(3))


def test_pml_parity() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.distances", reason="PML parity needs PML")
    q, r = _x(7, n=10), _x(8, n=6)
    ours, theirs = _Collect(), _Collect()
    BatchedDistance(LpDistance(power=2), ours, batch_size=4)(q, r)
    pml.BatchedDistance(pml.LpDistance(power=2), theirs, batch_size=4)(q, r)
    assert [s for _, s, _ in ours.calls] == [s for _, s, _ in theirs.calls]
    torch.testing.assert_close(ours.stacked(), theirs.stacked(), rtol=0, atol=1e-6)
