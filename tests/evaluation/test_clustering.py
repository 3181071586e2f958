"""NMI / AMI against scikit-learn, and the k-means backends."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from dmlkit.errors import MissingDependencyError
from dmlkit.evaluation import KMeans, adjusted_mutual_info, normalized_mutual_info

metrics = pytest.importorskip("sklearn.metrics")


def random_labelings(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(40):
        n = int(torch.randint(1, 80, (), generator=g))
        a = torch.randint(0, int(torch.randint(1, 7, (), generator=g)), (n,), generator=g)
        b = torch.randint(0, int(torch.randint(1, 7, (), generator=g)), (n,), generator=g)
        cases.append((a, b))
    return cases


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_sklearn_on_random_labelings(seed: int) -> None:
    for a, b in random_labelings(seed):
        assert normalized_mutual_info(a, b) == pytest.approx(metrics.normalized_mutual_info_score(a, b), abs=1e-12)
        assert adjusted_mutual_info(a, b) == pytest.approx(metrics.adjusted_mutual_info_score(a, b), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0, 0, 0], [1, 1, 1]),  # one class, one cluster: 1.0 by convention
        ([0, 0, 0], [0, 1, 2]),  # one class: NMI 0, AMI 0
        ([0, 1, 2], [0, 1, 2]),  # every sample alone
        ([0, 1, 2, 3], [3, 2, 1, 0]),
        ([0], [5]),
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # independent: MI 0
        ([7, 7, 3, 3, 3], [1, 1, 1, 2, 2]),
    ],
)
def test_limit_cases_equal_sklearn(a: list[int], b: list[int]) -> None:
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert normalized_mutual_info(ta, tb) == pytest.approx(metrics.normalized_mutual_info_score(a, b), abs=1e-12)
    assert adjusted_mutual_info(ta, tb) == pytest.approx(metrics.adjusted_mutual_info_score(a, b), abs=1e-12)


def test_many_samples_and_column_labels() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 50, (20000,), generator=g)
    b = torch.where(torch.rand(20000, generator=g) < 0.6, a, torch.randint(0, 50, (20000,), generator=g))
    assert adjusted_mutual_info(a[:, None], b) == pytest.approx(metrics.adjusted_mutual_info_score(a, b), abs=1e-9)
    assert normalized_mutual_info(a, b[:, None]) == pytest.approx(metrics.normalized_mutual_info_score(a, b), abs=1e-12)


def blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(5).repeat_interleave(40)
    return torch.eye(5)[labels] * 30 + torch.randn(200, 5, generator=g), labels


@pytest.mark.parametrize("backend", ["torch", "sklearn", "faiss", "auto"])
def test_backends_recover_clear_clusters(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    x, labels = blobs(4)
    clusters = KMeans(backend=backend)(x, 5)
    assert clusters.shape == (200,) and clusters.dtype == torch.long
    assert normalized_mutual_info(labels, clusters) == pytest.approx(1.0)


def test_torch_backend_is_seeded_and_subsamples() -> None:
    x, _ = blobs(5)
    first = KMeans(backend="torch", seed=3, max_points_per_centroid=10)(x, 5)
    assert torch.equal(first, KMeans(backend="torch", seed=3, max_points_per_centroid=10)(x, 5))


def test_auto_without_faiss_uses_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    x, labels = blobs(6)
    assert normalized_mutual_info(labels, KMeans()(x, 5)) == pytest.approx(1.0)
    with pytest.raises(MissingDependencyError, match=re.escape('pip install "dmlkit[faiss]"')):
        KMeans(backend="faiss")(x, 5)


def test_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("KMeans: `backend` must be one of 'auto', 'faiss', 'sklearn', ")):
        KMeans(backend="scipy")
    with pytest.raises(ValueError, match=re.escape("KMeans: `num_clusters` must be an integer >= 1 and <= 3, got 4.")):
        KMeans()(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match=re.escape("clustering: `labels_pred` must be of length 3 like `labels_true`")):
        normalized_mutual_info(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def test_faiss_kmeans_takes_pml_keywords_and_clusters_like_pml() -> None:
    from dmlkit.utils.inference import FaissKMeans

    g = torch.Generator().manual_seed(4)
    labels = torch.arange(3).repeat_interleave(40)
    x = torch.eye(3)[labels] * 10 + torch.randn(120, 3, generator=g)
    ours = FaissKMeans(niter=10, verbose=False)(x, 3)
    assert normalized_mutual_info(labels, ours) == pytest.approx(1.0)
    with pytest.raises(TypeError, match=r"unsupported faiss.Kmeans option\(s\) \['gpu'\]"):
        FaissKMeans(gpu=True)
    pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
    pytest.importorskip("faiss")
    theirs = pml_inference.FaissKMeans(niter=10)(x, 3)
    assert torch.equal(ours.cpu().long(), theirs.cpu().long())
