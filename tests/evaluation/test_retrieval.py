"""Retrieval metrics: hand-computed tables, the loop oracle in tests/reference, and pytorch-metric-learning parity."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from dmlkit.evaluation import (
    count_relevant,
    mean_average_precision_at_r,
    precision_at_1,
    r_precision,
    retrieval_metrics,
)
from tests.reference import retrieval as ref

KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
METRICS = {
    "precision_at_1": precision_at_1,
    "r_precision": r_precision,
    "mean_average_precision_at_r": mean_average_precision_at_r,
}


def t(values: list) -> torch.Tensor:
    return torch.tensor(values)


# ---------------------------------------------------------------- hand-computed tables for the metric functions

# Table A. rel_i is 1 where the neighbour's label equals the query's, counted only for i <= R.
#   q0: y=0, R=3, top-3 labels [0, 1, 0] -> rel [1, 0, 1]
#       P@1 = 1, RP = 2/3, AP@R = (1/3) * (1/1 + 2/3) = 5/9
#   q1: y=1, R=2, top-2 [1, 1] -> rel [1, 1]: P@1 = 1, RP = 1, AP@R = (1/2) * (1 + 1) = 1
#   q2: y=2, R=1, top-1 [2] -> rel [1]: P@1 = 1, RP = 1, AP@R = 1
#   q3: y=3, R=0 -> left out (its nearest label 0 would otherwise lower P@1)
#   P@1 = 1, RP = (2/3 + 1 + 1) / 3 = 8/9, MAP@R = (5/9 + 1 + 1) / 3 = 23/27
TABLE_A = (
    t([[0, 1, 0, 0], [1, 1, 0, 2], [2, 0, 0, 0], [0, 0, 1, 1]]),
    t([0, 1, 2, 3]),
    t([3, 2, 1, 0]),
    {"precision_at_1": 1.0, "r_precision": 8 / 9, "mean_average_precision_at_r": 23 / 27},
)

# Table B.
#   q0: y=0, R=2, top-2 [1, 0] -> rel [0, 1]: P@1 = 0, RP = 1/2, AP@R = (1/2) * (1/2) = 1/4
#   q1: y=0, R=3, top-3 [0, 1, 1] -> rel [1, 0, 0]: P@1 = 1, RP = 1/3, AP@R = (1/3) * 1 = 1/3
#   q2: y=1, R=1, top-1 [1] -> rel [1]: P@1 = 1, RP = 1, AP@R = 1
#   P@1 = 2/3, RP = (1/2 + 1/3 + 1) / 3 = 11/18, MAP@R = (1/4 + 1/3 + 1) / 3 = 19/36
#   The 4th column lies beyond every R and must not count.
TABLE_B = (
    t([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]),
    t([0, 0, 1]),
    t([2, 3, 1]),
    {"precision_at_1": 2 / 3, "r_precision": 11 / 18, "mean_average_precision_at_r": 19 / 36},
)


@pytest.mark.parametrize("table", [TABLE_A, TABLE_B], ids=["A", "B"])
@pytest.mark.parametrize("name", KEYS)
def test_metric_functions_on_hand_tables(table: tuple, name: str) -> None:
    knn_labels, query_labels, num_relevant, want = table
    assert METRICS[name](knn_labels, query_labels, num_relevant) == pytest.approx(want[name], abs=1e-15)


def test_columns_beyond_max_r_are_ignored() -> None:
    knn_labels, query_labels, num_relevant, want = TABLE_B
    got = r_precision(knn_labels[:, :3], query_labels, num_relevant)
    assert got == pytest.approx(want["r_precision"], abs=1e-15)
    got = mean_average_precision_at_r(knn_labels[:, :3], query_labels, num_relevant)
    assert got == pytest.approx(want["mean_average_precision_at_r"], abs=1e-15)


@pytest.mark.parametrize("name", KEYS)
def test_all_queries_lone_gives_nan(name: str) -> None:
    assert math.isnan(METRICS[name](t([[0], [1]]), t([0, 1]), t([0, 0])))


@pytest.mark.parametrize("name", KEYS)
def test_metric_functions_match_oracle_on_random_tables(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        num_query, k = (int(v) for v in torch.randint(1, 30, (2,), generator=g))
        knn_labels = torch.randint(0, 4, (num_query, k), generator=g)
        query_labels = torch.randint(0, 4, (num_query,), generator=g)
        num_relevant = torch.randint(0, k + 1, (num_query,), generator=g)
        got = METRICS[name](knn_labels, query_labels, num_relevant)
        want = getattr(ref, name)(knn_labels.tolist(), query_labels.tolist(), num_relevant.tolist())
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- count_relevant


def test_count_relevant_hand_cases() -> None:
    labels = t([4, 4, 4, 7, 9, 7])
    assert count_relevant(labels).tolist() == [2, 2, 2, 1, 0, 1]
    assert count_relevant(labels, labels, ref_includes_query=True).tolist() == [2, 2, 2, 1, 0, 1]
    assert count_relevant(t([4, 7, 5, -1]), t([7, 4, 4, -1, 7, 7])).tolist() == [2, 3, 0, 1]


def test_count_relevant_matches_oracle() -> None:
    g = torch.Generator().manual_seed(1)
    query_labels = torch.randint(-3, 8, (60,), generator=g)
    reference_labels = torch.randint(-3, 8, (45,), generator=g)
    got = count_relevant(query_labels, reference_labels)
    assert got.tolist() == ref.count_relevant(query_labels.tolist(), reference_labels.tolist(), False)
    both = torch.cat([query_labels, reference_labels])
    got = count_relevant(query_labels, both, ref_includes_query=True)
    assert got.tolist() == ref.count_relevant(query_labels.tolist(), both.tolist(), True)


# ---------------------------------------------------------------- retrieval_metrics: hand tables


def test_retrieval_metrics_hand_table_query_is_reference() -> None:
    # Points on a line; labels [A, A, B, A, C]; B and C occur once, so those queries are lone (R = 0).
    # R for the A queries: 3 A's minus the query itself = 2.
    #   x=0.0 : neighbours 1.0 (A, d 1), 3.0 (B, d 3) -> rel [1, 0]: P@1 1, RP 1/2, AP@R (1/2) * 1 = 1/2
    #   x=1.0 : neighbours 0.0 (A, d 1), 3.0 (B, d 2) -> rel [1, 0]: P@1 1, RP 1/2, AP@R 1/2
    #   x=3.5 : neighbours 3.0 (B, d .5), 1.0 (A, d 2.5) -> rel [0, 1]: P@1 0, RP 1/2, AP@R (1/2) * (1/2) = 1/4
    #   P@1 = 2/3, RP = 1/2, MAP@R = (1/2 + 1/2 + 1/4) / 3 = 5/12
    emb = t([[0.0], [1.0], [3.0], [3.5], [10.0]])
    got = retrieval_metrics(emb, t([0, 0, 1, 0, 2]))
    assert got == pytest.approx({"precision_at_1": 2 / 3, "r_precision": 1 / 2, "mean_average_precision_at_r": 5 / 12})
    assert list(got) == list(KEYS)


def test_retrieval_metrics_hand_table_separate_reference_with_tie() -> None:
    # Queries 0.0 (label 0), 5.0 (label 1), 9.0 (label 7, absent from the reference: lone).
    # Reference 1.0 (0), 4.0 (1), 6.0 (0), 2.0 (1): R = 2 for labels 0 and 1.
    #   q=0.0 : 1.0 (0, d 1), 2.0 (1, d 2) -> rel [1, 0]: P@1 1, RP 1/2, AP@R 1/2
    #   q=5.0 : 4.0 (1, d 1) and 6.0 (0, d 1) tie; ascending index puts 4.0 first -> rel [1, 0]: 1, 1/2, 1/2
    #   P@1 = 1, RP = 1/2, MAP@R = 1/2
    got = retrieval_metrics(t([[0.0], [5.0], [9.0]]), t([0, 1, 7]), t([[1.0], [4.0], [6.0], [2.0]]), t([0, 1, 0, 1]))
    assert got == pytest.approx({"precision_at_1": 1.0, "r_precision": 1 / 2, "mean_average_precision_at_r": 1 / 2})


def test_retrieval_metrics_hand_table_reference_extends_query() -> None:
    # Queries 0.0 (0), 1.0 (1); reference = queries + 0.2 (0), 0.9 (1), 5.0 (0).
    # R: label 0 -> 3 - 1 = 2, label 1 -> 2 - 1 = 1.
    #   q=0.0 (self excluded): 0.2 (0), 0.9 (1) -> rel [1, 0]: P@1 1, RP 1/2, AP@R 1/2
    #   q=1.0 (self excluded): 0.9 (1) -> rel [1]: 1, 1, 1
    #   P@1 = 1, RP = 3/4, MAP@R = 3/4
    query = t([[0.0], [1.0]])
    reference = torch.cat([query, t([[0.2], [0.9], [5.0]])])
    got = retrieval_metrics(query, t([0, 1]), reference, t([0, 1, 0, 1, 0]), ref_includes_query=True)
    assert got == pytest.approx({"precision_at_1": 1.0, "r_precision": 3 / 4, "mean_average_precision_at_r": 3 / 4})


def test_retrieval_metrics_all_lone_gives_nan() -> None:
    got = retrieval_metrics(t([[0.0], [1.0]]), t([0, 1]))
    assert all(math.isnan(v) for v in got.values()) and list(got) == list(KEYS)


# ---------------------------------------------------------------- retrieval_metrics: oracle


def labelled_points(n: int, num_classes: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    centers = torch.randn(num_classes, 4, generator=g, dtype=dtype)
    return centers[labels] + 0.8 * torch.randn(n, 4, generator=g, dtype=dtype), labels


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
@pytest.mark.parametrize("setting", ["self", "separate", "extends"])
def test_retrieval_metrics_match_oracle(distance: str, setting: str) -> None:
    query, query_labels = labelled_points(40, 9, seed=2)
    if setting == "self":
        reference, reference_labels, includes = query, query_labels, True
        got = retrieval_metrics(query, query_labels, distance=distance, block_size=7)
    else:
        extra, extra_labels = labelled_points(30, 11, seed=3)
        includes = setting == "extends"
        reference = torch.cat([query, extra]) if includes else extra
        reference_labels = torch.cat([query_labels, extra_labels]) if includes else extra_labels
        got = retrieval_metrics(query, query_labels, reference, reference_labels, includes, distance, block_size=7)
    want = ref.retrieval_metrics(
        query.tolist(), query_labels.tolist(), reference.tolist(), reference_labels.tolist(), includes, distance
    )
    assert got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- pytorch-metric-learning parity


def pml_accuracy(*args: object, **kwargs: object) -> dict[str, float]:
    pytest.importorskip("faiss", reason="pytorch-metric-learning's default k-nn needs faiss")
    calculator_module = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    calculator = calculator_module.AccuracyCalculator(include=KEYS, device=torch.device("cpu"))
    return calculator.get_accuracy(*args, **kwargs)


def clustered(n: int, centers: torch.Tensor, labels_from: torch.Tensor, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    labels = labels_from[torch.randint(0, len(labels_from), (n,), generator=g)]
    return centers[labels] + torch.randn(n, centers.shape[1], generator=g), labels


@pytest.mark.parametrize("setting", ["self", "separate", "extends"])
def test_parity_with_pml(setting: str) -> None:
    centers = torch.randn(15, 6, generator=torch.Generator().manual_seed(4)) * 2
    # Labels 12-14 appear only in the queries (lone against a separate reference); random float32 points
    # have no exact distance ties.
    query, query_labels = clustered(300, centers, torch.arange(15), seed=5)
    extra, extra_labels = clustered(400, centers, torch.arange(12), seed=6)
    if setting == "self":
        want = pml_accuracy(query, query_labels)
        got = retrieval_metrics(query, query_labels, block_size=128)
    elif setting == "separate":
        want = pml_accuracy(query, query_labels, extra, extra_labels, False)
        got = retrieval_metrics(query, query_labels, extra, extra_labels, block_size=128)
    else:
        reference, reference_labels = torch.cat([query, extra]), torch.cat([query_labels, extra_labels])
        want = pml_accuracy(query, query_labels, reference, reference_labels, True)
        got = retrieval_metrics(query, query_labels, reference, reference_labels, True, block_size=128)
    assert set(got) == set(want)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert 0.0 < got["mean_average_precision_at_r"] < got["precision_at_1"] < 1.0


def test_parity_with_pml_lone_labels_in_self_retrieval() -> None:
    # Singleton classes in self-retrieval have R = 0 and are left out by both libraries.
    centers = torch.randn(10, 5, generator=torch.Generator().manual_seed(7)) * 2
    query, query_labels = clustered(120, centers, torch.arange(8), seed=8)
    singles, _ = clustered(5, centers, torch.arange(10), seed=9)
    query = torch.cat([query, singles])
    query_labels = torch.cat([query_labels, torch.arange(100, 105)])
    want = pml_accuracy(query, query_labels)
    got = retrieval_metrics(query, query_labels)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


# ---------------------------------------------------------------- errors

ERROR_CASES = [
    (
        lambda: r_precision(t([[0, 0]]), t([0]), t([3])),
        ValueError,
        "r_precision: `knn_labels` must be of at least max(num_relevant) = 3 columns, got 2.",
    ),
    (
        lambda: mean_average_precision_at_r(t([[0, 0]]), t([0]), t([3])),
        ValueError,
        "mean_average_precision_at_r: `knn_labels` must be of at least max(num_relevant) = 3 columns, got 2.",
    ),
    (
        lambda: precision_at_1(torch.zeros(2, 0, dtype=torch.long), t([0, 1]), t([1, 1])),
        ValueError,
        "precision_at_1: `knn_labels` must be of at least 1 column, got 0.",
    ),
    (
        lambda: precision_at_1(t([0, 1]), t([0, 1]), t([1, 1])),
        ValueError,
        "precision_at_1: `knn_labels` must be 2-D of shape (num_queries, k), got (2,).",
    ),
    (
        lambda: precision_at_1([[0]], t([0]), t([1])),
        TypeError,
        "precision_at_1: `knn_labels` must be a torch.Tensor, got list.",
    ),
    (
        lambda: r_precision(t([[0], [1]]), t([0]), t([1, 1])),
        ValueError,
        "r_precision: `query_labels` must be of the same length as `knn_labels` (2), got length 1.",
    ),
    (
        lambda: r_precision(t([[0], [1]]), t([0, 1]), t([1, -1])),
        ValueError,
        "r_precision: `num_relevant` must be non-negative, got -1.",
    ),
    (
        lambda: retrieval_metrics(t([[0.0], [1.0]]), t([0, 0]), t([[1.0]])),
        ValueError,
        "retrieval_metrics: `reference_labels` must be a tensor when `reference` is given, got None.",
    ),
    (
        lambda: retrieval_metrics(t([[0.0], [1.0]]), t([0, 0]), reference_labels=t([0])),
        ValueError,
        "retrieval_metrics: `reference_labels` must be None when `reference` is None, got 'a tensor'.",
    ),
    (
        lambda: retrieval_metrics(t([[0.0], [1.0]]), t([0, 0]), t([[0.0], [1.0], [2.0]]), t([0, 1, 1]), True),
        ValueError,
        "retrieval_metrics: `reference_labels` must be a tensor whose first 2 entries equal `query_labels`",
    ),
    (
        lambda: retrieval_metrics(t([[0.0], [1.0]]), t([0.0, 0.0])),
        TypeError,
        "retrieval_metrics: `query_labels` must be an integer tensor",
    ),
    (
        lambda: retrieval_metrics(t([[0.0], [1.0]]), t([0, 0]), distance="l2"),
        ValueError,
        "retrieval_metrics: `distance` must be one of 'euclidean', 'cosine', 'inner_product', got 'l2'.",
    ),
    (
        lambda: retrieval_metrics(t([[0.0], [1.0]]), t([0, 0]), block_size=0),
        ValueError,
        "retrieval_metrics: `block_size` must be an integer >= 1, got 0.",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text)):
        call()
