"""Pair-based losses: contrastive, SNR contrastive, lifted structure (plain and generalised), intra-pair
variance and circle, alone and on a miner's pairs."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "ContrastiveLoss": "contrastive",
    "SignalToNoiseRatioContrastiveLoss": "snr_contrastive",
    "LiftedStructureLoss": "lifted_structure",
    "GeneralizedLiftedStructureLoss": "generalized_lifted_structure",
    "IntraPairVarianceLoss": "intra_pair_variance",
    "CircleLoss": "circle",
}


def _loss(lib: Any, name: str, **kwargs: Any) -> Any:
    cls = getattr(lib.losses, name, None)
    if cls is None:  # not exported from the package yet: take it from its module
        cls = getattr(importlib.import_module(f"{lib.__name__}.losses.{_MODULES[name]}"), name)
    return cls(**kwargs)


CASES = {
    "ContrastiveLoss": lambda lib: (_loss(lib, "ContrastiveLoss"), None),
    "ContrastiveLoss + TripletMarginMiner(semihard)": lambda lib: (
        _loss(lib, "ContrastiveLoss"),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
    "SignalToNoiseRatioContrastiveLoss": lambda lib: (_loss(lib, "SignalToNoiseRatioContrastiveLoss"), None),
    "LiftedStructureLoss": lambda lib: (_loss(lib, "LiftedStructureLoss"), None),
    "GeneralizedLiftedStructureLoss": lambda lib: (_loss(lib, "GeneralizedLiftedStructureLoss"), None),
    "IntraPairVarianceLoss": lambda lib: (_loss(lib, "IntraPairVarianceLoss"), None),
    "CircleLoss": lambda lib: (_loss(lib, "CircleLoss"), None),
}

__all__: list[Any] = ["CASES"]
