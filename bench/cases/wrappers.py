"""Loss wrappers: cross-batch memory (all pairs, and with a miner inside) and a weighted sum of two losses.

The memory holds 4096 embeddings; the harness feeds the same batch at every repeat, so after the first call the
memory holds copies of it (and, at batch 4096, exactly one copy, whose own-copy pairs are excluded).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "ContrastiveLoss": "dmlkit.losses.contrastive",
    "CrossBatchMemory": "dmlkit.wrappers",
    "MultipleLosses": "dmlkit.wrappers",
}


def _cls(lib: Any, name: str) -> Any:
    cls = getattr(lib.losses, name, None)
    if cls is None:  # not re-exported from dmlkit.losses yet: take it from its module
        cls = getattr(importlib.import_module(_MODULES[name]), name)
    return cls


def _xbm(lib: Any, loss: Any, miner: Any = None) -> Any:
    return _cls(lib, "CrossBatchMemory")(loss, embedding_size=128, memory_size=4096, miner=miner)


CASES = {
    "CrossBatchMemory(ContrastiveLoss, memory 4096)": lambda lib: (_xbm(lib, _cls(lib, "ContrastiveLoss")()), None),
    "CrossBatchMemory(TripletMarginLoss, TripletMarginMiner(semihard) inside, memory 4096)": lambda lib: (
        _xbm(lib, lib.losses.TripletMarginLoss(margin=0.1), lib.miners.TripletMarginMiner(0.2, "semihard")),
        None,
    ),
    "MultipleLosses([TripletMarginLoss, ContrastiveLoss], weights [1, 0.5])": lambda lib: (
        _cls(lib, "MultipleLosses")(
            [lib.losses.TripletMarginLoss(margin=0.1), _cls(lib, "ContrastiveLoss")()], weights=[1, 0.5]
        ),
        None,
    ),
}

__all__: list[Any] = ["CASES"]
