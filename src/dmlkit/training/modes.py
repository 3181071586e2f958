"""PML's trainer classes, as :class:`~.trainer.Trainer` with a fixed training step.

Each class only chooses the :mod:`~.steps` plug-in; every other argument is the :class:`~.trainer.Trainer`'s
(PML's ``BaseTrainer`` arguments, plus dmlkit's keyword-only extras). Differences from PML: the default
``dataloader_num_workers`` is 0 (PML: 2) and the default ``data_device`` is the trunk's device (PML: CUDA when
available), so nothing moves behind the user's back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .steps import AdversarialStep, CascadedStep, ClassifierStep, MetricLossStep, TwoStreamStep
from .trainer import Trainer

__all__ = [
    "MetricLossOnly",
    "TrainWithClassifier",
    "CascadedEmbeddings",
    "TwoStreamMetricLoss",
    "DeepAdversarialMetricLearning",
]


class MetricLossOnly(Trainer):
    """A metric loss on the embeddings, optionally with a miner (:class:`~.steps.MetricLossStep`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, step=MetricLossStep(), **kwargs)


class TrainWithClassifier(Trainer):
    """A metric loss plus a classifier loss on ``models["classifier"]`` (:class:`~.steps.ClassifierStep`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, step=ClassifierStep(), **kwargs)


class CascadedEmbeddings(Trainer):
    """Losses on consecutive slices of the embedding (:class:`~.steps.CascadedStep`; Yuan et al., 2017)."""

    def __init__(self, embedding_sizes: Sequence[int], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, step=CascadedStep(embedding_sizes), **kwargs)
        self.embedding_sizes = list(embedding_sizes)


class TwoStreamMetricLoss(Trainer):
    """Anchors from one stream, positives/negatives from the other (:class:`~.steps.TwoStreamStep`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, step=TwoStreamStep(), **kwargs)


class DeepAdversarialMetricLearning(Trainer):
    """Synthetic hard negatives from a generator (:class:`~.steps.AdversarialStep`; Duan et al., 2018)."""

    def __init__(
        self,
        metric_alone_epochs: int = 0,
        g_alone_epochs: int = 0,
        g_triplets_per_anchor: int | str = 100,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        step = AdversarialStep(metric_alone_epochs, g_alone_epochs, g_triplets_per_anchor)
        super().__init__(*args, step=step, **kwargs)
        self.metric_alone_epochs = metric_alone_epochs
        self.g_alone_epochs = g_alone_epochs
        self.g_triplets_per_anchor = g_triplets_per_anchor
