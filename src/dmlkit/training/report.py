"""Plain-text reports of retrieval metrics before and after training."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["METRIC_LABELS", "format_raw_input", "format_report"]

#: how each metric is shown, in report order.
METRIC_LABELS: Mapping[str, str] = {
    "precision_at_1": "Precision@1",
    "r_precision": "R-Precision",
    "mean_average_precision_at_r": "MAP@R",
}


def format_report(before: Mapping[str, float], after: Mapping[str, float], title: str | None = None) -> str:
    """A table of each metric before and after training, and the change.

    Args:
        before: metrics of the untrained model (keys of :data:`METRIC_LABELS`; others are shown after them).
        after: the same metrics after training.
        title: an optional first line.

    Example:
        >>> print(format_report({"precision_at_1": 0.5, "mean_average_precision_at_r": 0.25},
        ...                     {"precision_at_1": 0.75, "mean_average_precision_at_r": 0.5}))
        metric       before   after   change
        Precision@1  0.5000  0.7500  +0.2500
        MAP@R        0.2500  0.5000  +0.2500
    """
    keys = [k for k in METRIC_LABELS if k in before or k in after]
    keys += [k for k in {**before, **after} if k not in METRIC_LABELS]
    rows = [("metric", "before", "after", "change")]
    for key in keys:
        b, a = before.get(key), after.get(key)
        change = f"{a - b:+.4f}" if a is not None and b is not None else "-"
        rows.append((METRIC_LABELS.get(key, key), _fmt(b), _fmt(a), change))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  " + "  ".join(f"{r[i]:>{widths[i]}}" for i in range(1, 4)) for r in rows]
    return "\n".join(([title] if title else []) + lines)


def format_raw_input(metrics: Mapping[str, float]) -> str:
    """One line with the metrics of the input features themselves, the reference an embedding should beat.

    Example:
        >>> print(format_raw_input({"precision_at_1": 0.99, "mean_average_precision_at_r": 0.61}))
        For reference, the raw input features (no model): Precision@1 0.9900, MAP@R 0.6100
    """
    keys = [k for k in METRIC_LABELS if k in metrics] + [k for k in metrics if k not in METRIC_LABELS]
    values = ", ".join(f"{METRIC_LABELS.get(k, k)} {_fmt(metrics[k])}" for k in keys)
    return f"For reference, the raw input features (no model): {values}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
