"""Loss + miner pairs: the miner's cost (and the size of what it mines) dominates these cases.

Classes are looked up on the library's package first and, for dmlkit, on their own module, so a case runs
as soon as its modules exist. A case appears only when every dmlkit module it needs exists.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# family -> class name -> dmlkit module (under dmlkit.<family>)
_MODULES = {
    "losses": {
        "TripletMarginLoss": "triplet_margin",
        "ContrastiveLoss": "contrastive",
        "MultiSimilarityLoss": "multi_similarity",
        "AngularLoss": "angular",
    },
    "miners": {
        "AngularMiner": "angular",
        "BatchEasyHardMiner": "batch_easy_hard",
        "BatchHardMiner": "batch_hard",
        "DistanceWeightedMiner": "distance_weighted",
        "HDCMiner": "hdc",
        "MultiSimilarityMiner": "multi_similarity",
        "PairMarginMiner": "pair_margin",
        "UniformHistogramMiner": "uniform_histogram",
    },
}


def _cls(lib: Any, family: str, name: str) -> Any:
    found = getattr(getattr(lib, family), name, None)
    if found is not None:
        return found
    return getattr(importlib.import_module(f"dmlkit.{family}.{_MODULES[family][name]}"), name)


def _exists(family: str, name: str) -> bool:
    return importlib.util.find_spec(f"dmlkit.{family}.{_MODULES[family][name]}") is not None


def _case(loss: str, loss_args: tuple, miner: str, miner_args: tuple) -> Any:
    def build(lib: Any) -> tuple[Any, Any]:
        return _cls(lib, "losses", loss)(*loss_args), _cls(lib, "miners", miner)(*miner_args)

    return build


_PAIRS = [
    ("TripletMarginLoss", (0.1,), "BatchHardMiner", ()),
    ("TripletMarginLoss", (0.1,), "BatchEasyHardMiner", ("easy", "semihard")),
    ("TripletMarginLoss", (0.1,), "DistanceWeightedMiner", ()),
    ("TripletMarginLoss", (0.1,), "MultiSimilarityMiner", ()),
    ("ContrastiveLoss", (), "PairMarginMiner", ()),
    ("ContrastiveLoss", (), "HDCMiner", ()),
    ("ContrastiveLoss", (), "UniformHistogramMiner", ()),
    ("ContrastiveLoss", (), "BatchEasyHardMiner", ("hard", "all")),
    ("MultiSimilarityLoss", (), "MultiSimilarityMiner", ()),
    ("AngularLoss", (), "AngularMiner", ()),
]


def _label(name: str, args: tuple) -> str:
    return name + (f"({', '.join(repr(a) for a in args)})" if args else "")


CASES = {
    f"{_label(loss, loss_args)} + {_label(miner, miner_args)}": _case(loss, loss_args, miner, miner_args)
    for loss, loss_args, miner, miner_args in _PAIRS
    if _exists("losses", loss) and _exists("miners", miner)
}

__all__ = ["CASES"]
