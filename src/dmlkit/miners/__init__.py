"""Miners (layer 2): choose informative pairs or triplets; pass their output as a loss's ``indices_tuple``."""

from __future__ import annotations

from ..registry import Registry
from .base import BaseMiner, BaseTupleMiner
from .triplet_margin import TripletMarginMiner, TripletType

__all__ = ["BaseMiner", "BaseTupleMiner", "TripletMarginMiner", "TripletType", "MINERS"]

MINERS: Registry[BaseMiner] = Registry(
    "miner",
    {
        "triplet_margin": TripletMarginMiner,
    },
)
