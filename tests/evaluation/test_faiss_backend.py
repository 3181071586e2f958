"""FaissKNN: agreement with the exact search, self removal by index, approximate indexes, missing faiss."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from dmlkit.errors import MissingDependencyError
from dmlkit.evaluation import FaissKNN, knn


def points(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("metric", "distance"), [("l2", "euclidean"), ("inner_product", "inner_product")])
@pytest.mark.parametrize("includes", [False, True])
def test_flat_agrees_with_exact(metric: str, distance: str, includes: bool) -> None:
    pytest.importorskip("faiss")
    x = points(300, 0)
    reference = torch.cat([x, points(100, 1)]) if includes else points(250, 1)
    distances, indices = FaissKNN(metric=metric)(x, 7, reference, includes)
    exact = knn(x, 7, reference, includes, distance=distance)
    assert torch.equal(indices, exact.indices)  # continuous random data: no exact ties
    want = exact.distances**2 if metric == "l2" else exact.distances  # faiss reports squared L2
    torch.testing.assert_close(distances, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_exclude_self_and_find_most_neighbours(index: str) -> None:
    pytest.importorskip("faiss")
    x = points(400, 2)
    _, indices = FaissKNN(index=index, nlist=8, nprobe=8)(x, 5, x, True)
    assert indices.shape == (400, 5)
    assert not (indices == torch.arange(400)[:, None]).any()
    recall = (indices[:, :, None] == knn(x, 5).indices[:, None, :]).any(2).float().mean()
    assert recall > 0.9


def test_duplicates_keep_the_other_copy() -> None:
    pytest.importorskip("faiss")
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    _, indices = FaissKNN()(x, 1, x, True)
    # Rows 0 and 1 are identical: each must keep the other (self is removed by index, not by distance).
    assert indices[0, 0] == 1 and indices[1, 0] == 0


def test_missing_faiss_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingDependencyError, match=re.escape("FaissKNN(index='hnsw') needs the optional package")):
        FaissKNN(index="hnsw")(points(5, 3), 1)


def test_errors() -> None:
    with pytest.raises(
        ValueError, match=re.escape("FaissKNN: `index` must be one of 'flat', 'ivf', 'hnsw', got 'lsh'.")
    ):
        FaissKNN(index="lsh")
    with pytest.raises(ValueError, match=re.escape("FaissKNN: `metric` must be one of 'l2', 'inner_product'")):
        FaissKNN(metric="cosine")
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match=re.escape("FaissKNN: `k` must be <= the number of available references (4)")):
        FaissKNN()(points(5, 4), 5, None, True)
