"""Match-threshold calibration: brute-force oracle, scikit-learn cross-checks, hand-computed cases, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from dmlkit.distances import CosineSimilarity, LpDistance
from dmlkit.evaluation.thresholds import (
    ThresholdCalibration,
    ThresholdTarget,
    calibrate_threshold,
    calibrate_threshold_on_set,
    match_curve,
)
from tests.reference import thresholds as oracle

TARGETS = [
    ("accuracy", {}),
    ("f1", {}),
    ("precision", {"min_precision": 0.7}),
    ("tar_at_far", {"far": 0.2}),
    ("tar_at_far", {"far": 0.0}),
]


def _assert_close(got: ThresholdCalibration, expected: ThresholdCalibration) -> None:
    """Equal up to float64 rounding of the pair values (a block of a matrix product may round differently)."""
    for key, value in expected.as_dict().items():
        if isinstance(value, dict):
            assert got.as_dict()[key] == pytest.approx(value, abs=1e-12), key
        elif isinstance(value, float):
            assert got.as_dict()[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
        else:
            assert got.as_dict()[key] == value, key


def _pairs(seed: int, n: int = 60, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping genuine / impostor distances, rounded so that many values tie."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.4
    values = np.where(same, rng.normal(1.0, 0.5, n), rng.normal(1.8, 0.5, n))
    return np.round(values, decimals), same


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("higher_is_closer", [False, True])
@pytest.mark.parametrize(("target", "options"), TARGETS)
def test_matches_brute_force_oracle(seed: int, higher_is_closer: bool, target: str, options: dict) -> None:
    values, same = _pairs(seed)
    if higher_is_closer:
        values = -values
    expected = oracle.best(values.tolist(), same.tolist(), target, higher_is_closer, **options)
    assert expected is not None
    cal = calibrate_threshold(values, same, target, higher_is_closer=higher_is_closer, **options)
    threshold, s = expected
    assert cal.threshold == threshold
    assert cal.accuracy == s["accuracy"]
    assert cal.recall == s["recall"]
    assert cal.f1 == s["f1"]
    assert cal.far == s["far"]
    assert cal.frr == pytest.approx(1 - s["recall"], abs=1e-15)
    assert (math.isnan(cal.precision) and math.isnan(s["precision"])) or cal.precision == s["precision"]
    assert cal.target is ThresholdTarget(target)
    assert cal.roc_auc == pytest.approx(oracle.roc_auc(values.tolist(), same.tolist(), higher_is_closer), abs=1e-12)
    assert cal.eer == pytest.approx(oracle.eer(values.tolist(), same.tolist(), higher_is_closer), abs=1e-12)
    assert cal.eer_threshold == oracle.min_max_error_threshold(values.tolist(), same.tolist(), higher_is_closer)
    for level, tar in cal.tar_at_far.items():
        assert tar == oracle.tar_at_far(values.tolist(), same.tolist(), level, higher_is_closer)
        assert cal.fnmr_at_fmr[level] == pytest.approx(1 - tar, abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_metrics_agree_with_sklearn(seed: int) -> None:
    values, same = _pairs(seed, n=300, decimals=2)
    closeness = -values
    fpr, tpr, _ = roc_curve(same, closeness, drop_intermediate=False)
    curve = match_curve(values, same)
    np.testing.assert_allclose(curve.far, fpr, atol=1e-15)
    np.testing.assert_allclose(curve.tar, tpr, atol=1e-15)
    levels = (0.0, 0.01, 0.05, 0.3)
    for target, options in TARGETS:
        cal = calibrate_threshold(values, same, target, far_levels=levels, **options)
        assert cal.roc_auc == pytest.approx(roc_auc_score(same, closeness), abs=1e-12)
        predicted = cal.is_match(values).numpy()
        assert cal.accuracy == pytest.approx(accuracy_score(same, predicted), abs=1e-15)
        assert cal.precision == pytest.approx(precision_score(same, predicted), abs=1e-15)
        assert cal.recall == pytest.approx(recall_score(same, predicted), abs=1e-15)
        assert cal.f1 == pytest.approx(f1_score(same, predicted), abs=1e-15)
        for level in levels:
            assert cal.tar_at_far[level] == tpr[fpr <= level].max()


def test_eer_agrees_with_interpolated_sklearn_roc_without_ties() -> None:
    from scipy.optimize import brentq

    rng = np.random.default_rng(5)
    same = rng.random(400) < 0.5
    values = np.where(same, rng.normal(0.0, 1.0, 400), rng.normal(1.5, 1.0, 400))
    fpr, tpr, _ = roc_curve(same, -values, drop_intermediate=False)

    def gap(x: float) -> float:
        # FAR - FRR along the ROC polyline; vertical steps make it jump, brentq still brackets the crossing
        return x - (1.0 - float(np.interp(x, fpr, tpr)))

    crossing = brentq(gap, 0.0, 1.0, xtol=1e-14)
    assert calibrate_threshold(values, same).eer == pytest.approx(crossing, abs=1e-9)


def test_hand_computed_table() -> None:
    values = [0.2, 0.3, 0.35, 0.6, 0.7]
    same = [1, 1, 0, 1, 0]
    # accepts at each candidate (tp, fp): reject-all (0, 0), 0.2 (1, 0), 0.3 (2, 0), 0.35 (2, 1), 0.6 (3, 1),
    # 0.7 (3, 2); accuracy 2/5, 3/5, 4/5, 3/5, 4/5, 3/5: 0.3 is the strictest best.
    cal = calibrate_threshold(values, same)
    assert (cal.threshold, cal.accuracy, cal.precision, cal.recall, cal.far) == (0.3, 0.8, 1.0, 2 / 3, 0.0)
    # AUC: genuine 0.2, 0.3 beat both impostors, 0.6 beats 0.7 only: 5 of 6 pairs
    assert cal.roc_auc == pytest.approx(5 / 6, abs=1e-15)
    # F1 per candidate: 0, 2/4, 4/5, 4/6, 6/7, 6/8 -> 0.6 (F1 6/7)
    f1 = calibrate_threshold(values, same, "f1")
    assert (f1.threshold, f1.f1) == (0.6, 6 / 7)
    # precision >= 0.75: candidates 0.2 (1.0, recall 1/3), 0.3 (1.0, 2/3), 0.6 (0.75, 1.0) -> 0.6
    assert calibrate_threshold(values, same, "precision", min_precision=0.75).threshold == 0.6
    assert calibrate_threshold(values, same, "precision", min_precision=0.8).threshold == 0.3
    # FAR <= 0: the best TAR is 2/3 at 0.3; FAR <= 0.5 admits 0.6 (TAR 1)
    assert calibrate_threshold(values, same, "tar_at_far", far=0.0).threshold == 0.3
    assert calibrate_threshold(values, same, "tar_at_far", far=0.5).threshold == 0.6
    # ROC points (FAR, TAR): (0,0) (0,1/3) (0,2/3) (1/2,2/3) (1/2,1) (1,1); FAR - FRR crosses 0 between
    # (0, 2/3) (gap -1/3) and (1/2, 2/3) (gap 1/6): EER = 1/3 * 1/2 / (1/2) = 1/3
    assert cal.eer == pytest.approx(1 / 3, abs=1e-15)
    assert cal.eer_threshold == 0.3
    assert cal.tar_at_far == {0.001: 2 / 3, 0.01: 2 / 3, 0.1: 2 / 3}


def test_ties_are_accepted_together() -> None:
    # The tied value 0.5 holds a genuine and an impostor pair: no threshold separates them.
    curve = match_curve([0.1, 0.5, 0.5, 0.9], [True, True, False, False])
    assert curve.thresholds[1:].tolist() == [0.1, 0.5, 0.9]
    assert curve.true_accepts.tolist() == [0, 1, 2, 2]
    assert curve.false_accepts.tolist() == [0, 0, 1, 2]
    assert math.isnan(curve.precision[0])
    cal = calibrate_threshold([0.5, 0.5, 0.5, 0.5], [True, False, True, False])
    # one distinct value: reject all (accuracy 1/2) or accept all (1/2); the strictest wins
    assert cal.threshold < 0.5 and cal.accuracy == 0.5 and cal.recall == 0.0
    assert cal.roc_auc == 0.5 and cal.eer == 0.5
    assert not bool(cal.is_match([0.5]).item())


def test_reject_all_is_a_candidate() -> None:
    # One genuine pair among far-off impostors that sit closer: rejecting everything is most accurate.
    values = [0.9, 0.1, 0.2, 0.3, 0.4]
    same = [True, False, False, False, False]
    cal = calibrate_threshold(values, same)
    assert cal.threshold == math.nextafter(0.1, -math.inf)
    assert cal.accuracy == 0.8 and cal.recall == 0.0 and math.isnan(cal.precision)
    assert cal.roc_auc == 0.0
    sims = calibrate_threshold([-v for v in values], same, higher_is_closer=True)
    assert sims.threshold == math.nextafter(-0.1, math.inf)


def test_separable_pairs() -> None:
    cal = calibrate_threshold(
        torch.tensor([0.1, 0.2, 0.8, 0.9], dtype=torch.float64), torch.tensor([True, True, False, False])
    )
    assert (cal.threshold, cal.accuracy, cal.roc_auc, cal.eer, cal.far, cal.frr) == (0.2, 1.0, 1.0, 0.0, 0.0, 0.0)
    assert cal.num_matching == 2 and cal.num_non_matching == 2 and not cal.sampled


def test_accepts_tensors_lists_and_zero_one_labels() -> None:
    values, same = _pairs(0)
    reference = calibrate_threshold(values, same)
    assert calibrate_threshold(torch.from_numpy(values), torch.from_numpy(same)) == reference
    assert calibrate_threshold(values.tolist(), same.astype(int).tolist()) == reference
    assert calibrate_threshold(values, same.astype(np.float32)) == reference


def test_result_is_json_ready_and_feeds_match_finder() -> None:
    from dmlkit.index.inference import MatchFinder

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(40, 8)))
    labels = torch.from_numpy(rng.integers(0, 4, 40))
    x = x + 1.5 * torch.nn.functional.one_hot(labels, 8).double()
    cal = calibrate_threshold_on_set(x, labels)
    assert json.loads(json.dumps(cal.as_dict()))["target"] == "accuracy"
    finder = MatchFinder(threshold=cal.threshold)
    a, b = torch.triu_indices(40, 40, offset=1)
    predicted = finder.is_match(x[a], x[b])
    truth = (labels[a] == labels[b]).numpy()
    assert (predicted == truth).mean() == pytest.approx(cal.accuracy, abs=1e-12)


@pytest.mark.parametrize("distance", [None, LpDistance(), LpDistance(power=2, normalize_embeddings=False)])
def test_on_set_equals_explicit_pairs(distance: LpDistance | None) -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(23, 5)))
    labels = torch.from_numpy(rng.integers(0, 3, 23))
    measure = CosineSimilarity() if distance is None else distance
    values, same = [], []
    mat = measure(x)
    for i in range(23):
        for j in range(i + 1, 23):
            values.append(float(mat[i, j]))
            same.append(bool(labels[i] == labels[j]))
    for target, options in TARGETS:
        expected = calibrate_threshold(values, same, target, higher_is_closer=measure.higher_is_closer, **options)
        # block_size 30: one row per block, then the last rows; 10**6: everything in one block
        for block_size in (30, 10**6):
            got = calibrate_threshold_on_set(x, labels, target, distance=distance, block_size=block_size, **options)
            _assert_close(got, expected)


def test_on_set_samples_pairs_beyond_max_pairs() -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(30, 4)))
    labels = torch.from_numpy(rng.integers(0, 3, 30))
    distance = LpDistance(power=2)
    cal = calibrate_threshold_on_set(x, labels, distance=distance, max_pairs=200, seed=3, block_size=16)
    assert cal.sampled and cal.num_matching + cal.num_non_matching == 200
    again = calibrate_threshold_on_set(x, labels, distance=distance, max_pairs=200, seed=3)
    assert again == cal
    # The sampled values are entries of the full matrix: the threshold is one of them.
    assert float((distance(x) - cal.threshold).abs().min()) < 1e-12
    exact = calibrate_threshold_on_set(x, labels, distance=distance, max_pairs=435)
    assert not exact.sampled and exact.num_matching + exact.num_non_matching == 435


def test_degenerate_inputs_raise_clear_errors() -> None:
    with pytest.raises(
        ValueError,
        match=r"calibrate_threshold: `same` must be a mix of matching and non-matching pairs .*, "
        r"got 3 matching and 0 non-matching pairs\.",
    ):
        calibrate_threshold([0.1, 0.2, 0.3], [True, True, True])
    with pytest.raises(ValueError, match=r"got 0 matching and 2 non-matching pairs\."):
        calibrate_threshold([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"`values` must be a non-empty 1-D array, got shape \(0,\)\."):
        calibrate_threshold([], [])
    with pytest.raises(ValueError, match=r"`values` must be finite \(no NaN or Inf\), got 1 non-finite value\(s\)\."):
        calibrate_threshold([0.1, float("nan")], [True, False])
    with pytest.raises(
        ValueError, match=r"`same` must be a 1-D array with one entry per value \(2\), got shape \(3,\)"
    ):
        calibrate_threshold([0.1, 0.2], [True, False, True])
    with pytest.raises(ValueError, match=r"`same` must be boolean or 0/1 \(1 = the pair matches\), got the value -1\."):
        calibrate_threshold([0.1, 0.2], [1, -1])
    with pytest.raises(TypeError, match=r"`values` must be a 1-D array of real numbers, got dtype bool\."):
        calibrate_threshold([True, False], [True, False])
    with pytest.raises(ValueError, match=r"`target` must be one of 'accuracy', 'f1', 'precision', 'tar_at_far', "):
        calibrate_threshold([0.1, 0.2], [True, False], "acuracy")
    with pytest.raises(
        ValueError, match=r"`min_precision` must be a number in \(0, 1\] when target='precision', got None\."
    ):
        calibrate_threshold([0.1, 0.2], [True, False], "precision")
    with pytest.raises(ValueError, match=r"`far` must be a number in \[0, 1\] when target='tar_at_far', got None\."):
        calibrate_threshold([0.1, 0.2], [True, False], "tar_at_far")
    with pytest.raises(ValueError, match=r"`far` must be a number >= 0 and <= 1, got 1\.5\."):
        calibrate_threshold([0.1, 0.2], [True, False], "tar_at_far", far=1.5)
    with pytest.raises(ValueError, match=r"`far_levels` must be a number >= 0 and <= 1, got -0\.1\."):
        calibrate_threshold([0.1, 0.2], [True, False], far_levels=(0.1, -0.1))


def test_unreachable_precision_names_the_best() -> None:
    # precision per candidate: 0.1 -> 1/2 (tied pair), 0.2 -> 2/3, 0.3 -> 2/4
    with pytest.raises(
        ValueError,
        match=r"calibrate_threshold: `min_precision` must be at most the highest precision any threshold reaches "
        r"on these pairs \(0\.666667\), got 0\.9\.",
    ):
        calibrate_threshold([0.1, 0.1, 0.2, 0.3], [True, False, True, False], "precision", min_precision=0.9)


def test_on_set_errors() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"calibrate_threshold_on_set: `embeddings` must be at least 2 rows"):
        calibrate_threshold_on_set(x[:1], torch.tensor([0]))
    with pytest.raises(ValueError, match=r"got 6 matching and 0 non-matching pairs\."):
        calibrate_threshold_on_set(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"`distance` must be a BaseDistance or None, got str\."):
        calibrate_threshold_on_set(x, torch.tensor([0, 0, 1, 1]), distance="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`labels` must be of the same length as `embeddings` \(4\)"):
        calibrate_threshold_on_set(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`max_pairs` must be an integer >= 1, got 0\."):
        calibrate_threshold_on_set(x, torch.tensor([0, 0, 1, 1]), max_pairs=0)


def test_result_is_frozen() -> None:
    cal = calibrate_threshold([0.1, 0.9], [True, False])
    assert isinstance(cal, ThresholdCalibration)
    with pytest.raises(AttributeError):
        cal.threshold = 0.5  # type: ignore[misc]
