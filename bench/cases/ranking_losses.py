"""Ranking, histogram and margin-regulariser losses: FastAP, Smooth-AP, PNP, histogram, ranked list, dynamic
soft margin and threshold-consistent margin."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "FastAPLoss": "fast_ap",
    "SmoothAPLoss": "smooth_ap",
    "PNPLoss": "pnp",
    "HistogramLoss": "histogram",
    "RankedListLoss": "ranked_list",
    "DynamicSoftMarginLoss": "dynamic_soft_margin",
    "ThresholdConsistentMarginLoss": "threshold_consistent_margin",
}


def _loss(lib: Any, name: str, **kwargs: Any) -> Any:
    """``lib.losses.<name>``, or dmlkit's class from its own module while the package does not export it yet."""
    cls = getattr(lib.losses, name, None)
    if cls is None:
        cls = getattr(importlib.import_module(f"{lib.__name__}.losses.{_MODULES[name]}"), name)
    return cls(**kwargs)


CASES = {
    "FastAPLoss": lambda lib: (_loss(lib, "FastAPLoss"), None),
    "SmoothAPLoss": lambda lib: (_loss(lib, "SmoothAPLoss"), None),
    "PNPLoss": lambda lib: (_loss(lib, "PNPLoss"), None),
    "PNPLoss(variant=Dq)": lambda lib: (_loss(lib, "PNPLoss", variant="Dq"), None),
    "HistogramLoss": lambda lib: (_loss(lib, "HistogramLoss"), None),
    "RankedListLoss(margin=0.4, Tn=10)": lambda lib: (_loss(lib, "RankedListLoss", margin=0.4, Tn=10), None),
    "DynamicSoftMarginLoss": lambda lib: (_loss(lib, "DynamicSoftMarginLoss"), None),
    "ThresholdConsistentMarginLoss": lambda lib: (_loss(lib, "ThresholdConsistentMarginLoss"), None),
    "ThresholdConsistentMarginLoss + TripletMarginMiner(semihard)": lambda lib: (
        _loss(lib, "ThresholdConsistentMarginLoss"),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
}

__all__: list[Any] = ["CASES"]
