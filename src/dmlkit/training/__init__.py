"""Training pipeline (layer 5): the trainer and its modes, testers, configuration, models, logs, reports and the CLI.

``dmlkit train`` runs :func:`~dmlkit.training.loop.train` on the embedded :class:`TrainConfig` default and writes a
run folder (configuration, metrics, checkpoints, logs and an HTML report).
"""

from __future__ import annotations

from .components import OPTIMIZERS, SCHEDULERS, build_component
from .config import FORMAT_VERSION, ComponentConfig, TrainConfig, parse_override, parse_value
from .embedding_cache import EmbeddingCache, inputs_fingerprint, module_fingerprint
from .heads import LinearHead, MLPHead, SkipConnectionHead
from .html_report import write_html_report
from .logs import RunLogger
from .models import MLP, EnergyCNN, PCAHead, SmallCNN, build_model, fit_projections, import_module_class
from .modes import (
    CascadedEmbeddings,
    DeepAdversarialMetricLearning,
    MetricLossOnly,
    TrainWithClassifier,
    TwoStreamMetricLoss,
)
from .set_encoder import SetEncoder, attention_pool
from .steps import (
    AdversarialStep,
    CascadedStep,
    ClassifierStep,
    MetricLossStep,
    SelfSupervisedStep,
    TrainingStep,
    TwoStreamStep,
)
from .testers import (
    BaseTester,
    GlobalEmbeddingSpaceTester,
    GlobalTwoStreamEmbeddingSpaceTester,
    WithSameParentLabelTester,
)
from .trainer import CheckpointMismatchError, Trainer, Validation

__all__ = [
    "FORMAT_VERSION",
    "OPTIMIZERS",
    "SCHEDULERS",
    "MLP",
    "SmallCNN",
    "EnergyCNN",
    "PCAHead",
    "fit_projections",
    "build_model",
    "import_module_class",
    "ComponentConfig",
    "TrainConfig",
    "build_component",
    "parse_override",
    "parse_value",
    "Trainer",
    "Validation",
    "CheckpointMismatchError",
    "TrainingStep",
    "MetricLossStep",
    "ClassifierStep",
    "CascadedStep",
    "TwoStreamStep",
    "SelfSupervisedStep",
    "AdversarialStep",
    "MetricLossOnly",
    "TrainWithClassifier",
    "CascadedEmbeddings",
    "TwoStreamMetricLoss",
    "DeepAdversarialMetricLearning",
    "BaseTester",
    "GlobalEmbeddingSpaceTester",
    "WithSameParentLabelTester",
    "GlobalTwoStreamEmbeddingSpaceTester",
    "RunLogger",
    "write_html_report",
    "EmbeddingCache",
    "module_fingerprint",
    "inputs_fingerprint",
    "LinearHead",
    "MLPHead",
    "SkipConnectionHead",
    "SetEncoder",
    "attention_pool",
]
