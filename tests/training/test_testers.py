"""Testers: hand-computed accuracies, loop oracles, pytorch-metric-learning parity, modes, hooks and errors."""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dmlkit.evaluation import AccuracyCalculator
from dmlkit.training.testers import (
    BaseTester,
    GlobalEmbeddingSpaceTester,
    GlobalTwoStreamEmbeddingSpaceTester,
    WithSameParentLabelTester,
)
from tests.reference.retrieval import retrieval_metrics

RETRIEVAL = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
CLASSES = [GlobalEmbeddingSpaceTester, WithSameParentLabelTester, GlobalTwoStreamEmbeddingSpaceTester]


def _calc(*metrics: str, **kwargs: Any) -> AccuracyCalculator:
    return AccuracyCalculator(include=metrics or RETRIEVAL, **kwargs)


def _tester(cls: type[BaseTester] = GlobalEmbeddingSpaceTester, **kwargs: Any) -> Any:
    kwargs.setdefault("accuracy_calculator", _calc())
    return cls(dataloader_num_workers=0, data_device="cpu", **kwargs)


def _line(values: list[float], *label_columns: list[int]) -> TensorDataset:
    """Points on a line (1-D embeddings), labelled by one column per label level."""
    labels = torch.tensor(label_columns).T if len(label_columns) > 1 else torch.tensor(label_columns[0])
    return TensorDataset(torch.tensor(values, dtype=torch.float64)[:, None], labels)


def _close(ours: dict, expected: dict, tol: float = 1e-12) -> None:
    assert set(ours) == set(expected), (sorted(ours), sorted(expected))
    for key, value in expected.items():
        assert math.isclose(ours[key], value, rel_tol=0, abs_tol=tol), (key, ours[key], value)


# ---------------------------------------------------------------- hand-computed cases
# Query split "val" and reference split "train", 1-D embeddings, no normalisation; classes A=0, B=1, C=2.
#   val:   q0 = 0.0 A, q1 = 5.0 B, q2 = 2.4 A
#   train: r0 = 1.0 A, r1 = 2.0 B, r2 = 3.0 A, r3 = 6.0 B, r4 = 9.0 C
# val vs [train] (queries not among the references):
#   q0: r0 A, r1 B, r2 A ...           R = 2  rel [1, 0]     P@1 1, RP 1/2, MAP@R 1/2
#   q1: r3 B, r2 A, r1 B ...           R = 2  rel [1, 0]     P@1 1, RP 1/2, MAP@R 1/2
#   q2: r1 B, r2 A, r0 A ...           R = 2  rel [0, 1]     P@1 0, RP 1/2, MAP@R (1/2) / 2 = 1/4
#   means: P@1 2/3, RP 1/2, MAP@R 5/12
# val vs [train, val] (references reordered to [val, train]; each query leaves itself out):
#   q0: r0 A, r1 B, q2 A, r2 A ...     R = 3  rel [1, 0, 1]  P@1 1, RP 2/3, MAP@R (1 + 2/3) / 3 = 5/9
#   q1: r3 B, r2 A, q2 A, r1 B ...     R = 2  rel [1, 0]     P@1 1, RP 1/2, MAP@R 1/2
#   q2: r1 B, r2 A, r0 A, q0 A ...     R = 3  rel [0, 1, 1]  P@1 0, RP 2/3, MAP@R (1/2 + 2/3) / 3 = 7/18
#   means: P@1 2/3, RP 11/18, MAP@R 13/27
# Level 1 (A, B -> 0; C -> 1), val vs [train]: every query's 4 nearest references are level-1 class 0
#   (r4 is the farthest from each query, or tied last with r0 for q1 and ordered after it by index): all 1.
#   AVERAGE over levels 0 and 1: P@1 5/6, RP 3/4, MAP@R 17/24.
VAL = _line([0.0, 5.0, 2.4], [0, 1, 0], [0, 0, 0])
TRAIN = _line([1.0, 2.0, 3.0, 6.0, 9.0], [0, 1, 0, 1, 2], [0, 0, 0, 0, 1])


def test_hand_case_separate_reference_split() -> None:
    tester = _tester(normalize_embeddings=False)
    out = tester.test({"train": TRAIN, "val": VAL}, 7, nn.Identity(), splits_to_eval=[("val", ["train"])])
    assert list(out) == ["val"] and out["val"]["epoch"] == 7
    _close(
        {k: v for k, v in out["val"].items() if k != "epoch"},
        {"precision_at_1_level0": 2 / 3, "r_precision_level0": 1 / 2, "mean_average_precision_at_r_level0": 5 / 12},
    )
    assert tester.reference_split_names == {"val": ["train"]}


def test_hand_case_query_among_references_goes_first() -> None:
    tester = _tester(normalize_embeddings=False)
    splits = [("val", ["train", "val"])]
    out = tester.test({"train": TRAIN, "val": VAL}, 0, nn.Identity(), splits_to_eval=splits)
    _close(
        {k: v for k, v in out["val"].items() if k != "epoch"},
        {"precision_at_1_level0": 2 / 3, "r_precision_level0": 11 / 18, "mean_average_precision_at_r_level0": 13 / 27},
    )
    assert tester.reference_split_names == {"val": ["val", "train"]}
    assert splits == [("val", ["train", "val"])], "the caller's list is not modified"


def test_hand_case_all_levels_and_averages() -> None:
    tester = _tester(normalize_embeddings=False, label_hierarchy_level="all")
    out = tester.test({"train": TRAIN, "val": VAL}, 0, nn.Identity(), splits_to_eval=[("val", ["train"])])["val"]
    expected = {
        "precision_at_1_level0": 2 / 3,
        "r_precision_level0": 1 / 2,
        "mean_average_precision_at_r_level0": 5 / 12,
        "precision_at_1_level1": 1.0,
        "r_precision_level1": 1.0,
        "mean_average_precision_at_r_level1": 1.0,
        "AVERAGE_precision_at_1": 5 / 6,
        "AVERAGE_r_precision": 3 / 4,
        "AVERAGE_mean_average_precision_at_r": 17 / 24,
    }
    _close({k: v for k, v in out.items() if k != "epoch"}, expected)
    assert tester.label_levels == [0, 1]
    assert tester.accuracies_keyname("precision_at_1", label_hierarchy_level="all") == "precision_at_1_levelall"
    # one explicit level: a list naming it gives that level's key, as in pytorch-metric-learning
    single = _tester(normalize_embeddings=False, label_hierarchy_level=[1])
    single.test({"train": TRAIN, "val": VAL}, 0, nn.Identity(), splits_to_eval=[("val", ["train"])])
    assert single.accuracies_keyname("r_precision", label_hierarchy_level=[1]) == "r_precision_level1"
    assert single.accuracies_keyname("r_precision", average=True) == "AVERAGE_r_precision"


# WithSameParentLabel, one split against itself, labels (fine, parent):
#   parent 0: x0 = 0.0 f0, x1 = 0.3 f0, x3 = 2.0 f1, x6 = 2.4 f1 -> every nearest neighbour matches: all 1
#   parent 1: x2 = 1.0 f2, x4 = 1.2 f3, x5 = 1.3 f2, x7 = 1.15 f3, each R = 1:
#     x2: x7 f3 (wrong)   x4: x7 f3 (right)   x5: x4 f3 (wrong)   x7: x4 f3 (right)   -> 1/2 for all three
#   level 0 = mean over the two parents = 3/4 (the global tester mixes the parents and gets 1/2 for x0..x7:
#     x0 -> x1 ok, x1 -> x0 ok, x2 -> x7 no, x3 -> x6 ok, x4 -> x7 ok, x5 -> x4 no, x6 -> x3 ok, x7 -> x4 ok: 6/8;
#     only precision@1 is compared there).
PARENTS = _line([0.0, 0.3, 1.0, 2.0, 1.2, 1.3, 2.4, 1.15], [0, 0, 2, 1, 3, 2, 1, 3], [0, 0, 1, 0, 1, 1, 0, 1])


def test_hand_case_with_same_parent_label() -> None:
    tester = _tester(WithSameParentLabelTester, normalize_embeddings=False)
    out = tester.test({"val": PARENTS}, 1, nn.Identity())["val"]
    expected = {f"{m}_level0": 3 / 4 for m in RETRIEVAL}
    _close({k: v for k, v in out.items() if k != "epoch"}, expected)
    everything = _tester(WithSameParentLabelTester, normalize_embeddings=False, label_hierarchy_level="all")
    assert everything.test({"val": PARENTS}, 1, nn.Identity())["val"] == {"epoch": 1, **expected}
    flat = _tester(normalize_embeddings=False, accuracy_calculator=_calc("precision_at_1"))
    assert flat.test({"val": PARENTS}, 1, nn.Identity())["val"]["precision_at_1_level0"] == 6 / 8


# Two streams: anchors a = [0.0, 4.6, 5.0], positives p = [0.6, 4.0, 5.5], labels [0, 0, 1]; anchors are
# ranked against the positives only.
#   a0: p0 (0.6) 0, p1 (4.0) 0        R = 2  rel [1, 1]  1, 1, 1
#   a1: p1 (0.6) 0, p2 (0.9) 1        R = 2  rel [1, 0]  1, 1/2, 1/2
#   a2: p2 (0.5) 1                    R = 1  rel [1]     1, 1, 1
#   means: P@1 1, RP 5/6, MAP@R 5/6
def test_hand_case_two_stream() -> None:
    data = TensorDataset(
        torch.tensor([[0.0], [4.6], [5.0]], dtype=torch.float64),
        torch.tensor([[0.6], [4.0], [5.5]], dtype=torch.float64),
        torch.tensor([0, 0, 1]),
    )
    tester = _tester(GlobalTwoStreamEmbeddingSpaceTester, normalize_embeddings=False, batch_size=2)
    out = tester.test({"pairs": data}, 0, nn.Identity())["pairs"]
    _close(
        {k: v for k, v in out.items() if k != "epoch"},
        {"precision_at_1_level0": 1.0, "r_precision_level0": 5 / 6, "mean_average_precision_at_r_level0": 5 / 6},
    )
    emb, labels = tester.get_all_embeddings(data, nn.Identity())
    assert emb.flatten().tolist() == [0.0, 4.6, 5.0, 0.6, 4.0, 5.5]
    assert labels.tolist() == [[0], [0], [1], [0], [0], [1]]


# ---------------------------------------------------------------- loop oracle on random data


def _hierarchical(seed: int, n: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 features and (fine, fine // 2, fine // 4) labels, every fine class at least twice."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    fine = (torch.arange(n) % 6)[torch.randperm(n, generator=g)]
    return x, torch.stack([fine, fine // 2, fine // 4], dim=1)


def _oracle_levels(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    reference: torch.Tensor,
    reference_labels: torch.Tensor,
    includes: bool,
    levels: list[int],
    same_parent: bool,
) -> dict[str, float]:
    """The tester's keys from the loop oracle: per level, optionally per parent group (then the plain mean)."""
    out: dict[str, float] = {}
    for level in levels:
        groups = sorted(set(query_labels[:, level + 1].tolist())) if same_parent else [None]
        per_group: dict[str, list[float]] = {m: [] for m in RETRIEVAL}
        for parent in groups:
            qi = [i for i in range(len(query)) if parent is None or query_labels[i, level + 1] == parent]
            ri = [j for j in range(len(reference)) if parent is None or reference_labels[j, level + 1] == parent]
            values = retrieval_metrics(
                [query[i].tolist() for i in qi],
                [int(query_labels[i, level]) for i in qi],
                [reference[j].tolist() for j in ri],
                [int(reference_labels[j, level]) for j in ri],
                includes,
            )
            for m in RETRIEVAL:
                per_group[m].append(values[m])
        for m in RETRIEVAL:
            out[f"{m}_level{level}"] = sum(per_group[m]) / len(per_group[m])
    if len(levels) > 1:
        for m in RETRIEVAL:
            out[f"AVERAGE_{m}"] = sum(out[f"{m}_level{level}"] for level in levels) / len(levels)
    return out


@pytest.mark.parametrize("same_parent", [False, True])
@pytest.mark.parametrize("level", [0, 1, "all", [0, 1]])
def test_matches_loop_oracle(same_parent: bool, level: Any) -> None:
    x_train, y_train = _hierarchical(1, 30)
    x_val, y_val = _hierarchical(2, 24)
    data = {"train": TensorDataset(x_train, y_train), "val": TensorDataset(x_val, y_val)}
    cls = WithSameParentLabelTester if same_parent else GlobalEmbeddingSpaceTester
    tester = _tester(cls, label_hierarchy_level=level, batch_size=5)
    splits = [("val", ["train", "val"]), ("train", ["train"])]
    out = tester.test(data, 2, nn.Identity(), splits_to_eval=splits)
    norm = {k: torch.nn.functional.normalize(x, dim=1) for k, x in (("train", x_train), ("val", x_val))}
    levels = [level] if isinstance(level, int) else [0, 1] if level == "all" and same_parent else [0, 1, 2]
    if isinstance(level, list):
        levels = level
    expected_val = _oracle_levels(
        norm["val"],
        y_val,
        torch.cat([norm["val"], norm["train"]]),
        torch.cat([y_val, y_train]),
        True,
        levels,
        same_parent,
    )
    expected_train = _oracle_levels(norm["train"], y_train, norm["train"], y_train, True, levels, same_parent)
    _close({k: v for k, v in out["val"].items() if k != "epoch"}, expected_val)
    _close({k: v for k, v in out["train"].items() if k != "epoch"}, expected_train)


def test_two_stream_matches_loop_oracle() -> None:
    x, y = _hierarchical(3, 20)
    positives = x + 0.7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tester = _tester(GlobalTwoStreamEmbeddingSpaceTester, label_hierarchy_level="all", batch_size=6)
    out = tester.test({"pairs": TensorDataset(x, positives, y)}, 0, nn.Identity())["pairs"]
    a, p = (torch.nn.functional.normalize(t, dim=1) for t in (x, positives))
    expected = _oracle_levels(a, y, p, y, False, [0, 1, 2], same_parent=False)
    _close({k: v for k, v in out.items() if k != "epoch"}, expected)


# ---------------------------------------------------------------- pytorch-metric-learning parity

PML_METRICS = (
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
    "NMI",
    "AMI",
)


def _rank_clusters(x: Any, num_clusters: int) -> torch.Tensor:
    """A deterministic stand-in for k-means shared by both calculators: clusters by rank of the first coordinate."""
    first = torch.as_tensor(x)[:, 0].double()
    clusters = torch.empty(first.shape[0], dtype=torch.long)
    clusters[first.argsort()] = torch.arange(first.shape[0]) * num_clusters // max(first.shape[0], 1)
    return clusters


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trunk = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5), nn.Linear(12, 6))
        embedder = nn.Linear(6, 5)
    trunk.double().train()
    embedder.double().train()
    trunk[1].running_mean.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(seed))
    return trunk, embedder


def _pml_pair(name: str, **kwargs: Any) -> tuple[Any, Any]:
    pml_testers = pytest.importorskip("pytorch_metric_learning.testers")
    pml_calc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    common = {"dataloader_num_workers": 0, "batch_size": 7, "data_device": torch.device("cpu"), **kwargs}
    ours = globals()[name](accuracy_calculator=_calc(*PML_METRICS, kmeans_func=_rank_clusters), **common)
    theirs = getattr(pml_testers, name)(
        accuracy_calculator=pml_calc.AccuracyCalculator(include=PML_METRICS, kmeans_func=_rank_clusters), **common
    )
    return ours, theirs


def _same_results(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for split, accuracies in theirs.items():
        assert ours[split]["epoch"] == accuracies["epoch"]
        _close(ours[split], dict(accuracies), tol=1e-6)


def _run_both(ours: Any, theirs: Any, data: dict, **kwargs: Any) -> tuple[dict, dict]:
    trunk, embedder = _models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours.test(data, 3, copy.deepcopy(trunk), copy.deepcopy(embedder), **kwargs)
        b = theirs.test(data, 3, copy.deepcopy(trunk), copy.deepcopy(embedder), **copy.deepcopy(kwargs))
    return a, b


def _splits(levels: int = 3) -> dict[str, Dataset]:
    x_train, y_train = _hierarchical(5, 40)
    x_val, y_val = _hierarchical(6, 30)
    if levels == 1:
        return {"train": TensorDataset(x_train, y_train[:, 0]), "val": TensorDataset(x_val, y_val[:, 0])}
    return {"train": TensorDataset(x_train, y_train), "val": TensorDataset(x_val, y_val)}


@pytest.mark.parametrize(
    "name,level,splits",
    [
        ("GlobalEmbeddingSpaceTester", 0, None),
        ("GlobalEmbeddingSpaceTester", 2, [("val", ["train"])]),
        ("GlobalEmbeddingSpaceTester", "all", [("val", ["train", "val"]), ("train", ["train"])]),
        ("GlobalEmbeddingSpaceTester", [0, 2], None),
        ("WithSameParentLabelTester", 0, None),
        ("WithSameParentLabelTester", "all", [("val", ["val", "train"])]),
        ("WithSameParentLabelTester", [0, 1], [("train", ["val"])]),
    ],
)
def test_pml_parity_accuracies(name: str, level: Any, splits: Any) -> None:
    ours, theirs = _pml_pair(name, label_hierarchy_level=level)
    a, b = _run_both(ours, theirs, _splits(), splits_to_eval=splits)
    _same_results(a, b)
    assert ours.reference_split_names == theirs.reference_split_names
    assert ours.label_levels == list(theirs.label_levels)
    assert ours.description_suffixes("accuracies") == theirs.description_suffixes("accuracies")
    key = theirs.accuracies_keyname("precision_at_1", label_hierarchy_level=level)
    assert ours.accuracies_keyname("precision_at_1", label_hierarchy_level=level) == key


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize_embeddings": False},
        {"use_trunk_output": True},
        {"pca": 3},
        {"set_min_label_to_zero": True},
    ],
)
def test_pml_parity_embeddings_and_options(options: dict) -> None:
    data = _splits(levels=1)
    if options.get("set_min_label_to_zero"):
        shifted = {k: TensorDataset(d.tensors[0], d.tensors[1] * 3 + 10) for k, d in data.items()}  # type: ignore[attr-defined]
        data = shifted
        options = {**options, "dataset_labels": torch.cat([d.tensors[1] for d in data.values()]).numpy()}  # type: ignore[attr-defined]
    ours, theirs = _pml_pair("GlobalEmbeddingSpaceTester", **options)
    a, b = _run_both(ours, theirs, data)
    _same_results(a, b)
    trunk, embedder = _models()
    emb, labels = ours.get_all_embeddings(data["val"], copy.deepcopy(trunk), copy.deepcopy(embedder))
    pml_emb, pml_labels = theirs.get_all_embeddings(data["val"], copy.deepcopy(trunk), copy.deepcopy(embedder))
    assert labels.shape == (30, 1) and labels.tolist() == pml_labels.tolist()
    if options.get("set_min_label_to_zero"):
        assert sorted(set(labels.flatten().tolist())) == list(range(6))
    if options.get("pca"):
        # faiss's principal axes come in float32 and with arbitrary signs: align the signs, then compare
        signs = torch.sign((emb * pml_emb.double()).sum(0))
        assert torch.allclose(emb * signs, pml_emb.double(), atol=1e-5)
    else:
        assert emb.dtype == pml_emb.dtype == torch.float64
        assert torch.allclose(emb, pml_emb, atol=1e-12, rtol=0)
    numpy_emb, numpy_labels = ours.get_all_embeddings(data["val"], trunk, embedder, return_as_numpy=True)
    assert isinstance(numpy_emb, np.ndarray) and isinstance(numpy_labels, np.ndarray)
    assert np.allclose(numpy_emb, emb.numpy()) and numpy_labels.shape == (30, 1)


@pytest.mark.parametrize("level", [0, "all", [0, 1]])
def test_pml_parity_two_stream(level: Any) -> None:
    x, y = _hierarchical(7, 26)
    positives = x + 0.8 * torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    data = {"pairs": TensorDataset(x, positives, y)}
    ours, theirs = _pml_pair("GlobalTwoStreamEmbeddingSpaceTester", label_hierarchy_level=level)
    a, b = _run_both(ours, theirs, data)
    _same_results(a, b)
    trunk, embedder = _models()
    emb, labels = ours.get_all_embeddings(data["pairs"], copy.deepcopy(trunk.eval()), copy.deepcopy(embedder.eval()))
    pml_emb, pml_labels = theirs.get_all_embeddings(data["pairs"], trunk, embedder, None)
    # pytorch-metric-learning gathers the two streams in float32; dmlkit keeps float64
    assert emb.dtype == torch.float64 and torch.allclose(emb, pml_emb.double(), atol=1e-6, rtol=0)
    assert labels.shape == (52, 3)
    # pytorch-metric-learning keeps only the leading levels it scores; dmlkit keeps every level
    assert labels[:, : pml_labels.shape[1]].tolist() == pml_labels.long().tolist()


def test_pml_parity_labels_as_list_of_levels_and_visualizer() -> None:
    x, y = _hierarchical(9, 21)

    class PerLevel(Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
            return x[i], (int(y[i, 0]), int(y[i, 1]), int(y[i, 2]))

    class Projection:
        def fit_transform(self, array: np.ndarray) -> np.ndarray:
            return array[:, :2] * 2

    calls: dict[str, list] = {"ours": [], "theirs": []}

    def recorder(who: str) -> Callable[..., None]:
        def hook(visualizer: Any, coords: Any, labels: Any, split: str, keyname: str, epoch: int) -> None:
            calls[who].append((type(visualizer).__name__, coords.copy(), labels.tolist(), split, keyname, epoch))

        return hook

    ours, theirs = _pml_pair("GlobalEmbeddingSpaceTester", label_hierarchy_level=1, visualizer=Projection())
    ours.visualizer_hook = recorder("ours")
    theirs.original_visualizer_hook = recorder("theirs")
    a, b = _run_both(ours, theirs, {"val": PerLevel()})
    _same_results(a, b)
    assert len(calls["ours"]) == len(calls["theirs"]) == 1
    (o, t) = calls["ours"][0], calls["theirs"][0]
    assert o[0] == t[0] == "Projection" and o[2:] == t[2:] == (y[:, 1].tolist(), "val", "Projection_level1", 3)
    assert np.allclose(o[1], t[1], atol=1e-12)


def test_signatures_match_pml() -> None:
    pml_testers = pytest.importorskip("pytorch_metric_learning.testers")
    for cls in [BaseTester, *CLASSES]:
        theirs_cls = getattr(pml_testers, cls.__name__)
        for method in ("__init__", "test", "get_all_embeddings"):
            ours = inspect.signature(getattr(cls, method)).parameters
            theirs = inspect.signature(getattr(theirs_cls, method)).parameters
            assert list(ours)[: len(theirs)] == list(theirs), (cls.__name__, method)
            for name, param in theirs.items():
                if param.default is not inspect.Parameter.empty:
                    assert ours[name].default == param.default, (cls.__name__, method, name)
    assert issubclass(GlobalTwoStreamEmbeddingSpaceTester, GlobalEmbeddingSpaceTester)


def test_pml_import_path() -> None:
    alias = importlib.import_module("dmlkit.testers")
    for cls in [BaseTester, *CLASSES]:
        assert getattr(alias, cls.__name__) is cls
    assert sorted(alias.__all__) == sorted(c.__name__ for c in [BaseTester, *CLASSES])


# ---------------------------------------------------------------- behaviour


class _ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def test_model_modes_are_restored() -> None:
    recorder = _ModeRecorder()
    trunk = nn.Sequential(nn.Linear(1, 2).double(), nn.Dropout(0.5), recorder)
    trunk[1].eval()  # a submodule kept in eval mode by the user stays so
    embedder = nn.Identity().train()
    tester = _tester()
    tester.test({"val": VAL}, 0, trunk, embedder)
    assert recorder.seen and not any(recorder.seen)
    assert trunk.training and embedder.training and recorder.training and not trunk[1].training
    recorder.seen.clear()
    tester.get_all_embeddings(VAL, trunk, eval=False)
    assert recorder.seen == [True] and trunk.training
    trunk.eval()
    tester.get_all_embeddings(VAL, trunk)
    assert not trunk.training and not recorder.training


def test_default_calculator_embedder_identity_and_hook() -> None:
    seen: list[tuple[list[str], set[str]]] = []

    def hook(tester: BaseTester) -> None:
        seen.append((list(tester.embeddings_and_labels), set(tester.all_accuracies)))

    tester = GlobalEmbeddingSpaceTester(dataloader_num_workers=0, end_of_testing_hook=hook)
    assert isinstance(tester.accuracy_calculator, AccuracyCalculator)
    assert (tester.batch_size, tester.pca, tester.normalize_embeddings, tester.label_hierarchy_level) == (
        32,
        None,
        True,
        0,
    )
    x, y = _hierarchical(11, 18)
    data = {"val": TensorDataset(x, y[:, 0]), "test": TensorDataset(x[:9], y[:9, 0])}
    out = tester.test(data, 0, nn.Identity(), splits_to_eval=[("test", ["val"])])
    metrics = {"AMI", "NMI", *PML_METRICS[:5]}
    assert set(out) == {"test"} and set(out["test"]) == {"epoch", *(f"{m}_level0" for m in metrics)}
    assert seen == [(["test", "val"], {"test"})]
    assert not hasattr(tester, "embeddings_and_labels")
    with_embedder = tester.get_all_embeddings(data["val"], nn.Identity(), nn.Identity())
    without = tester.get_all_embeddings(data["val"], nn.Identity())
    assert torch.equal(with_embedder[0], without[0])
    assert torch.allclose(without[0], torch.nn.functional.normalize(x, dim=1))


def test_at_k_keys_are_averaged_across_levels() -> None:
    tester = _tester(
        label_hierarchy_level="all", normalize_embeddings=False, accuracy_calculator=_calc("precision_at_k", at_k=[2])
    )
    out = tester.test({"train": TRAIN, "val": VAL}, 0, nn.Identity(), splits_to_eval=[("val", ["train"])])["val"]
    # level 0: q0 [A, B] 1/2, q1 [B, A] 1/2, q2 [B, A] 1/2; level 1: all 1
    _close(
        {k: v for k, v in out.items() if k != "epoch"},
        {"precision_at_2_level0": 0.5, "precision_at_2_level1": 1.0, "AVERAGE_precision_at_2": 0.75},
    )


def test_getter_dtype_collate_and_pca_constant_column() -> None:
    x, y = _hierarchical(12, 16)
    x32 = x.float()
    x32[:, 3] = 2.0  # a constant column: standardising it must not produce NaN

    class Dicts(Dataset):
        def __len__(self) -> int:
            return len(x32)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"features": x32[i], "label": y[i, 0]}

    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    tester = _tester(
        data_and_label_getter=lambda batch: (batch["features"], batch["label"]), dtype=torch.float64, pca=4
    )
    emb, labels = tester.get_all_embeddings(Dicts(), nn.Identity(), collate_fn=collate)
    assert emb.dtype == torch.float64 and emb.shape == (16, 4) and bool(torch.isfinite(emb).all())
    assert torch.allclose(emb.norm(dim=1), torch.ones(16, dtype=torch.float64))
    assert labels.tolist() == y[:, :1].tolist()
    # PCA keeps all the spread: with every component the pairwise distances of the standardised data survive
    full = _tester(pca=8, normalize_embeddings=False).get_all_embeddings(TensorDataset(x, y), nn.Identity())[0]
    z = (x - x.mean(0)) / x.std(0)
    assert torch.allclose(torch.cdist(full, full), torch.cdist(z, z), atol=1e-10)


def test_with_same_parent_all_levels_skips_the_top_level() -> None:
    x, y = _hierarchical(13, 24)
    tester = _tester(WithSameParentLabelTester, label_hierarchy_level="all")
    out = tester.test({"val": TensorDataset(x, y)}, 0, nn.Identity())["val"]
    assert tester.label_levels == [0, 1]
    assert {k.rsplit("_level", 1)[-1] for k in out if "_level" in k} == {"0", "1"}
    assert {k for k in out if k.startswith("AVERAGE_")} == {f"AVERAGE_{m}" for m in RETRIEVAL}


# ---------------------------------------------------------------- errors


def test_unknown_split_name() -> None:
    tester = _tester()
    data = {"train": TRAIN, "test": VAL}
    msg = (
        "GlobalEmbeddingSpaceTester: `splits_to_eval` must be made of split names of `dataset_dict` "
        "('train', 'test'), got 'tset'. Did you mean 'test'?"
    )
    with pytest.raises(KeyError, match=re.escape(msg)):
        tester.test(data, 0, nn.Identity(), splits_to_eval=[("tset", ["train"])])
    with pytest.raises(KeyError, match=re.escape("got 'val'.")):
        tester.test(data, 0, nn.Identity(), splits_to_eval=[("test", ["train", "val"])])


def test_bad_splits_to_eval() -> None:
    tester = _tester()
    data = {"train": TRAIN, "val": VAL}
    with pytest.raises(
        ValueError, match=re.escape("`splits_to_eval` must be a list naming each query split once, got 'val'.")
    ):
        tester.test(data, 0, nn.Identity(), splits_to_eval=[("val", ["train"]), ("val", ["val"])])
    with pytest.raises(
        ValueError, match=re.escape("must be pairs with at least one reference split, got ('val', []).")
    ):
        tester.test(data, 0, nn.Identity(), splits_to_eval=[("val", [])])
    with pytest.raises(
        TypeError, match=re.escape("a list of (query_split, [reference_splits]) pairs, got ('val', 'train').")
    ):
        tester.test(data, 0, nn.Identity(), splits_to_eval=[("val", "train")])
    with pytest.raises(
        TypeError,
        match=re.escape("`splits_to_eval` must be None or a list of (query_split, [reference_splits]) pairs, got str."),
    ):
        tester.test(data, 0, nn.Identity(), splits_to_eval="val")
    two = _tester(GlobalTwoStreamEmbeddingSpaceTester)
    msg = (
        "GlobalTwoStreamEmbeddingSpaceTester: `splits_to_eval` must be pairs of a split with itself only, "
        "like ('val', ['val']), got ('val', ['val', 'train'])."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        two.test(data, 0, nn.Identity(), splits_to_eval=[("val", ["val", "train"])])


def test_dataset_without_labels() -> None:
    tester = _tester()
    x = torch.randn(6, 3, dtype=torch.float64)
    msg = (
        "GlobalEmbeddingSpaceTester: `dataset` must be labelled: its batches (after `data_and_label_getter`) "
        "(inputs, labels) pairs, got a list of 1 element(s)."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        tester.test({"val": TensorDataset(x)}, 0, nn.Identity())
    with pytest.raises(ValueError, match=re.escape("(inputs, labels) pairs, got a tensor of shape (6, 3).")):
        tester.get_all_embeddings(x, nn.Identity())  # type: ignore[arg-type]
    two = _tester(GlobalTwoStreamEmbeddingSpaceTester)
    msg = "(anchors, positives, labels) triples, got a list of 2 element(s)."
    with pytest.raises(ValueError, match=re.escape(msg)):
        two.test({"val": TensorDataset(x, x)}, 0, nn.Identity())
    getter = _tester(data_and_label_getter=lambda batch: (batch[0], None))
    with pytest.raises(ValueError, match=re.escape("pairs, got a tuple of 2 element(s).")):
        getter.test({"val": TensorDataset(x, x)}, 0, nn.Identity())
    with pytest.raises(ValueError, match=re.escape("`dataset` must be non-empty, got an empty dataset.")):
        tester.get_all_embeddings(TensorDataset(x[:0], torch.zeros(0)), nn.Identity())
    bad_labels = TensorDataset(x, torch.zeros(6, 2, 2))
    msg = (
        "`dataset` must be labelled with (6,) or (6, levels) labels for a batch of 6 inputs, "
        "got labels of shape (6, 2, 2)."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        tester.get_all_embeddings(bad_labels, nn.Identity())


def test_bad_label_hierarchy_level() -> None:
    rule = "must be an integer >= 0, a non-empty list of integers >= 0, or 'all'"
    with pytest.raises(
        ValueError,
        match=re.escape(f"GlobalEmbeddingSpaceTester: `label_hierarchy_level` {rule}, got 'al'. Did you mean 'all'?"),
    ):
        _tester(label_hierarchy_level="al")
    for bad in (-1, [], [0, -2], [0.5]):
        with pytest.raises(ValueError, match=re.escape(f"`label_hierarchy_level` {rule}, got {bad!r}.")):
            _tester(label_hierarchy_level=bad)
    with pytest.raises(TypeError, match=re.escape(f"`label_hierarchy_level` {rule}, got float.")):
        _tester(label_hierarchy_level=1.0)
    data = {"train": TRAIN, "val": VAL}  # two label levels
    for level in (2, [0, 5]):
        tester = _tester(label_hierarchy_level=level)
        msg = (
            "GlobalEmbeddingSpaceTester: `label_hierarchy_level` must be levels below the number of label levels (2), "
            f"got {level!r}."
        )
        with pytest.raises(ValueError, match=re.escape(msg)):
            tester.test(data, 0, nn.Identity())
    for level in (1, [0, 1]):
        same_parent = _tester(WithSameParentLabelTester, label_hierarchy_level=level)
        msg = (
            "WithSameParentLabelTester: `label_hierarchy_level` must be levels that have a parent level, below 1 "
            f"(the labels have 2 levels), got {level!r}."
        )
        with pytest.raises(ValueError, match=re.escape(msg)):
            same_parent.test(data, 0, nn.Identity())
    flat = {"val": _line([0.0, 1.0], [0, 1])}
    with pytest.raises(ValueError, match=re.escape("below 0 (the labels have 1 levels), got 'all'.")):
        _tester(WithSameParentLabelTester, label_hierarchy_level="all").test(flat, 0, nn.Identity())


def test_other_constructor_and_data_errors() -> None:
    with pytest.raises(
        ValueError, match=re.escape("`dataset_labels` must be given when set_min_label_to_zero is True, got None.")
    ):
        _tester(set_min_label_to_zero=True)
    with pytest.raises(ValueError, match=re.escape("`batch_size` must be an integer >= 1, got 0.")):
        _tester(batch_size=0)
    with pytest.raises(TypeError, match=re.escape("`dataloader_num_workers` must be an integer >= 0, got 1.5.")):
        GlobalEmbeddingSpaceTester(dataloader_num_workers=1.5)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=re.escape("`visualizer` must be None or an object with a fit_transform method, got int.")
    ):
        _tester(visualizer=3)
    with pytest.raises(TypeError, match=re.escape("`end_of_testing_hook` must be None or a callable, got str.")):
        _tester(end_of_testing_hook="print")
    ranked = _tester(set_min_label_to_zero=True, dataset_labels=[0, 1])
    msg = "`dataset_labels` must be a superset of the labels of the data, at every level, got level 0 without label 2."
    with pytest.raises(ValueError, match=re.escape(msg)):
        ranked.get_all_embeddings(_line([0.0, 1.0, 2.0], [0, 1, 2]), nn.Identity())
    msg = "`dataset` must be labelled with at most 1 level(s), like `dataset_labels`, got 2 levels."
    with pytest.raises(ValueError, match=re.escape(msg)):
        ranked.get_all_embeddings(TRAIN, nn.Identity())
    with pytest.raises(ValueError, match=re.escape("`pca` must be at most the embedding size (1), got 2.")):
        _tester(pca=2).get_all_embeddings(VAL, nn.Identity())
    mixed = {"val": VAL, "flat": _line([0.0, 1.0], [0, 1])}
    msg = "`dataset_dict` must be splits whose labels have the same number of levels, got levels {'val': 2, 'flat': 1}."
    with pytest.raises(ValueError, match=re.escape(msg)):
        _tester().test(mixed, 0, nn.Identity(), splits_to_eval=[("val", ["flat"])])


def test_two_stream_pca_is_fitted_on_both_streams_together() -> None:
    x, y = _hierarchical(14, 12)
    positives = 3 * x + 1
    two = _tester(GlobalTwoStreamEmbeddingSpaceTester, pca=3)
    emb, labels = two.get_all_embeddings(TensorDataset(x, positives, y), nn.Identity())
    rows = TensorDataset(torch.cat([x, positives]), torch.cat([y, y]))
    joint, joint_labels = _tester(pca=3).get_all_embeddings(rows, nn.Identity())
    assert torch.allclose(emb, joint, atol=1e-12) and torch.equal(labels, joint_labels)
