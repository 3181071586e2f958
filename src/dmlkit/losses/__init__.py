"""Metric losses (layer 2). Every loss is called as ``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)``."""

from __future__ import annotations

from ..registry import Registry
from .ada_face import AdaFaceLoss
from .alignment import AlignmentLoss
from .angular import AngularLoss
from .ap_loss import APLoss
from .arc_face import ArcFaceLoss
from .barlow_twins import BarlowTwinsLoss
from .base import BaseMetricLossFunction
from .circle import CircleLoss
from .class_weights import BaseClassWeightLoss
from .contrastive import ContrastiveLoss
from .cos_face import CosFaceLoss
from .dynamic_soft_margin import DynamicSoftMarginLoss
from .fast_ap import FastAPLoss
from .generalized_lifted_structure import GeneralizedLiftedStructureLoss
from .histogram import HistogramLoss
from .instance import InstanceLoss
from .intra_pair_variance import IntraPairVarianceLoss
from .large_margin_softmax import LargeMarginSoftmaxLoss
from .lifted_structure import LiftedStructureLoss
from .manifold import ManifoldLoss
from .margin import MarginLoss
from .multi_similarity import MultiSimilarityLoss
from .n_pairs import NPairsLoss
from .nca import NCALoss
from .normalized_softmax import NormalizedSoftmaxLoss
from .ntxent import NTXentLoss
from .p2s_grad import P2SGradLoss
from .pnp import PNPLoss, PNPVariant
from .proxy_anchor import ProxyAnchorLoss
from .proxy_nca import ProxyNCALoss
from .ranked_list import RankedListLoss
from .sigmoid import SigmoidLoss
from .smooth_ap import SmoothAPLoss
from .snr_contrastive import SignalToNoiseRatioContrastiveLoss
from .soft_triple import SoftTripleLoss
from .sphere_face import SphereFaceLoss
from .sub_center_arc_face import SubCenterArcFaceLoss
from .supcon import SupConLoss
from .threshold_consistent_margin import ThresholdConsistentMarginLoss
from .triplet_margin import TripletMarginLoss
from .tuplet_margin import TupletMarginLoss
from .uniformity import UniformityLoss
from .vicreg import VICRegLoss

__all__ = [
    "BaseMetricLossFunction",
    "BaseClassWeightLoss",
    "ManifoldLoss",
    "P2SGradLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "AdaFaceLoss",
    "ArcFaceLoss",
    "CosFaceLoss",
    "LargeMarginSoftmaxLoss",
    "NormalizedSoftmaxLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
    "AngularLoss",
    "CircleLoss",
    "ContrastiveLoss",
    "DynamicSoftMarginLoss",
    "FastAPLoss",
    "GeneralizedLiftedStructureLoss",
    "HistogramLoss",
    "InstanceLoss",
    "IntraPairVarianceLoss",
    "LiftedStructureLoss",
    "MarginLoss",
    "MultiSimilarityLoss",
    "NCALoss",
    "NPairsLoss",
    "NTXentLoss",
    "PNPLoss",
    "RankedListLoss",
    "SignalToNoiseRatioContrastiveLoss",
    "SmoothAPLoss",
    "SupConLoss",
    "ThresholdConsistentMarginLoss",
    "TripletMarginLoss",
    "TupletMarginLoss",
    "VICRegLoss",
    "SigmoidLoss",
    "AlignmentLoss",
    "UniformityLoss",
    "BarlowTwinsLoss",
    "APLoss",
    "PNPVariant",
    "LOSSES",
    # loss wrappers, re-exported lazily from dmlkit.wrappers under pytorch-metric-learning's import path
    "CrossBatchMemory",
    "SelfSupervisedLoss",
    "MultipleLosses",
]

LOSSES: Registry[BaseMetricLossFunction] = Registry(
    "loss",
    {
        "angular": AngularLoss,
        "manifold": ManifoldLoss,
        "p2s_grad": P2SGradLoss,
        "proxy_anchor": ProxyAnchorLoss,
        "proxy_nca": ProxyNCALoss,
        "soft_triple": SoftTripleLoss,
        "ada_face": AdaFaceLoss,
        "arc_face": ArcFaceLoss,
        "cos_face": CosFaceLoss,
        "large_margin_softmax": LargeMarginSoftmaxLoss,
        "normalized_softmax": NormalizedSoftmaxLoss,
        "sphere_face": SphereFaceLoss,
        "sub_center_arc_face": SubCenterArcFaceLoss,
        "circle": CircleLoss,
        "contrastive": ContrastiveLoss,
        "dynamic_soft_margin": DynamicSoftMarginLoss,
        "fast_ap": FastAPLoss,
        "generalized_lifted_structure": GeneralizedLiftedStructureLoss,
        "histogram": HistogramLoss,
        "instance": InstanceLoss,
        "intra_pair_variance": IntraPairVarianceLoss,
        "lifted_structure": LiftedStructureLoss,
        "margin": MarginLoss,
        "multi_similarity": MultiSimilarityLoss,
        "n_pairs": NPairsLoss,
        "nca": NCALoss,
        "ntxent": NTXentLoss,
        "pnp": PNPLoss,
        "ranked_list": RankedListLoss,
        "signal_to_noise_ratio_contrastive": SignalToNoiseRatioContrastiveLoss,
        "smooth_ap": SmoothAPLoss,
        "sup_con": SupConLoss,
        "threshold_consistent_margin": ThresholdConsistentMarginLoss,
        "triplet_margin": TripletMarginLoss,
        "tuplet_margin": TupletMarginLoss,
        "vicreg": VICRegLoss,
        "sigmoid": SigmoidLoss,
        "alignment": AlignmentLoss,
        "uniformity": UniformityLoss,
        "barlow_twins": BarlowTwinsLoss,
        "ap": APLoss,
    },
)

_WRAPPERS = frozenset({"CrossBatchMemory", "SelfSupervisedLoss", "MultipleLosses"})


def __getattr__(name: str) -> object:
    # The wrappers live one layer up (dmlkit.wrappers); import them only when asked for by this path.
    if name in _WRAPPERS:
        from .. import wrappers

        return getattr(wrappers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
