"""KNNClassifier: parity with scikit-learn's KNeighborsClassifier, a plain-loop oracle, estimator contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from dmlkit.evaluation.knn_classifier import KNNClassifier
from tests.reference import knn_classifier as oracle

SETTINGS = [(w, m) for w in ("uniform", "distance") for m in ("euclidean", "cosine")]


def _blobs(seed: int, n: int = 120, d: int = 6, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(0.0, 2.0, (classes, d))
    return centers[y] + rng.normal(size=(n, d)), y


@pytest.mark.parametrize(("weights", "metric"), SETTINGS)
@pytest.mark.parametrize("k", [1, 4, 9])
def test_matches_sklearn(weights: str, metric: str, k: int) -> None:
    X, y = _blobs(0)
    Q = _blobs(1, n=50)[0]
    labels = np.array(["ant", "bee", "cat", "dog"])[y]
    ours = KNNClassifier(k, weights=weights, metric=metric).fit(X, labels)
    theirs = KNeighborsClassifier(k, weights=weights, metric=metric, algorithm="brute").fit(X, labels)
    assert ours.classes_.tolist() == theirs.classes_.tolist()
    np.testing.assert_array_equal(ours.predict(Q), theirs.predict(Q))
    np.testing.assert_allclose(ours.predict_proba(Q), theirs.predict_proba(Q), rtol=0, atol=1e-12)
    assert ours.score(Q, labels[:50]) == theirs.score(Q, labels[:50])


@pytest.mark.parametrize(("weights", "metric"), SETTINGS)
def test_matches_loop_oracle_with_exact_matches(weights: str, metric: str) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 3))
    X[5] = X[4]  # a duplicated training point with another label
    y = np.array([0, 1, 2] * 6 + [0, 1])
    y[4], y[5] = 0, 2
    # queries: training points (distance 0, some duplicated), scaled copies (cosine distance 0), fresh points
    Q = np.concatenate([X[[0, 4, 7]], 3.0 * X[[1, 9]], rng.normal(size=(4, 3))])
    for k in (1, 3, 5):
        classes, expected = oracle.predict_proba(X.tolist(), y.tolist(), Q.tolist(), k, weights, metric)
        clf = KNNClassifier(k, weights=weights, metric=metric, batch_size=3, block_size=4).fit(X, y)
        assert clf.classes_.tolist() == classes
        np.testing.assert_allclose(clf.predict_proba(Q), expected, rtol=0, atol=1e-12)
    # the duplicated point votes for both of its labels at distance 0
    clf = KNNClassifier(3, weights="distance", metric=metric).fit(X, y)
    assert clf.predict_proba(X[[4]]).tolist() == [[0.5, 0.0, 0.5]]


def test_duplicates_are_at_distance_zero_in_float32() -> None:
    # Large coordinates: the search's matrix-product distances in float32 are far from 0 for a duplicate.
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(30, 8)) * 1000).astype(np.float32)
    y = np.arange(30) % 3
    clf = KNNClassifier(5, weights="distance").fit(X, y)
    proba = clf.predict_proba(X)
    np.testing.assert_array_equal(proba, np.eye(3)[y])


def test_vote_ties_go_to_the_first_class() -> None:
    X = np.array([[0.0], [1.0], [2.0]])
    clf = KNNClassifier(2).fit(X, ["b", "a", "c"])
    # query 0.5: neighbours 0 (b) and 1 (a), one vote each: "a" comes first in classes_
    assert clf.predict(np.array([[0.5]])).tolist() == ["a"]


def test_inside_pipeline_and_cross_val_score() -> None:
    X, y = _blobs(4, n=150)
    ours = cross_val_score(make_pipeline(StandardScaler(), KNNClassifier(5, weights="distance")), X, y, cv=3)
    theirs = cross_val_score(
        make_pipeline(StandardScaler(), KNeighborsClassifier(5, weights="distance", algorithm="brute")), X, y, cv=3
    )
    np.testing.assert_array_equal(ours, theirs)
    assert ours.mean() > 0.5


def test_params_and_clone() -> None:
    encoder = nn.Linear(3, 2)
    clf = KNNClassifier(3, weights="distance", metric="cosine", encoder=encoder, batch_size=7)
    assert clf.get_params() == {
        "n_neighbors": 3,
        "weights": "distance",
        "metric": "cosine",
        "encoder": encoder,
        "batch_size": 7,
        "block_size": 4096,
    }
    copy = clone(clf)
    assert copy.get_params()["n_neighbors"] == 3 and copy.encoder is not encoder
    assert torch.equal(copy.encoder.weight, encoder.weight)
    assert clf.set_params(n_neighbors=1, weights="uniform") is clf
    assert (clf.n_neighbors, clf.weights) == (1, "uniform")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_passes_sklearn_check_estimator() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(KNNClassifier(), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed


class _Counting(nn.Module):
    """A linear encoder that records the batch sizes and modes it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled()))
        return self.linear(x)


def test_encoder_embeds_raw_inputs_in_batches() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(25, 4))
    y = rng.integers(0, 3, 25)
    Q = rng.normal(size=(11, 4))
    encoder = _Counting()
    clf = KNNClassifier(3, weights="distance", encoder=encoder, batch_size=10).fit(X, y)
    assert encoder.calls == [(10, False, False), (10, False, False), (5, False, False)]
    assert encoder.training  # mode restored
    with torch.no_grad():
        emb_x = encoder.linear(torch.from_numpy(X).float())
        emb_q = encoder.linear(torch.from_numpy(Q).float())
    direct = KNNClassifier(3, weights="distance").fit(emb_x, y)
    np.testing.assert_allclose(clf.predict_proba(Q), direct.predict_proba(emb_q), atol=1e-6)  # float32 batches
    assert clf.n_features_in_ == 3
    assert cross_val_score(KNNClassifier(3, encoder=_Counting()), X, y, cv=2).shape == (2,)


class _TextEncoder(nn.Module):
    """Embeds a list of texts by their counts of a few letters."""

    def forward(self, texts: list[str]) -> Tensor:
        return torch.tensor([[t.count(c) + 0.0 for c in "abc"] for t in texts])


def test_encoder_over_texts() -> None:
    texts = ["aaa", "aab", "bbb", "bbc", "ccc", "cca"]
    labels = ["a", "a", "b", "b", "c", "c"]
    clf = KNNClassifier(1, encoder=_TextEncoder(), batch_size=4).fit(texts, labels)
    assert clf.predict(["aaaa", "bccc", "bbbb"]).tolist() == ["a", "c", "b"]


def test_tensor_inputs() -> None:
    X, y = _blobs(6)
    clf = KNNClassifier(5).fit(torch.from_numpy(X), torch.from_numpy(y))
    ref = KNNClassifier(5).fit(X, y)
    np.testing.assert_array_equal(clf.predict(torch.from_numpy(X[:20])), ref.predict(X[:20]))
    assert clf.n_features_in_ == 6


def test_errors() -> None:
    X, y = _blobs(7, n=10)
    with pytest.raises(NotFittedError):
        KNNClassifier().predict(X)
    with pytest.raises(
        ValueError, match=r"KNNClassifier: `weights` must be one of 'uniform', 'distance', got 'distanc'"
    ):
        KNNClassifier(weights="distanc").fit(X, y)
    with pytest.raises(ValueError, match=r"KNNClassifier: `metric` must be one of 'euclidean', 'cosine', got 'l2'\."):
        KNNClassifier(metric="l2").fit(X, y)
    with pytest.raises(ValueError, match=r"KNNClassifier: `n_neighbors` must be an integer >= 1, got 0\."):
        KNNClassifier(0).fit(X, y)
    with pytest.raises(
        ValueError,
        match=r"KNNClassifier: `n_neighbors` must be <= the number of training samples \(n_samples = 10\), got 11\.",
    ):
        KNNClassifier(11).fit(X, y).predict(X)
    with pytest.raises(TypeError, match=r"KNNClassifier: `encoder` must be an nn.Module or None, got function\."):
        KNNClassifier(encoder=lambda x: x).fit(X, y)  # type: ignore[arg-type]
    clf = KNNClassifier(3).fit(torch.from_numpy(X), y)
    with pytest.raises(ValueError, match=r"KNNClassifier: `X` must be of embedding size 6 like the training data"):
        clf.predict(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"KNNClassifier: `y` must be one label per sample \(10\), got 9 labels\."):
        KNNClassifier(3).fit(torch.from_numpy(X), y[:9])
    with pytest.raises(ValueError, match=r"Unknown label type"):
        KNNClassifier(3).fit(X, np.linspace(0, 1, 10))
