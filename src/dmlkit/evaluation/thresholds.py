"""Match / no-match thresholds: calibrate a distance (or similarity) threshold on labelled pairs.

A verification system declares two items a *match* when their distance is at most a threshold (or their
similarity at least a threshold). Given pairs labelled "same" (genuine) or "different" (impostor), every
distinct observed value is a candidate threshold; the counts of accepted genuine and impostor pairs at all
candidates come from one sort, so calibration costs ``O(n log n)`` for ``n`` pairs.

Vocabulary (biometrics, ISO/IEC 19795-1, and face verification, e.g. Wang et al., 2018, CosFace,
arXiv:1801.09414):

* TAR (true accept rate, recall) = accepted genuine pairs / genuine pairs; FRR = FNMR = ``1 - TAR``.
* FAR (false accept rate) = FMR = accepted impostor pairs / impostor pairs.
* ROC-AUC: area under the (FAR, TAR) curve (Fawcett, 2006, "An introduction to ROC analysis"), tied
  values counting one half, as in ``sklearn.metrics.roc_auc_score``.
* EER: the rate where FAR = FRR, linearly interpolated on the ROC curve.
* TAR@FAR = f: the highest TAR of a threshold whose FAR is at most ``f`` (no interpolation: a threshold
  that reaches it exists); FNMR@FMR = f is ``1 - TAR@FAR = f``.

Calibration targets follow metric-learn's ``calibrate_threshold`` (de Vazelhes, Carey, Tang, Vauquier and
Bellet, 2020, arXiv:1908.04710) and TF Similarity's ``calibrate()``: the threshold with the highest accuracy,
the highest F1, the highest recall at a precision of at least ``p``, or the highest TAR at a FAR of at most
``f``. Among equally good thresholds the strictest (fewest matches) wins. The returned threshold is a plain
float in the units of the values given, ready for a match finder's ``threshold``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import Described, check_choice, check_embeddings, check_labels, check_range, message
from ..distances import BaseDistance, CosineSimilarity

__all__ = [
    "ThresholdTarget",
    "MatchCurve",
    "ThresholdCalibration",
    "match_curve",
    "calibrate_threshold",
    "calibrate_threshold_on_set",
]

#: FAR levels reported by default for TAR@FAR and FNMR@FMR.
DEFAULT_FAR_LEVELS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)


class ThresholdTarget(str, enum.Enum):
    """What a calibrated threshold optimises.

    ``ACCURACY``: the fraction of pairs classified correctly. ``F1``: the harmonic mean of precision and
    recall of "match". ``PRECISION``: the highest recall whose precision is at least ``min_precision``.
    ``TAR_AT_FAR``: the highest true accept rate whose false accept rate is at most ``far``.
    """

    ACCURACY = "accuracy"
    F1 = "f1"
    PRECISION = "precision"
    TAR_AT_FAR = "tar_at_far"


class MatchCurve(NamedTuple):
    """The operating points of every candidate threshold, strictest first (float64 NumPy arrays).

    Point 0 rejects every pair (its threshold lies just beyond the closest value); point ``i >= 1`` accepts
    the pairs whose value is at least as close as ``thresholds[i]``, the ``i``-th distinct value from the
    closest. ``precision`` is NaN at point 0 (nothing accepted).
    """

    thresholds: np.ndarray
    true_accepts: np.ndarray
    false_accepts: np.ndarray
    tar: np.ndarray
    far: np.ndarray
    precision: np.ndarray
    accuracy: np.ndarray
    f1: np.ndarray
    num_matching: int
    num_non_matching: int
    higher_is_closer: bool


@dataclass(frozen=True)
class ThresholdCalibration:
    """A calibrated match threshold with its metrics on the calibration pairs.

    Pairs with ``value <= threshold`` match (``value >= threshold`` when ``higher_is_closer``).

    Attributes:
        threshold: the calibrated threshold, in the units of the values.
        target: what it optimises.
        higher_is_closer: whether the values are similarities.
        accuracy, precision, recall, f1: of "match" at the threshold (precision is NaN when nothing matches).
        far: false accept rate (FMR) at the threshold; ``frr`` = FNMR = ``1 - recall``.
        roc_auc: area under the ROC curve (independent of the threshold).
        eer: equal error rate; ``eer_threshold`` is the candidate whose ``max(FAR, FRR)`` is smallest.
        tar_at_far: ``{f: TAR@FAR=f}`` for each reported level; ``fnmr_at_fmr``: ``{f: 1 - TAR@FAR=f}``.
        num_matching, num_non_matching: the genuine and impostor pairs used.
        sampled: the pairs were a random sample of a labelled set's pairs.
    """

    threshold: float
    target: ThresholdTarget
    higher_is_closer: bool
    accuracy: float
    precision: float
    recall: float
    f1: float
    far: float
    frr: float
    roc_auc: float
    eer: float
    eer_threshold: float
    tar_at_far: dict[float, float] = field(default_factory=dict)
    fnmr_at_fmr: dict[float, float] = field(default_factory=dict)
    num_matching: int = 0
    num_non_matching: int = 0
    sampled: bool = False

    def is_match(self, values: Tensor | np.ndarray | Sequence[float]) -> Tensor:
        """Whether each value passes the threshold, as a boolean tensor.

        Example:
            >>> cal = calibrate_threshold([0.1, 0.2, 0.8, 0.9], [True, True, False, False])
            >>> cal.is_match(torch.tensor([0.15, 0.5])).tolist()
            [True, False]
        """
        x = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values, dtype=np.float64))
        return x >= self.threshold if self.higher_is_closer else x <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (the target as its string value)."""
        out = asdict(self)
        out["target"] = self.target.value
        return out


def _as_values(owner: str, arg: str, x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        array = x.detach().cpu().to(torch.float64).numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    else:
        array = np.asarray(x)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise TypeError(message(owner, arg, "a 1-D array of real numbers", Described(f"dtype {array.dtype}")))
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(message(owner, arg, "a non-empty 1-D array", Described(f"shape {array.shape}")))
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(message(owner, arg, "finite (no NaN or Inf)", Described(f"{bad} non-finite value(s)")))
    return array


def _as_same(owner: str, same: Any, size: int) -> np.ndarray:
    array = same.detach().cpu().numpy() if isinstance(same, Tensor) else np.asarray(same)
    if array.ndim != 1 or array.shape[0] != size:
        rule = f"a 1-D array with one entry per value ({size})"
        raise ValueError(message(owner, "same", rule, Described(f"shape {array.shape}")))
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise TypeError(message(owner, "same", "boolean or 0/1", Described(f"dtype {array.dtype}")))
        if not np.isin(array, (0, 1)).all():
            bad = array[~np.isin(array, (0, 1))][0].item()
            raise ValueError(
                message(owner, "same", "boolean or 0/1 (1 = the pair matches)", Described(f"the value {bad!r}"))
            )
        array = array == 1
    return array


def _curve(owner: str, values: np.ndarray, same: np.ndarray, higher_is_closer: bool) -> MatchCurve:
    num_matching = int(np.count_nonzero(same))
    num_non_matching = int(same.shape[0] - num_matching)
    if num_matching == 0 or num_non_matching == 0:
        raise ValueError(
            message(
                owner,
                "same",
                "a mix of matching and non-matching pairs (a threshold separates two kinds)",
                Described(f"{num_matching} matching and {num_non_matching} non-matching pairs"),
            )
        )
    closeness = values if higher_is_closer else -values
    order = np.argsort(-closeness, kind="stable")
    sorted_values = values[order]
    sorted_same = same[order]
    # the last position of each run of equal values: a threshold accepts a whole run or none of it
    ends = np.flatnonzero(np.append(sorted_values[1:] != sorted_values[:-1], True))
    tp = np.concatenate([[0], np.cumsum(sorted_same)[ends]]).astype(np.float64)
    fp = (ends + 1 - tp[1:]).astype(np.float64)
    fp = np.concatenate([[0.0], fp])
    beyond = np.nextafter(sorted_values[0], np.inf if higher_is_closer else -np.inf)
    thresholds = np.concatenate([[beyond], sorted_values[ends]])
    n = float(same.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    return MatchCurve(
        thresholds=thresholds,
        true_accepts=tp,
        false_accepts=fp,
        tar=tp / num_matching,
        far=fp / num_non_matching,
        precision=precision,
        accuracy=(tp + (num_non_matching - fp)) / n,
        f1=2 * tp / (tp + fp + num_matching),
        num_matching=num_matching,
        num_non_matching=num_non_matching,
        higher_is_closer=higher_is_closer,
    )


def match_curve(
    values: Tensor | np.ndarray | Sequence[float],
    same: Tensor | np.ndarray | Sequence[bool],
    *,
    higher_is_closer: bool = False,
) -> MatchCurve:
    """Every candidate threshold's accepts, TAR, FAR, precision, accuracy and F1, strictest first.

    Args:
        values: (n,) distances of the pairs (similarities when ``higher_is_closer``), finite.
        same: (n,) booleans (or 0/1): whether each pair matches; both kinds must occur.
        higher_is_closer: the values are similarities.

    Example:
        >>> curve = match_curve([0.1, 0.4, 0.4, 0.9], [True, True, False, False])
        >>> curve.thresholds[1:].tolist(), curve.tar.tolist(), curve.far.tolist()
        ([0.1, 0.4, 0.9], [0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0])
    """
    owner = "match_curve"
    array = _as_values(owner, "values", values)
    return _curve(owner, array, _as_same(owner, same, array.shape[0]), bool(higher_is_closer))


def _roc_auc(curve: MatchCurve) -> float:
    far = np.append(curve.far, 1.0)
    tar = np.append(curve.tar, 1.0)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def _eer(curve: MatchCurve) -> tuple[float, float]:
    """Equal error rate (interpolated) and the candidate threshold with the smallest ``max(FAR, FRR)``."""
    frr = 1.0 - curve.tar
    gap = curve.far - frr
    # gap is -1 at point 0 and +1 at the last point (everything accepted), and never decreases
    j = int(np.argmax(gap >= 0))
    lo, hi = gap[j - 1], gap[j]
    t = -lo / (hi - lo)
    eer = float(curve.far[j - 1] + t * (curve.far[j] - curve.far[j - 1]))
    best = j - 1 if frr[j - 1] <= curve.far[j] else j
    return eer, float(curve.thresholds[best])


def _tar_at_far(curve: MatchCurve, level: float) -> float:
    return float(curve.tar[curve.far <= level].max())


def _check_far_levels(owner: str, far_levels: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(far_levels)
    for level in levels:
        check_range(owner, "far_levels", level, low=0, high=1)
    return levels


def _calibrate(
    owner: str,
    curve: MatchCurve,
    target: ThresholdTarget | str,
    min_precision: float | None,
    far: float | None,
    far_levels: Sequence[float],
    sampled: bool,
) -> ThresholdCalibration:
    goal = check_choice(owner, "target", target, ThresholdTarget)
    levels = _check_far_levels(owner, far_levels)
    if goal is ThresholdTarget.ACCURACY:
        best = int(np.argmax(curve.accuracy))
    elif goal is ThresholdTarget.F1:
        best = int(np.argmax(curve.f1))
    elif goal is ThresholdTarget.PRECISION:
        if min_precision is None:
            raise ValueError(message(owner, "min_precision", "a number in (0, 1] when target='precision'", None))
        check_range(owner, "min_precision", min_precision, low=0, high=1, low_inclusive=False)
        feasible = np.nan_to_num(curve.precision, nan=-1.0) >= min_precision
        if not feasible.any():
            top = float(np.nanmax(curve.precision))
            rule = f"at most the highest precision any threshold reaches on these pairs ({top:.6g})"
            raise ValueError(message(owner, "min_precision", rule, min_precision))
        best = int(np.argmax(np.where(feasible, curve.tar, -1.0)))
    else:
        if far is None:
            raise ValueError(message(owner, "far", "a number in [0, 1] when target='tar_at_far'", None))
        check_range(owner, "far", far, low=0, high=1)
        best = int(np.argmax(np.where(curve.far <= far, curve.tar, -1.0)))
    eer, eer_threshold = _eer(curve)
    tar_levels = {level: _tar_at_far(curve, level) for level in levels}
    return ThresholdCalibration(
        threshold=float(curve.thresholds[best]),
        target=goal,
        higher_is_closer=curve.higher_is_closer,
        accuracy=float(curve.accuracy[best]),
        precision=float(curve.precision[best]),
        recall=float(curve.tar[best]),
        f1=float(curve.f1[best]),
        far=float(curve.far[best]),
        frr=float(1.0 - curve.tar[best]),
        roc_auc=_roc_auc(curve),
        eer=eer,
        eer_threshold=eer_threshold,
        tar_at_far=tar_levels,
        fnmr_at_fmr={level: 1.0 - tar for level, tar in tar_levels.items()},
        num_matching=curve.num_matching,
        num_non_matching=curve.num_non_matching,
        sampled=sampled,
    )


def calibrate_threshold(
    values: Tensor | np.ndarray | Sequence[float],
    same: Tensor | np.ndarray | Sequence[bool],
    target: ThresholdTarget | str = "accuracy",
    *,
    min_precision: float | None = None,
    far: float | None = None,
    higher_is_closer: bool = False,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
) -> ThresholdCalibration:
    """Calibrate a match threshold on labelled pairs (metric-learn's ``calibrate_threshold``).

    The candidates are every distinct value (a pair matches when its value is at most the threshold, at
    least it for similarities) and one threshold just beyond the closest value that rejects every pair;
    ties between equally good candidates go to the strictest. Tied values are accepted or rejected together.

    Args:
        values: (n,) distances of the pairs (similarities when ``higher_is_closer``), finite.
        same: (n,) booleans (or 0/1), True for a matching pair; both kinds must occur.
        target: ``"accuracy"``, ``"f1"``, ``"precision"`` (highest recall with precision
            ``>= min_precision``) or ``"tar_at_far"`` (highest TAR with FAR ``<= far``).
        min_precision: in (0, 1], for ``target="precision"``; it must be reachable.
        far: in [0, 1], for ``target="tar_at_far"``.
        higher_is_closer: the values are similarities.
        far_levels: the FAR levels (each in [0, 1]) reported in ``tar_at_far`` and ``fnmr_at_fmr``.

    Returns:
        A :class:`ThresholdCalibration`.

    Raises:
        ValueError: empty or non-finite values, ``same`` of another length, not 0/1, or all of one kind, a
            missing or unreachable ``min_precision``, a missing ``far``, an unknown target.

    Example:
        >>> cal = calibrate_threshold([0.2, 0.3, 0.35, 0.6, 0.7], [1, 1, 0, 1, 0], "accuracy")
        >>> cal.threshold, cal.accuracy, cal.roc_auc
        (0.3, 0.8, 0.8333333333333333)
    """
    owner = "calibrate_threshold"
    array = _as_values(owner, "values", values)
    curve = _curve(owner, array, _as_same(owner, same, array.shape[0]), bool(higher_is_closer))
    return _calibrate(owner, curve, target, min_precision, far, far_levels, sampled=False)


def calibrate_threshold_on_set(
    embeddings: Tensor,
    labels: Tensor,
    target: ThresholdTarget | str = "accuracy",
    *,
    distance: BaseDistance | None = None,
    min_precision: float | None = None,
    far: float | None = None,
    far_levels: Sequence[float] = DEFAULT_FAR_LEVELS,
    max_pairs: int = 10_000_000,
    seed: int = 0,
    block_size: int = 1 << 22,
) -> ThresholdCalibration:
    """Calibrate a match threshold on every pair of a labelled set: same label = match.

    The ``N * (N - 1) / 2`` unordered pairs are compared in row blocks of at most ``block_size`` matrix
    entries, so the full ``N x N`` matrix never exists; the pair values themselves (8 bytes and a flag each)
    are kept for the sort. Beyond ``max_pairs`` pairs (memory would grow as ``N^2``), ``max_pairs`` pairs
    ``(i, j), i != j`` are drawn uniformly at random with replacement (reproducible from ``seed``) and the
    result says ``sampled=True``.

    Args:
        embeddings: (N, d) finite floating-point embeddings.
        labels: (N,) integer labels; the set must hold matching and non-matching pairs.
        target, min_precision, far, far_levels: as in :func:`calibrate_threshold`.
        distance: how pairs are compared (its normalisation and power included); the default
            ``CosineSimilarity()`` is the default of a match finder, so its threshold carries over.
        max_pairs: the most pairs compared exactly, ``>= 1``.
        seed: seed of the pair sample.
        block_size: matrix entries per block, ``>= 1``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> cal = calibrate_threshold_on_set(x, torch.tensor([0, 0, 1, 1]))
        >>> cal.higher_is_closer, cal.accuracy, cal.num_matching, cal.num_non_matching
        (True, 1.0, 2, 4)
    """
    owner = "calibrate_threshold_on_set"
    check_embeddings(owner, embeddings)
    check_labels(owner, labels, embeddings.shape[0])
    check_range(owner, "max_pairs", max_pairs, low=1, integer=True)
    check_range(owner, "block_size", block_size, low=1, integer=True)
    check_range(owner, "seed", seed, low=0, integer=True)
    if distance is None:
        distance = CosineSimilarity()
    elif not isinstance(distance, BaseDistance):
        raise TypeError(message(owner, "distance", "a BaseDistance or None", Described(type(distance).__name__)))
    n = embeddings.shape[0]
    total = n * (n - 1) // 2
    if total == 0:
        raise ValueError(message(owner, "embeddings", "at least 2 rows (one pair)", Described(f"{n} row(s)")))
    labels = labels.to(embeddings.device)
    sampled = total > max_pairs
    with torch.no_grad():
        if sampled:
            values, same = _sampled_pairs(embeddings, labels, distance, max_pairs, seed, block_size)
        else:
            values, same = _all_pairs(embeddings, labels, distance, block_size)
    curve = _curve(owner, values, same, distance.higher_is_closer)
    return _calibrate(owner, curve, target, min_precision, far, far_levels, sampled=sampled)


def _all_pairs(
    embeddings: Tensor, labels: Tensor, distance: BaseDistance, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    n = embeddings.shape[0]
    rows = max(1, block_size // n)
    columns = torch.arange(n, device=embeddings.device)
    values, same = [], []
    for start in range(0, n - 1, rows):
        stop = min(n - 1, start + rows)
        mat = distance(embeddings[start:stop], embeddings)
        upper = columns[None, :] > torch.arange(start, stop, device=embeddings.device)[:, None]
        values.append(mat[upper].to(torch.float64).cpu())
        same.append((labels[start:stop, None] == labels[None, :])[upper].cpu())
    return torch.cat(values).numpy(), torch.cat(same).numpy()


def _sampled_pairs(
    embeddings: Tensor, labels: Tensor, distance: BaseDistance, count: int, seed: int, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    n = embeddings.shape[0]
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, n, (count,), generator=generator)
    second = torch.randint(0, n - 1, (count,), generator=generator)
    second += (second >= first).long()  # uniform over the other n - 1 rows
    first, second = first.to(embeddings.device), second.to(embeddings.device)
    rows = max(1, block_size // max(1, embeddings.shape[1]))
    values = []
    for start in range(0, count, rows):
        a = distance.maybe_normalize(embeddings[first[start : start + rows]])
        b = distance.maybe_normalize(embeddings[second[start : start + rows]])
        pair = distance.pairwise_distance(a, b)
        if distance.power != 1:
            pair = pair**distance.power
        values.append(pair.to(torch.float64).cpu())
    same = (labels[first] == labels[second]).cpu()
    return torch.cat(values).numpy(), same.numpy()
