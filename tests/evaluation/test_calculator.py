"""AccuracyCalculator: hand-computed tables, loop oracles, scikit-learn cross-checks and PML parity."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

from dmlkit.evaluation import AccuracyCalculator, ExactKNN, FaissKNN, KMeans
from tests.evaluation.test_knn import _count_calls
from tests.reference import accuracy as ref

RANK_METRICS = (
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
)
ALL_KEYS = {"AMI", "NMI", *RANK_METRICS}

# ---------------------------------------------------------------- hand-computed table
# Points on a line, self-retrieval; labels A=0, B=1, C=2 (C occurs once: lone, left out).
#   p0=0.0 A, p1=1.0 A, p2=3.0 B, p3=3.5 A, p4=10.0 B, p5=20.0 C.  R: A -> 2, B -> 1.
#   q0: p1 A, p2 B, p3 A, p4 B, p5 C  rel [1,0,1,0,0]  P@1 1, RP 1/2, MAP@R 1/2, MAP (1 + 2/3)/2 = 5/6, MRR 1
#   q1: p0 A, p2 B, p3 A, p4, p5      rel [1,0,1,0,0]  1, 1/2, 1/2, 5/6, 1
#   q2: p3 A, p1 A, p0 A, p4 B, p5    rel [0,0,0,1,0]  0, 0, 0, (1/4)/1 = 1/4, 1/4
#   q3: p2 B, p1 A, p0 A, p4, p5      rel [0,1,1,0,0]  0, 1/2, (1/2)/2 = 1/4, (1/2 + 2/3)/2 = 7/12, 1/2
#   q4: p3 A, p2 B, p1, then p0 and p5 tie at distance 10 (p0 first by index)  rel [0,1,0,0,0]
#       0, 0, 0, (1/2)/1 = 1/2, 1/2
#   Means over the 5 queries: P@1 2/5, RP 3/10, MAP@R 1/4, MAP 3/5, MRR 13/20.
#   Per class (A: q0, q1, q3; B: q2, q4): P@1 [2/3, 0]; MAP [3/4, 3/8] -> avg of avgs 9/16.
#   precision@3: [2/3, 2/3, 0, 2/3, 1/3] -> 7/15; recall@3: [1, 1, 0, 1, 1] -> 4/5; recall@1 = 2/5.
#   k=2: MAP [1/2, 1/2, 0, 1/4, 1/2] -> 7/20; MRR [1, 1, 0, 1/2, 1/2] -> 3/5; RP unchanged (R <= 2).
LINE = torch.tensor([[0.0], [1.0], [3.0], [3.5], [10.0], [20.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 0, 1, 2])
HAND = {
    "precision_at_1": 2 / 5,
    "r_precision": 3 / 10,
    "mean_average_precision_at_r": 1 / 4,
    "mean_average_precision": 3 / 5,
    "mean_reciprocal_rank": 13 / 20,
}


def quiet(calculator: AccuracyCalculator, *args: object, **kwargs: object) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculator.get_accuracy(*args, **kwargs)


@pytest.mark.parametrize("k", [None, "max_bin_count", 5])
def test_hand_table(k: int | str | None) -> None:
    got = quiet(AccuracyCalculator(include=RANK_METRICS, k=k), LINE, LINE_LABELS)
    want = dict(HAND)
    if k == "max_bin_count":  # the list is 2 long: MAP and MRR are truncated like k=2
        want.update(mean_average_precision=7 / 20, mean_reciprocal_rank=3 / 5)
    assert got == pytest.approx(want, abs=1e-12)
    assert list(got) == sorted(RANK_METRICS)


def test_hand_table_k2_and_at_k() -> None:
    got = AccuracyCalculator(include=(*RANK_METRICS, "precision_at_k", "recall_at_k"), k=2, at_k=[3, 1]).get_accuracy(
        LINE, LINE_LABELS
    )
    want = {**HAND, "mean_average_precision": 7 / 20, "mean_reciprocal_rank": 3 / 5}
    want.update({"precision_at_3": 7 / 15, "recall_at_3": 4 / 5, "recall_at_1": 2 / 5})
    assert got == pytest.approx(want, abs=1e-12)


def test_hand_table_per_class() -> None:
    include = ("precision_at_1", "mean_average_precision")
    got = AccuracyCalculator(include=include, return_per_class=True).get_accuracy(LINE, LINE_LABELS)
    assert got["precision_at_1"] == pytest.approx([2 / 3, 0.0])
    assert got["mean_average_precision"] == pytest.approx([3 / 4, 3 / 8])
    got = AccuracyCalculator(include=include, avg_of_avgs=True).get_accuracy(LINE, LINE_LABELS)
    assert got == pytest.approx({"precision_at_1": 1 / 3, "mean_average_precision": 9 / 16})


def test_mean_reciprocal_rank_alone() -> None:
    # pytorch-metric-learning 2.9 raises TypeError here (no neighbours are computed for it).
    got = AccuracyCalculator(include=("mean_reciprocal_rank",)).get_accuracy(LINE, LINE_LABELS)
    assert got == pytest.approx({"mean_reciprocal_rank": 13 / 20})


def test_all_lone_gives_nan_with_a_warning() -> None:
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision"), return_per_class=True)
    with pytest.warns(UserWarning, match="none of the query labels are in the reference set"):
        got = calc.get_accuracy(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    assert all(math.isnan(v) for values in got.values() for v in values) and len(got["r_precision"]) == 3


# ---------------------------------------------------------------- loop oracle on random data


def clustered(n: int, classes: int, seed: int, dim: int = 4, dtype: torch.dtype = torch.float64) -> tuple:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, dim, generator=g, dtype=dtype) * 1.5
    return centers[labels] + torch.randn(n, dim, generator=g, dtype=dtype), labels


@pytest.mark.parametrize("k", [None, "max_bin_count", 3])
@pytest.mark.parametrize("setting", ["self", "separate", "extends"])
@pytest.mark.parametrize("mode", ["mean", "avg_of_avgs", "per_class"])
def test_matches_loop_oracle(k: int | str | None, setting: str, mode: str) -> None:
    query, query_labels = clustered(30, 5, seed=1)
    extra, extra_labels = clustered(25, 6, seed=2)
    if setting == "self":
        reference, reference_labels, includes = query, query_labels, True
    elif setting == "separate":
        reference, reference_labels, includes = extra, extra_labels, False
    else:
        reference, reference_labels = torch.cat([query, extra]), torch.cat([query_labels, extra_labels])
        includes = True
    calc = AccuracyCalculator(
        include=RANK_METRICS, k=k, avg_of_avgs=mode == "avg_of_avgs", return_per_class=mode == "per_class"
    )
    got = quiet(calc, query, query_labels, reference, reference_labels, includes)
    ranked = ref.ranked_labels(query.tolist(), reference.tolist(), reference_labels.tolist(), includes)
    counts = [reference_labels.tolist().count(y) - int(includes) for y in query_labels.tolist()]
    limit = len(ranked[0]) if k is None else (max(counts) if k == "max_bin_count" else k)
    rows = [
        (ref.per_query(r, y, c, limit), y)
        for r, y, c in zip(ranked, query_labels.tolist(), counts, strict=True)
        if c > 0
    ]
    for name in RANK_METRICS:
        want = ref.aggregate([v[name] for v, _ in rows], [y for _, y in rows], mode)
        assert got[name] == pytest.approx(want, abs=1e-12), name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thresholded_search_with_ties_and_duplicates_matches_loop_oracle(
    threads: int, dtype: torch.dtype, filter_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 classes over 420 points: R is small next to N, so the search keeps only the references below a
    # per-query bound from a sample (float32: one packed sort, the filter in torch or compiled; float64: stable
    # sorts, torch; one thread: numpy comparison). Integer coordinates give exact ties, and 60 duplicated rows
    # sit at distance 0.
    calls = filter_calls if dtype == torch.float32 else _count_calls(monkeypatch, "_topk_thresholded")
    g = torch.Generator().manual_seed(31)
    labels = torch.randint(0, 40, (360,), generator=g)
    x = torch.randint(-3, 4, (360, 3), generator=g).to(dtype) + labels[:, None].to(dtype) % 5
    x, labels = torch.cat([x, x[:60]]), torch.cat([labels, labels[:60]])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calc = AccuracyCalculator(include=RANK_METRICS[:3], k="max_bin_count", knn_func=ExactKNN(block_size=64))
        got = quiet(calc, x, labels)
    finally:
        torch.set_num_threads(before)
    assert calls, "the thresholded path was not taken"
    ranked = ref.ranked_labels(x.tolist(), x.tolist(), labels.tolist(), True)
    counts = [labels.tolist().count(y) - 1 for y in labels.tolist()]
    rows = [ref.per_query(r, y, c, max(counts)) for r, y, c in zip(ranked, labels.tolist(), counts, strict=True) if c]
    for name in RANK_METRICS[:3]:
        assert got[name] == pytest.approx(sum(v[name] for v in rows) / len(rows), abs=1e-12), name


def test_custom_label_comparison_and_multilabel_match_oracle() -> None:
    # Multi-hot labels; two samples match when they share any tag.
    query, _ = clustered(40, 4, seed=3)
    tags = torch.randint(0, 2, (40, 4), generator=torch.Generator().manual_seed(4))
    tags[tags.sum(1) == 0, 0] = 1

    def share(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(-1) > 0

    got = AccuracyCalculator(include=RANK_METRICS, label_comparison_fn=share).get_accuracy(query, tags)
    tag_rows = [tuple(t) for t in tags.tolist()]
    ranked = ref.ranked_labels(query.tolist(), query.tolist(), list(range(40)), True)

    def match(a: tuple, b: tuple) -> bool:
        return any(x and y for x, y in zip(a, b, strict=True))

    per = []
    for i, r in enumerate(ranked):
        count = sum(match(tag_rows[i], t) for t in tag_rows) - 1
        per.append(ref.per_query([tag_rows[j] for j in r], tag_rows[i], count, len(r), match))
    for name in RANK_METRICS:
        assert got[name] == pytest.approx(sum(p[name] for p in per) / len(per), abs=1e-12), name


def test_column_labels_equal_flat_labels() -> None:
    query, labels = clustered(50, 4, seed=5)
    calc = AccuracyCalculator(exclude=("NMI", "AMI"), at_k=(2,))
    assert calc.get_accuracy(query, labels[:, None]) == calc.get_accuracy(query, labels)


def test_per_query_average_precision_equals_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    reference, reference_labels = clustered(60, 3, seed=6)
    queries, query_labels = clustered(8, 3, seed=7)
    calc = AccuracyCalculator(include=("mean_average_precision",))
    for q, y in zip(queries, query_labels, strict=True):
        got = calc.get_accuracy(q[None], y[None], reference, reference_labels)["mean_average_precision"]
        scores = -torch.cdist(q[None], reference)[0]
        want = metrics.average_precision_score((reference_labels == y).numpy(), scores.numpy())
        assert got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- inputs


def test_numpy_float16_and_float32_inputs() -> None:
    query, labels = clustered(60, 4, seed=8, dtype=torch.float32)
    calc = AccuracyCalculator(include=RANK_METRICS)
    want = calc.get_accuracy(query, labels)
    assert calc.get_accuracy(query.numpy(), labels.numpy()) == want
    half = query.half()
    assert calc.get_accuracy(half, labels) == calc.get_accuracy(half.float(), labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    query, labels = clustered(300, 6, seed=9, dtype=torch.float32)
    calc = AccuracyCalculator(include=RANK_METRICS)
    got = calc.get_accuracy(query.cuda(), labels.cuda())
    assert got == pytest.approx(calc.get_accuracy(query, labels), abs=1e-6)


def test_subclass_adds_a_metric_the_pml_way() -> None:
    class WithMedianDistance(AccuracyCalculator):
        def calculate_median_first_distance(self, knn_distances: torch.Tensor, **kwargs: object) -> float:
            return float(knn_distances[:, 0].median())

        def requires_knn(self) -> list[str]:
            return [*super().requires_knn(), "median_first_distance"]

    calc = WithMedianDistance(include=("precision_at_1", "median_first_distance"), k=2)
    got = calc.get_accuracy(LINE, LINE_LABELS)
    assert got == pytest.approx({"precision_at_1": 2 / 5, "median_first_distance": 1.0})


def test_overridden_builtin_gets_pml_kwargs() -> None:
    class Doubled(AccuracyCalculator):
        def calculate_precision_at_1(self, **kwargs: object) -> float:
            return 2 * super().calculate_precision_at_1(**kwargs)

    assert Doubled(include=("precision_at_1",)).get_accuracy(LINE, LINE_LABELS) == pytest.approx(
        {"precision_at_1": 4 / 5}
    )


def test_nmi_ami_use_the_kmeans_func() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    query, labels = clustered(90, 3, seed=10)
    clusters = torch.arange(90) % 3
    got = AccuracyCalculator(include=("NMI", "AMI"), kmeans_func=lambda x, n: clusters).get_accuracy(query, labels)
    assert got["NMI"] == pytest.approx(sklearn_metrics.normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert got["AMI"] == pytest.approx(sklearn_metrics.adjusted_mutual_info_score(labels, clusters), abs=1e-12)


def test_nmi_ami_need_one_label_per_query() -> None:
    query, labels = clustered(30, 3, seed=12)
    two_columns = torch.stack([labels, labels % 2], dim=1)
    with pytest.raises(ValueError, match=r"`query_labels` must be 1-D \(or one column\) for NMI and AMI"):
        AccuracyCalculator(include=("NMI",), kmeans_func=lambda x, n: labels).get_accuracy(query, two_columns)
    one_column = AccuracyCalculator(include=("AMI",), kmeans_func=lambda x, n: labels)
    assert one_column.get_accuracy(query, labels[:, None]) == pytest.approx({"AMI": 1.0})


def test_default_kmeans_separates_clear_clusters() -> None:
    g = torch.Generator().manual_seed(11)
    labels = torch.arange(4).repeat_interleave(30)
    x = torch.eye(4)[labels] * 20 + torch.randn(120, 4, generator=g)
    got = AccuracyCalculator(include=("NMI", "AMI"), kmeans_func=KMeans(backend="torch")).get_accuracy(x, labels)
    assert got == pytest.approx({"NMI": 1.0, "AMI": 1.0})


def test_works_without_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    query, labels = clustered(40, 3, seed=12)
    got = AccuracyCalculator().get_accuracy(query, labels)
    assert set(got) == ALL_KEYS
    with pytest.raises(ImportError, match=re.escape('pip install "dmlkit[faiss]"')):
        AccuracyCalculator(knn_func=FaissKNN()).get_accuracy(query, labels)


def test_faiss_flat_agrees_with_exact() -> None:
    pytest.importorskip("faiss")
    query, labels = clustered(200, 5, seed=13, dtype=torch.float32)
    exact = AccuracyCalculator(include=RANK_METRICS, k="max_bin_count").get_accuracy(query, labels)
    flat = AccuracyCalculator(include=RANK_METRICS, k="max_bin_count", knn_func=FaissKNN()).get_accuracy(query, labels)
    assert flat == pytest.approx(exact, abs=1e-6)


def test_memory_stays_below_the_full_matrix_for_k_none() -> None:
    # 12000 x 12000 float32 distances would take 576 MB; MAP@R needs each query's R (about 30) neighbours.
    code = textwrap.dedent(
        """
        import resource, torch
        torch.set_num_threads(1)
        from dmlkit.evaluation import AccuracyCalculator
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 400, (12000,), generator=g)
        x = torch.randn(400, 8, generator=g)[labels] + torch.randn(12000, 8, generator=g)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        got = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision")).get_accuracy(x, labels)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert 0 < got["mean_average_precision_at_r"] < 1
        print(after - before)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) < 96 * 1024, f"peak memory grew by {done.stdout.strip()} KiB"


# ---------------------------------------------------------------- pytorch-metric-learning parity


def pml_calculator(**kwargs: object) -> object:
    module = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    return module.AccuracyCalculator(device=torch.device("cpu"), **kwargs)


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, list):
            assert len(got[key]) == len(value), key
            for a, b in zip(got[key], value, strict=True):
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def parity_data(setting: str) -> tuple:
    query, labels = clustered(150, 8, seed=14)
    labels = torch.cat([labels[:-3], torch.tensor([50, 51, 52])])  # three lone queries
    extra, extra_labels = clustered(80, 10, seed=15)
    if setting == "self":
        return query, labels
    if setting == "separate":
        return query, labels, extra, extra_labels, False
    return query, labels, torch.cat([query, extra]), torch.cat([labels, extra_labels]), True


@pytest.mark.parametrize("k", [None, "max_bin_count", 4, 30])
@pytest.mark.parametrize("setting", ["self", "separate", "extends"])
@pytest.mark.parametrize("options", [{}, {"avg_of_avgs": True}, {"return_per_class": True}])
def test_parity_with_pml(k: int | str | None, setting: str, options: dict) -> None:
    pytest.importorskip("faiss", reason="pytorch-metric-learning's default k-nn needs faiss")
    args = parity_data(setting)
    clusters = torch.arange(150) % 7  # the same clustering for both, so NMI/AMI compare the formulas
    want = quiet(pml_calculator(k=k, kmeans_func=lambda x, n: clusters, **options), *args)
    got = quiet(AccuracyCalculator(k=k, kmeans_func=lambda x, n: clusters, **options), *args)
    assert list(got) == list(want)
    assert_same(got, want)


TIE_FN: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda a, b: (a // 2) == (b // 2)  # noqa: E731


@pytest.mark.parametrize("k", [None, "max_bin_count", 6])
@pytest.mark.parametrize("comparison", [None, TIE_FN])
def test_parity_with_pml_on_ties_with_the_same_neighbours(k: int | str | None, comparison: Callable | None) -> None:
    # Small integer points: many exact ties. Giving PML our ExactKNN makes both read the same order.
    g = torch.Generator().manual_seed(16)
    x = torch.randint(-2, 3, (120, 3), generator=g).float()
    labels = torch.randint(0, 6, (120,), generator=g)
    include = RANK_METRICS[:4]  # PML cannot compute mean_reciprocal_rank without another knn metric listed
    want = quiet(pml_calculator(include=include, k=k, knn_func=ExactKNN(), label_comparison_fn=comparison), x, labels)
    got = quiet(AccuracyCalculator(include=include, k=k, label_comparison_fn=comparison), x, labels)
    assert_same(got, want)


# ---------------------------------------------------------------- errors

X, Y = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
ERRORS = [
    (lambda: AccuracyCalculator(k=0), ValueError, "AccuracyCalculator: `k` must be an integer >= 1, None or "),
    (lambda: AccuracyCalculator(k="max"), ValueError, "AccuracyCalculator: `k` must be an integer >= 1"),
    (
        lambda: AccuracyCalculator(include=("precision_at_l",)),
        ValueError,
        "AccuracyCalculator: `include` must be metric names among",
    ),
    (lambda: AccuracyCalculator(include="NMI"), TypeError, "AccuracyCalculator: `include` must be a tuple or list"),
    (
        lambda: AccuracyCalculator(avg_of_avgs=True, return_per_class=True),
        ValueError,
        "AccuracyCalculator: `return_per_class` must be False when avg_of_avgs is True, got True.",
    ),
    (
        lambda: AccuracyCalculator(include=("recall_at_k",)),
        ValueError,
        "AccuracyCalculator: `at_k` must be a non-empty list of integers >= 1 when 'recall_at_k' is included, got ().",
    ),
    (lambda: AccuracyCalculator(at_k=(0,)), ValueError, "AccuracyCalculator: `at_k` must be a list of integers >= 1"),
    (
        lambda: AccuracyCalculator(label_comparison_fn=torch.eq),
        NotImplementedError,
        "AccuracyCalculator: a custom `label_comparison_fn` cannot be combined with the clustering metrics",
    ),
    (
        lambda: AccuracyCalculator().get_accuracy(X, Y[:3]),
        ValueError,
        "AccuracyCalculator: `query_labels` must be of the same length as `query` (4), got 'length 3'.",
    ),
    (
        lambda: AccuracyCalculator().get_accuracy(X, Y, X[:2] + 1, Y[:2], True),
        ValueError,
        "AccuracyCalculator: `reference` must be a set whose first 4 rows and labels are the queries'",
    ),
    (
        lambda: AccuracyCalculator().get_accuracy(X, Y, X),
        ValueError,
        "AccuracyCalculator: `reference_labels` must be given when `reference` is given, got None.",
    ),
    (
        lambda: AccuracyCalculator().get_accuracy([[0.0]], [0]),
        TypeError,
        "AccuracyCalculator: `query` must be a torch.Tensor or numpy.ndarray, got 'list'.",
    ),
    (
        lambda: AccuracyCalculator(include=("precision_at_k",), at_k=(4,)).get_accuracy(X, Y),
        ValueError,
        "AccuracyCalculator: `at_k` must be at most the number of available references (3), got 4.",
    ),
    (
        lambda: AccuracyCalculator().get_accuracy(torch.tensor([[float("nan")], [0.0]]), Y[:2]),
        ValueError,
        "AccuracyCalculator: `query` must be finite",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERRORS)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text)):
        call()


def test_pml_import_path() -> None:
    from dmlkit.utils.accuracy_calculator import AccuracyCalculator as Aliased

    assert Aliased is AccuracyCalculator
    assert isinstance(np.float64(1.0), float)


def test_import_costs_torch_only() -> None:
    code = (
        "import sys, dmlkit.evaluation, dmlkit.utils.accuracy_calculator\n"
        "loaded = [m for m in ('sklearn', 'faiss', 'pytorch_metric_learning', 'scipy') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
