from __future__ import annotations

from typing import Any

CASES = {
    "TripletMarginLoss": lambda lib: (lib.losses.TripletMarginLoss(margin=0.1), None),
    "TripletMarginLoss + TripletMarginMiner(semihard)": lambda lib: (
        lib.losses.TripletMarginLoss(margin=0.1),
        lib.miners.TripletMarginMiner(0.2, "semihard"),
    ),
}

__all__: list[Any] = ["CASES"]
