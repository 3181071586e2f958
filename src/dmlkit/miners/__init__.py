"""Miners (layer 2): choose informative pairs or triplets; pass their output as a loss's ``indices_tuple``."""

from __future__ import annotations

from ..registry import Registry
from .angular import AngularMiner
from .base import BaseMiner, BaseTupleMiner
from .batch_easy_hard import BatchEasyHardMiner, MiningStrategy
from .batch_hard import BatchHardMiner
from .distance_weighted import DistanceWeightedMiner
from .embeddings_already_packaged_as_triplets import EmbeddingsAlreadyPackagedAsTriplets
from .hdc import HDCMiner
from .multi_similarity import MultiSimilarityMiner
from .pair_margin import PairMarginMiner
from .triplet_margin import TripletMarginMiner, TripletType
from .uniform_histogram import UniformHistogramMiner

__all__ = [
    "BaseMiner",
    "BaseTupleMiner",
    "AngularMiner",
    "BatchEasyHardMiner",
    "MiningStrategy",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "EmbeddingsAlreadyPackagedAsTriplets",
    "HDCMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "TripletMarginMiner",
    "TripletType",
    "UniformHistogramMiner",
    "MINERS",
]

MINERS: Registry[BaseMiner] = Registry(
    "miner",
    {
        "angular": AngularMiner,
        "batch_easy_hard": BatchEasyHardMiner,
        "batch_hard": BatchHardMiner,
        "distance_weighted": DistanceWeightedMiner,
        "embeddings_already_packaged_as_triplets": EmbeddingsAlreadyPackagedAsTriplets,
        "hdc": HDCMiner,
        "multi_similarity": MultiSimilarityMiner,
        "pair_margin": PairMarginMiner,
        "triplet_margin": TripletMarginMiner,
        "uniform_histogram": UniformHistogramMiner,
    },
)
