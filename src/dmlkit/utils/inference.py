"""pytorch-metric-learning's ``utils.inference`` path, backed by :mod:`dmlkit.index.inference`.

Example:
    >>> from dmlkit.utils.inference import MatchFinder
    >>> MatchFinder(threshold=0.5).is_match(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.2]]))
    True
"""

from __future__ import annotations

from ..evaluation.clustering import FaissKMeans
from ..index.inference import CustomKNN, FaissKNN, InferenceModel, MatchFinder

__all__ = ["CustomKNN", "FaissKMeans", "FaissKNN", "InferenceModel", "MatchFinder"]
