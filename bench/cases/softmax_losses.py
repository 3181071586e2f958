"""Benchmark cases for the softmax- and log-sum-exp-based pair losses."""

from __future__ import annotations

from typing import Any

CASES = {
    "MultiSimilarityLoss": lambda lib: (lib.losses.MultiSimilarityLoss(), None),
    "MultiSimilarityLoss + TripletMarginMiner(semihard)": lambda lib: (
        lib.losses.MultiSimilarityLoss(),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
    "NTXentLoss": lambda lib: (lib.losses.NTXentLoss(), None),
    "NTXentLoss + TripletMarginMiner(semihard)": lambda lib: (
        lib.losses.NTXentLoss(),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
    "SupConLoss": lambda lib: (lib.losses.SupConLoss(), None),
    "NCALoss": lambda lib: (lib.losses.NCALoss(), None),
    "NPairsLoss": lambda lib: (lib.losses.NPairsLoss(), None),
    "InstanceLoss": lambda lib: (lib.losses.InstanceLoss(), None),
    "TupletMarginLoss": lambda lib: (lib.losses.TupletMarginLoss(), None),
    "TupletMarginLoss + TripletMarginMiner(semihard)": lambda lib: (
        lib.losses.TupletMarginLoss(),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
}

__all__: list[Any] = ["CASES"]
