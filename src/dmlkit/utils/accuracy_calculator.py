"""pytorch-metric-learning's ``utils.accuracy_calculator`` path, backed by :mod:`dmlkit.evaluation`.

Example:
    >>> from dmlkit.utils.accuracy_calculator import AccuracyCalculator
    >>> AccuracyCalculator(include=("precision_at_1",)).get_accuracy(torch.tensor([[0.0], [0.1], [5.0], [5.2]]),
    ...                                                              torch.tensor([0, 0, 1, 1]))
    {'precision_at_1': 1.0}
"""

from __future__ import annotations

from ..evaluation import AccuracyCalculator

__all__ = ["AccuracyCalculator"]
