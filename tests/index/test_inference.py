"""InferenceModel, MatchFinder, FaissKNN, CustomKNN and IndexKNN: pytorch-metric-learning parity on identical
models and data, and the documented differences (one measure for k-nn and matching, is_match consistency)."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, LpDistance, SNRDistance
from dmlkit.errors import CorruptFileError
from dmlkit.index import CustomKNN, IndexKNN, InferenceModel, MatchFinder, knn_func_for_distance
from dmlkit.index.inference import FaissKNN
from tests.index import oracle

pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def models(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6)).to(dtype)
    embedder = nn.Linear(6, 4).to(dtype)
    return trunk, embedder


def inputs(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 8, generator=_gen(seed), dtype=dtype)


# -------------------------------------------------------------------------------------------- the API


def test_pml_import_path() -> None:
    module = importlib.import_module("dmlkit.utils.inference")
    assert module.__all__ == ["CustomKNN", "FaissKMeans", "FaissKNN", "InferenceModel", "MatchFinder"]
    assert module.InferenceModel is InferenceModel and module.MatchFinder is MatchFinder
    assert module.CustomKNN is CustomKNN and module.FaissKNN is FaissKNN
    from dmlkit.evaluation import FaissKMeans

    assert module.FaissKMeans is FaissKMeans


METHODS = {
    "InferenceModel": [
        "__init__",
        "get_embeddings_from_tensor_or_dataset",
        "train_knn",
        "add_to_knn",
        "call_knn",
        "get_nearest_neighbors",
        "get_embeddings",
        "get_matches",
        "is_match",
        "save_knn_func",
        "load_knn_func",
        "process_if_list",
    ],
    "MatchFinder": ["__init__", "operate_on_emb", "get_matching_pairs", "is_match"],
    "FaissKNN": ["__init__", "__call__", "train", "add", "save", "load", "reset"],
    "CustomKNN": ["__init__", "__call__"],
}


@pytest.mark.parametrize(("name", "method"), [(n, m) for n, methods in METHODS.items() for m in methods])
def test_signatures_match_pml(name: str, method: str) -> None:
    ours = inspect.signature(getattr(getattr(importlib.import_module("dmlkit.utils.inference"), name), method))
    theirs = inspect.signature(getattr(getattr(pml_inference, name), method))
    assert list(ours.parameters) == list(theirs.parameters)
    for key, param in theirs.parameters.items():
        if param.default is not inspect.Parameter.empty:
            assert ours.parameters[key].default == param.default, key
    # where pytorch-metric-learning requires an argument, a default is an addition, not a change
    additions = {("MatchFinder", "distance"), ("CustomKNN", "reference")}
    for key, param in ours.parameters.items():
        if theirs.parameters[key].default is inspect.Parameter.empty and param.default is not inspect.Parameter.empty:
            assert (name, key) in additions, key


# ---------------------------------------------------------------------------------------- embeddings


def test_get_embeddings_equals_pml() -> None:
    trunk, embedder = models()
    x = inputs(30, 1)
    ours = InferenceModel(trunk, embedder)
    theirs = pml_inference.InferenceModel(trunk, embedder, data_device="cpu")
    torch.testing.assert_close(ours.get_embeddings(x), theirs.get_embeddings(x), rtol=0, atol=1e-12)
    raw = InferenceModel(trunk, embedder, normalize_embeddings=False).get_embeddings(list(x[:3]))
    torch.testing.assert_close(raw, embedder(trunk(x[:3])).detach(), rtol=0, atol=1e-12)
    assert ours.get_embeddings(x).norm(dim=1).sub(1).abs().max() < 1e-12


def test_devices_dtypes_and_training_modes() -> None:
    trunk, embedder = models()
    trunk.train()
    embedder.eval()
    model = InferenceModel(trunk, embedder, dtype=torch.float64)
    assert model.data_device == torch.device("cpu")  # the trunk's device
    emb = model.get_embeddings(inputs(4, 2).float())
    assert emb.dtype == torch.float64 and not emb.requires_grad
    assert trunk.training and not embedder.training  # restored
    assert InferenceModel(nn.Identity()).data_device == torch.device("cpu")


def test_datasets_lists_and_tensors_give_the_same_reference() -> None:
    trunk, embedder = models()
    x = inputs(25, 3)
    labels = torch.arange(25)
    model = InferenceModel(trunk, embedder)
    from_tensor = model.get_embeddings_from_tensor_or_dataset(x, batch_size=7)
    from_list = model.get_embeddings_from_tensor_or_dataset(list(x), batch_size=7)
    dataset = torch.utils.data.TensorDataset(x, labels)
    from_dataset = model.get_embeddings_from_tensor_or_dataset(dataset, batch_size=7)
    assert torch.equal(from_tensor, from_list) and torch.equal(from_tensor, from_dataset)
    with pytest.raises(TypeError, match=re.escape("InferenceModel: `inputs` must be a tensor, a list of tensors")):
        model.get_embeddings_from_tensor_or_dataset("images/", batch_size=7)


# ----------------------------------------------------------------------------------------- neighbours


def test_nearest_neighbors_with_faiss_knn_equal_pml() -> None:
    pytest.importorskip("faiss")
    # float32: pytorch-metric-learning's FaissKNN hands tensors to faiss as they are, and faiss needs float32
    trunk, embedder = models(dtype=torch.float32)
    reference, more, query = inputs(60, 4, torch.float32), inputs(15, 5, torch.float32), inputs(10, 6, torch.float32)
    ours = InferenceModel(trunk, embedder, knn_func=FaissKNN(reset_before=False, reset_after=False))
    theirs = pml_inference.InferenceModel(trunk, embedder, data_device="cpu")  # its default knn_func
    for model in (ours, theirs):
        model.train_knn(reference, batch_size=16)
        model.add_to_knn(more)
    d_ours, i_ours = ours.get_nearest_neighbors(query, k=5)
    d_theirs, i_theirs = theirs.get_nearest_neighbors(query, k=5)
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(d_ours, d_theirs, rtol=0, atol=1e-6)


def test_default_knn_uses_the_match_finders_cosine() -> None:
    """The documented difference: PML ranks by squared L2 and returns it; dmlkit returns cosine similarities."""
    pytest.importorskip("faiss")
    trunk, embedder = models(dtype=torch.float32)
    reference, query = inputs(60, 7, torch.float32), inputs(10, 8, torch.float32)
    ours = InferenceModel(trunk, embedder)
    theirs = pml_inference.InferenceModel(trunk, embedder, data_device="cpu")
    ours.train_knn(reference)
    theirs.train_knn(reference)
    scores, indices = ours.get_nearest_neighbors(query, k=5)
    squared_l2, pml_indices = theirs.get_nearest_neighbors(query, k=5)
    # same neighbours (unit vectors: L2 and cosine rank alike), values related by |a - b|^2 = 2 - 2 cos
    assert torch.equal(indices, pml_indices)
    torch.testing.assert_close(scores, 1 - squared_l2 / 2, rtol=0, atol=1e-5)
    # the scores are cosine similarities, from a float64 loop oracle, and agree with the match decisions
    q_emb = ours.get_embeddings(query).tolist()
    r_emb = ours.get_embeddings(reference).tolist()
    want_scores, want_ids = oracle.top_k(q_emb, r_emb, list(range(60)), 5, "cosine")
    assert indices.tolist() == want_ids
    torch.testing.assert_close(scores, torch.tensor(want_scores), rtol=0, atol=1e-6)
    matches = ours.get_matches(query, reference)
    assert (matches[np.arange(10)[:, None], indices.numpy()] == (scores >= 0.9).numpy()).all()


@pytest.mark.parametrize(
    "distance",
    [
        CosineSimilarity(),
        DotProductSimilarity(normalize_embeddings=False),
        DotProductSimilarity(),
        LpDistance(normalize_embeddings=False),
        LpDistance(),
        LpDistance(p=1, normalize_embeddings=False),
        LpDistance(power=2),
        SNRDistance(),
    ],
)
def test_default_knn_func_reports_the_match_finders_distance(distance: torch.nn.Module) -> None:
    knn = knn_func_for_distance(distance)  # type: ignore[arg-type]
    reference = torch.randn(50, 5, generator=_gen(9), dtype=torch.float64) * 3
    query = torch.randn(7, 5, generator=_gen(10), dtype=torch.float64)
    knn.train(reference)
    values, indices = knn(query, 6)
    mat = distance(query, reference)
    want_values, want_indices = mat.topk(6, dim=1, largest=distance.is_inverted)  # continuous data: no ties
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(values, want_values, rtol=1e-9, atol=1e-9)


def test_index_knn_with_a_reference_and_own_rows() -> None:
    x = torch.randn(30, 4, generator=_gen(11), dtype=torch.float64)
    reference = torch.cat([x, torch.randn(10, 4, generator=_gen(12), dtype=torch.float64)])
    knn = IndexKNN(metric="l2", dtype=torch.float64)
    values, indices = knn(x, 3, reference, True)
    want_values, want_ids = oracle.top_k(x.tolist(), reference[1:].tolist(), list(range(1, 40)), 3, "l2")
    assert indices[0].tolist() == want_ids[0]
    assert not bool((indices == torch.arange(30)[:, None]).any())
    mat = torch.cdist(x, reference)
    mat[torch.arange(30), torch.arange(30)] = math.inf
    want_v, want_i = mat.topk(3, dim=1, largest=False)
    assert torch.equal(indices, want_i)
    torch.testing.assert_close(values, want_v, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match=re.escape("IndexKNN: `reference` must be given, or rows stored with")):
        IndexKNN()(x, 1)


# --------------------------------------------------------------------------------------------- matches


def test_get_matches_and_is_match_equal_pml_on_normalised_embeddings() -> None:
    trunk, embedder = models()
    query, ref = inputs(12, 13), inputs(9, 14)
    ours = InferenceModel(trunk, embedder, match_finder=MatchFinder(CosineSimilarity(), threshold=0.9))
    pml_finder = pml_inference.MatchFinder(pml_distances.CosineSimilarity(), threshold=0.9)
    theirs = pml_inference.InferenceModel(trunk, embedder, match_finder=pml_finder, data_device="cpu")
    for kwargs in ({}, {"ref": ref}, {"ref": ref, "threshold": 0.95}):
        a, b = ours.get_matches(query, **kwargs), theirs.get_matches(query, **kwargs)
        assert a.dtype == b.dtype == np.bool_ and (a == b).all() and 0 < a.sum() < a.size
        assert ours.get_matches(query, return_tuples=True, **kwargs) == theirs.get_matches(
            query, return_tuples=True, **kwargs
        )
    assert (ours.is_match(query[:9], ref) == theirs.is_match(query[:9], ref)).all()
    assert ours.is_match(query[:1], ref[:1], threshold=-1.0) is True
    assert ours.is_match(query[:1], ref[:1], threshold=1.0) is theirs.is_match(query[:1], ref[:1], threshold=1.0)


@pytest.mark.parametrize(
    ("ours", "theirs", "threshold"),
    [
        (LpDistance(normalize_embeddings=False), pml_distances.LpDistance(normalize_embeddings=False), 2.0),
        (LpDistance(), pml_distances.LpDistance(), 0.8),
        (
            DotProductSimilarity(normalize_embeddings=False),
            pml_distances.DotProductSimilarity(normalize_embeddings=False),
            0.5,
        ),
    ],
)
def test_match_finder_pairs_equal_pml(ours: nn.Module, theirs: nn.Module, threshold: float) -> None:
    x = torch.randn(15, 4, generator=_gen(15), dtype=torch.float64)
    y = torch.randn(11, 4, generator=_gen(16), dtype=torch.float64) * 1.5
    a = MatchFinder(ours, threshold).get_matching_pairs(x, y)  # type: ignore[arg-type]
    b = pml_inference.MatchFinder(theirs, threshold).get_matching_pairs(x, y)
    assert (a == b).all() and 0 < a.sum() < a.size


def test_is_match_agrees_with_get_matching_pairs() -> None:
    """The documented difference: PML's is_match skips the distance's normalisation (and power)."""
    x = torch.randn(40, 4, generator=_gen(17), dtype=torch.float64) * 3
    y = torch.randn(40, 4, generator=_gen(18), dtype=torch.float64) * 3
    for distance, pml_distance, threshold in [
        (LpDistance(), pml_distances.LpDistance(), 1.0),
        (
            LpDistance(power=2, normalize_embeddings=False),
            pml_distances.LpDistance(power=2, normalize_embeddings=False),
            20.0,
        ),
    ]:
        finder = MatchFinder(distance, threshold)
        ours = finder.is_match(x, y)
        assert (ours == np.diag(finder.get_matching_pairs(x, y))).all()
        theirs = pml_inference.MatchFinder(pml_distance, threshold).is_match(x, y)
        assert (ours != theirs).any()  # PML compares raw (unnormalised, unpowered) distances here


def test_match_finder_errors() -> None:
    x = torch.randn(3, 2, generator=_gen(0))
    text = "MatchFinder: `threshold` must be given, to the constructor or to this call, got None."
    with pytest.raises(ValueError, match=re.escape(text)):
        MatchFinder().get_matching_pairs(x)
    with pytest.raises(ValueError, match=re.escape(text)):
        MatchFinder().is_match(x, x)
    with pytest.raises(TypeError, match=re.escape("MatchFinder: `distance` must be a dmlkit distance")):
        MatchFinder(distance="cosine")  # type: ignore[arg-type]
    assert MatchFinder().get_matching_pairs(x, threshold=0.99, return_tuples=True) == [(0, 0), (1, 1), (2, 2)]
    # a calibrated threshold may arrive as a numpy scalar or a one-element tensor
    assert MatchFinder(threshold=np.float32(0.5)).threshold == 0.5
    assert MatchFinder(threshold=torch.tensor(0.25)).threshold == 0.25
    with pytest.raises(ValueError, match=re.escape("MatchFinder: `threshold` must be a number, not NaN, got nan.")):
        MatchFinder(threshold=float("nan"))
    with pytest.raises(TypeError, match=re.escape("MatchFinder: `threshold` must be a number, got '0.5'.")):
        MatchFinder(threshold="0.5")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- knn funcs


@pytest.mark.parametrize(
    ("ours", "theirs", "batch_size"),
    [
        (LpDistance(), pml_distances.LpDistance(), None),
        (CosineSimilarity(), pml_distances.CosineSimilarity(), 4),
        (LpDistance(p=1, normalize_embeddings=False), pml_distances.LpDistance(p=1, normalize_embeddings=False), 5),
    ],
)
@pytest.mark.parametrize("includes", [False, True])
def test_custom_knn_equals_pml(ours: nn.Module, theirs: nn.Module, batch_size: int | None, includes: bool) -> None:
    query = torch.randn(13, 5, generator=_gen(19), dtype=torch.float64)
    reference = (
        torch.cat([query, torch.randn(20, 5, generator=_gen(20), dtype=torch.float64)])
        if includes
        else (torch.randn(25, 5, generator=_gen(21), dtype=torch.float64))
    )
    a_values, a_indices = CustomKNN(ours, batch_size=batch_size)(query, 4, reference, includes)  # type: ignore[arg-type]
    b_values, b_indices = pml_inference.CustomKNN(theirs, batch_size=batch_size)(query, 4, reference, includes)
    assert torch.equal(a_indices, b_indices)
    torch.testing.assert_close(a_values, b_values.to(a_values.dtype), rtol=0, atol=1e-6)


def test_custom_knn_orders_ties_by_index_and_keeps_a_reference(tmp_path: Path) -> None:
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    knn = CustomKNN(LpDistance(normalize_embeddings=False), batch_size=2)
    knn.train(reference[:3])
    knn.add(reference[3:])
    values, indices = knn(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64), 4)
    assert indices.tolist() == [[0, 2, 4, 1], [0, 1, 2, 3]]
    assert values[0].tolist() == [0.0, 0.0, 0.0, pytest.approx(math.sqrt(2))]
    knn.save(tmp_path / "ref.knn")
    other = CustomKNN(LpDistance(normalize_embeddings=False))
    other.load(tmp_path / "ref.knn")
    assert other.reference is not None and torch.equal(other.reference, reference)
    with pytest.raises(ValueError, match=re.escape("CustomKNN: `k` must be an integer >= 1 and <= 4, got 5.")):
        knn(reference, 5, reference, True)


def test_custom_knn_inside_inference_model() -> None:
    trunk, embedder = models()
    reference, query = inputs(30, 22), inputs(5, 23)
    finder = MatchFinder(LpDistance(p=1), threshold=0.5)
    model = InferenceModel(trunk, embedder, match_finder=finder)
    assert isinstance(model.knn_func, CustomKNN)
    model.train_knn(reference)
    values, indices = model.get_nearest_neighbors(query, 3)
    mat = LpDistance(p=1)(model.get_embeddings(query), model.get_embeddings(reference))
    want_values, want_indices = mat.topk(3, dim=1, largest=False)
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(values, want_values)


@pytest.mark.parametrize("includes", [False, True])
def test_faiss_knn_equals_pml(includes: bool) -> None:
    pytest.importorskip("faiss")
    query = torch.randn(20, 6, generator=_gen(24))
    reference = torch.cat([query, torch.randn(30, 6, generator=_gen(25))]) if includes else torch.randn(40, 6)
    a = FaissKNN()(query, 5, reference, includes)
    b = pml_inference.FaissKNN()(query, 5, reference, includes)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)


def test_faiss_knn_files_interchange_with_pml(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    reference, query = torch.randn(50, 6, generator=_gen(26)), torch.randn(5, 6, generator=_gen(27))
    ours = FaissKNN(reset_before=False, reset_after=False)
    ours.train(reference)
    ours.save(tmp_path / "ours.faiss")
    theirs = pml_inference.FaissKNN(reset_before=False, reset_after=False)
    theirs.load(str(tmp_path / "ours.faiss"))
    a, b = ours(query, 3), theirs(query, 3)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    theirs.save(str(tmp_path / "theirs.faiss"))
    loaded = FaissKNN(reset_before=False, reset_after=False)
    loaded.load(tmp_path / "theirs.faiss")
    assert torch.equal(loaded(query, 3)[1], b[1])
    data = (tmp_path / "theirs.faiss").read_bytes()
    (tmp_path / "bad.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=re.escape(f"{tmp_path / 'bad.faiss'}: not a readable faiss index")):
        loaded.load(tmp_path / "bad.faiss")
    ivf = FaissKNN(
        reset_before=False, reset_after=False, index_init_fn=lambda d: faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, 4)
    )
    ivf.train(torch.randn(200, 6, generator=_gen(28)))  # trained on its first rows
    assert ivf.index.is_trained and ivf.index.ntotal == 200
    with pytest.raises(
        ValueError, match=re.escape("FaissKNN: `index` must be built (call train() or pass a reference)")
    ):
        FaissKNN(reset_before=False)(query, 1)
    with pytest.raises(TypeError, match=re.escape("FaissKNN: `gpus` must be a list or tuple of GPU ids, got int.")):
        FaissKNN(gpus=0)  # type: ignore[arg-type]


def test_save_and_load_knn_func(tmp_path: Path) -> None:
    trunk, embedder = models()
    reference, query = inputs(40, 29), inputs(6, 30)
    model = InferenceModel(trunk, embedder)
    model.train_knn(reference)
    before = model.get_nearest_neighbors(query, 4)
    model.save_knn_func(tmp_path / "knn.index")
    fresh = InferenceModel(trunk, embedder)
    fresh.load_knn_func(tmp_path / "knn.index")
    after = fresh.get_nearest_neighbors(query, 4)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    l2 = InferenceModel(trunk, embedder, match_finder=MatchFinder(LpDistance(), 0.5))
    with pytest.raises(ValueError, match=re.escape("EmbeddingIndex.load: `metric` must be the metric")):
        l2.load_knn_func(tmp_path / "knn.index")


def test_custom_knn_takes_a_batched_distance_for_its_distance() -> None:
    from dmlkit.distances import BatchedDistance, LpDistance
    from dmlkit.utils.inference import CustomKNN

    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(2))
    batched = CustomKNN(BatchedDistance(LpDistance(), batch_size=3))(x, 2, x, True)
    plain = CustomKNN(LpDistance())(x, 2, x, True)
    assert all(torch.equal(a, b) for a, b in zip(batched, plain, strict=True))
