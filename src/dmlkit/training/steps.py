"""Training steps: what one batch computes in each training mode, as a plug-in of :class:`~.trainer.Trainer`.

A step turns one batch into named, un-weighted losses; the trainer weighs, sums, back-propagates and steps the
optimizers. Each of PML's trainer modes is a step here, so a new mode is a new step, not a trainer subclass:

* :class:`MetricLossStep`: ``metric_loss`` on the embeddings, mined by ``tuple_miner`` when given.
* :class:`ClassifierStep`: the same plus ``classifier_loss`` on ``models["classifier"](embeddings)``.
* :class:`CascadedStep`: consecutive slices of the embedding, each with its own loss, miner and classifier
  (Yuan, Yang and Zhang, 2017, "Hard-Aware Deeply Cascaded Embedding", arXiv:1611.05720).
* :class:`TwoStreamStep`: anchors and positives/negatives from two streams; only cross-stream tuples.
* :class:`SelfSupervisedStep`: two random augmentations of each sample are its only positives (SimCLR,
  Chen et al., 2020, arXiv:2002.05709).
* :class:`AdversarialStep`: a generator synthesises hard negatives from real triplets (Duan et al., 2018,
  "Deep Adversarial Metric Learning", CVPR).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import at_least, message
from ..indices import convert_to_triplets
from ..types import Pairs, Triplets

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "TrainingStep",
    "MetricLossStep",
    "ClassifierStep",
    "CascadedStep",
    "TwoStreamStep",
    "SelfSupervisedStep",
    "AdversarialStep",
]


class TrainingStep:
    """What a training mode computes for one batch: subclass it and implement ``__call__``.

    Attributes:
        models, losses, miners: the keys this step reads from the trainer's ``models``, ``loss_funcs`` and
            ``mining_funcs`` (patterns ending in ``_*`` match numbered keys); ``required_models`` and
            ``required_losses`` must be present; ``extra_losses`` are weighted terms without a loss module.
    """

    models: tuple[str, ...] = ("trunk", "embedder")
    required_models: tuple[str, ...] = ("trunk",)
    losses: tuple[str, ...] = ("metric_loss",)
    required_losses: tuple[str, ...] = ("metric_loss",)
    miners: tuple[str, ...] = ("tuple_miner",)
    extra_losses: tuple[str, ...] = ()

    def unpack(self, batch: Any) -> tuple[Any, Tensor]:
        """``(data, labels)`` of one batch from the data loader: ``(data, labels, ...)`` or a dict."""
        return _pair_unpack(batch)

    def frozen_models(self, epoch: int) -> tuple[str, ...]:
        """Models that get no gradient (and whose optimizers do not step) in ``epoch``; none by default."""
        return ()

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        """The named losses of one batch (before weighting); a loss whose weight is 0 may be left out."""
        raise NotImplementedError


def _pair_unpack(batch: Any) -> tuple[Any, Tensor]:
    if isinstance(batch, Mapping):
        return batch["data"], batch["label"]
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            "Trainer: each batch must be (data, labels) (or a dict with 'data' and 'label'); pass "
            f"data_and_label_getter to unpack other layouts, got {type(batch).__name__}."
        )
    return batch[0], batch[1]


def _metric_loss(trainer: Trainer, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
    if "metric_loss" not in trainer.loss_funcs or trainer.weight_of("metric_loss") <= 0:
        return {}
    tuples = trainer.mine("tuple_miner", embeddings, labels)
    return {"metric_loss": trainer.loss_funcs["metric_loss"](embeddings, labels, tuples)}


def _classifier_loss(trainer: Trainer, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
    if "classifier" not in trainer.models or trainer.weight_of("classifier_loss") <= 0:
        return {}
    logits = trainer.models["classifier"](embeddings)
    return {"classifier_loss": trainer.loss_funcs["classifier_loss"](logits, labels)}


class MetricLossStep(TrainingStep):
    """Metric loss only (PML's ``MetricLossOnly``): ``metric_loss(embeddings, labels, tuple_miner(...))``.

    Example:
        >>> MetricLossStep().required_losses
        ('metric_loss',)
    """

    miners = ("tuple_miner", "subset_batch_miner")

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        return _metric_loss(trainer, trainer.compute_embeddings(data), labels)


class ClassifierStep(TrainingStep):
    """Metric loss plus a classifier loss on ``models["classifier"](embeddings)`` (PML's ``TrainWithClassifier``).

    Example:
        >>> ClassifierStep().losses
        ('metric_loss', 'classifier_loss')
    """

    models = ("trunk", "embedder", "classifier")
    losses = ("metric_loss", "classifier_loss")
    required_losses = ()
    miners = ("tuple_miner", "subset_batch_miner")

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        embeddings = trainer.compute_embeddings(data)
        return {**_metric_loss(trainer, embeddings, labels), **_classifier_loss(trainer, embeddings, labels)}


class CascadedStep(TrainingStep):
    """Cascaded embeddings (Yuan, Yang and Zhang, 2017, arXiv:1611.05720; PML's ``CascadedEmbeddings``).

    The embedding is cut into consecutive slices of ``embedding_sizes``; slice ``i`` has ``metric_loss_i``,
    optionally ``tuple_miner_i`` (an :class:`~dmlkit.miners.HDCMiner` there is fed the previous slice's
    tuples, so each stage refines the harder subset) and ``classifier_i`` with ``classifier_loss_i``.

    Example:
        >>> CascadedStep([4, 8]).embedding_sizes
        [4, 8]
    """

    models = ("trunk", "embedder", "classifier_*")
    required_models = ("trunk",)
    losses = ("metric_loss_*", "classifier_loss_*")
    required_losses: tuple[str, ...] = ()
    miners = ("tuple_miner_*", "subset_batch_miner")

    def __init__(self, embedding_sizes: Sequence[int]) -> None:
        sizes = list(embedding_sizes)
        if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
            raise ValueError(message("CascadedStep", "embedding_sizes", "a non-empty list of positive ints", sizes))
        self.embedding_sizes = sizes

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        from ..miners import HDCMiner

        embeddings = trainer.compute_embeddings(data)
        if embeddings.shape[1] != sum(self.embedding_sizes):
            raise ValueError(
                message(
                    "CascadedStep",
                    "embedding_sizes",
                    f"sizes summing to the embedding width {embeddings.shape[1]}",
                    self.embedding_sizes,
                )
            )
        out: dict[str, Tensor] = {}
        tuples: Pairs | Triplets | None = None
        for i, part in enumerate(embeddings.split(self.embedding_sizes, dim=1)):
            miner = trainer.mining_funcs.get(f"tuple_miner_{i}")
            if isinstance(miner, HDCMiner):
                miner.set_idx_externally(tuples, labels)
                tuples = miner(part, labels)
                miner.reset_idx()
            elif miner is not None:
                tuples = miner(part, labels)
            else:
                tuples = None
            if f"metric_loss_{i}" in trainer.loss_funcs and trainer.weight_of(f"metric_loss_{i}") > 0:
                out[f"metric_loss_{i}"] = trainer.loss_funcs[f"metric_loss_{i}"](part, labels, tuples)
            classifier = trainer.models.get(f"classifier_{i}")
            if classifier is not None and trainer.weight_of(f"classifier_loss_{i}") > 0:
                out[f"classifier_loss_{i}"] = trainer.loss_funcs[f"classifier_loss_{i}"](classifier(part), labels)
        return out


class TwoStreamStep(TrainingStep):
    """Two streams: a batch is ``(anchors, positives_or_negatives, labels)`` (PML's ``TwoStreamMetricLoss``).

    Both streams are embedded by the same network; tuples are mined, or listed, only between an anchor of the
    first stream and a sample of the second, and the loss sees the two streams concatenated.

    Example:
        >>> TwoStreamStep().miners
        ('tuple_miner',)
    """

    def unpack(self, batch: Any) -> tuple[Any, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ValueError(
                "TwoStreamStep: each batch must be (anchors, positives_or_negatives, labels), "
                f"got {type(batch).__name__} of length {len(batch) if isinstance(batch, (tuple, list)) else '-'}."
            )
        return (batch[0], batch[1]), batch[2]

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        anchors, others = trainer.compute_embeddings(data[0]), trainer.compute_embeddings(data[1])
        if trainer.weight_of("metric_loss") <= 0:
            return {}
        # a separate labels object marks the second stream as a reference set: no anchor pairs with itself
        other_labels = labels.clone()
        miner = trainer.mining_funcs.get("tuple_miner")
        mined = None if miner is None else miner(anchors, labels, others, other_labels)
        shift = len(anchors)
        tuples: Pairs | Triplets
        if mined is not None and len(mined) == 4:  # a pair miner's pairs stay pairs, as in PML
            a1, p, a2, n = mined
            tuples = Pairs(a1, p + shift, a2, n + shift)
        else:
            a, p, n = convert_to_triplets(mined, labels, other_labels)
            tuples = Triplets(a, p + shift, n + shift)
        both = torch.cat([anchors, others])
        return {"metric_loss": trainer.loss_funcs["metric_loss"](both, torch.cat([labels, labels]), tuples)}


class SelfSupervisedStep(TrainingStep):
    """Two random augmentations of each sample form its only positive pair (SimCLR, arXiv:2002.05709).

    ``augment(data, generator)`` returns one random view of a batch; it is called twice per batch with the
    trainer's seeded generator, so runs are reproducible. The labels of the data set are ignored. The metric
    loss sees ``2N`` embeddings labelled ``[0..N-1, 0..N-1]``.

    Args:
        augment: the random view of a batch, ``augment(data, generator) -> data``.

    Example:
        >>> step = SelfSupervisedStep(lambda x, g: x + 0.1 * torch.randn(x.shape, generator=g))
        >>> step.required_losses
        ('metric_loss',)
    """

    def __init__(self, augment: Callable[[Any, torch.Generator], Any]) -> None:
        if not callable(augment):
            raise TypeError(message("SelfSupervisedStep", "augment", "a callable (data, generator) -> data", augment))
        self.augment = augment

    def unpack(self, batch: Any) -> tuple[Any, Tensor]:
        if isinstance(batch, Tensor):
            return batch, torch.zeros(len(batch), dtype=torch.long)
        return _pair_unpack(batch)

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        views = [self.augment(data, trainer.generator) for _ in range(2)]
        embeddings = torch.cat([trainer.compute_embeddings(v) for v in views])
        ids = torch.arange(len(embeddings) // 2, device=embeddings.device).repeat(2)
        if trainer.weight_of("metric_loss") <= 0:
            return {}
        tuples = trainer.mine("tuple_miner", embeddings, ids)
        return {"metric_loss": trainer.loss_funcs["metric_loss"](embeddings, ids, tuples)}


class AdversarialStep(TrainingStep):
    """Deep adversarial metric learning (Duan, Zheng, Lu and Zhou, 2018, CVPR; PML's ``DeepAdversarialMetricLearning``).

    A ``generator`` network maps the trunk outputs of a real triplet ``(a, p, n)`` (concatenated) to a synthetic
    negative ``n~``. The generator is trained to make ``n~`` close to the anchor (``g_hard_loss``), close to the
    real negative (``g_reg_loss``), and to violate the metric (``g_adv_loss``:
    ``[d(a, n~) - d(a, p) - margin]_+`` with the margin of the trainer's ``g_adv_loss``, which must be a
    :class:`~dmlkit.losses.TripletMarginLoss`). The embedder learns from real tuples (``metric_loss``,
    ``classifier_loss``) and from the synthetic triplets (``synth_loss``).

    Epochs ``1 .. metric_alone_epochs`` train only the metric part; the next ``g_alone_epochs`` only the
    generator; later epochs both. Losses switched off in an epoch are not computed.

    Args:
        metric_alone_epochs: leading epochs without the generator, ``>= 0``.
        g_alone_epochs: following epochs that train only the generator, ``>= 0``.
        g_triplets_per_anchor: real triplets drawn per anchor to feed the generator, ``>= 1``, or ``"all"``
            (every triplet of the batch).

    Example:
        >>> AdversarialStep(metric_alone_epochs=1).phase(1)
        'metric'
    """

    models = ("trunk", "embedder", "classifier", "generator")
    required_models = ("trunk", "generator")
    losses = ("metric_loss", "classifier_loss", "synth_loss", "g_adv_loss")
    required_losses = ("synth_loss", "g_adv_loss")
    miners = ("tuple_miner", "subset_batch_miner")
    extra_losses = ("g_hard_loss", "g_reg_loss")

    def __init__(
        self, metric_alone_epochs: int = 0, g_alone_epochs: int = 0, g_triplets_per_anchor: int | str = 100
    ) -> None:
        self.metric_alone_epochs = at_least("AdversarialStep", "metric_alone_epochs", metric_alone_epochs, 0)
        self.g_alone_epochs = at_least("AdversarialStep", "g_alone_epochs", g_alone_epochs, 0)
        self.g_triplets_per_anchor = (
            g_triplets_per_anchor
            if g_triplets_per_anchor == "all"
            else at_least("AdversarialStep", "g_triplets_per_anchor", g_triplets_per_anchor, 1)
        )

    def phase(self, epoch: int) -> str:
        """``"metric"``, ``"generator"`` or ``"both"``: what epoch ``epoch`` (counted from 1) trains."""
        if epoch <= self.metric_alone_epochs:
            return "metric"
        if epoch <= self.metric_alone_epochs + self.g_alone_epochs:
            return "generator"
        return "both"

    def frozen_models(self, epoch: int) -> tuple[str, ...]:
        """Models that get no gradient (and whose optimizers do not step) in ``epoch``."""
        phase = self.phase(epoch)
        return {"metric": ("generator",), "generator": ("trunk", "embedder", "classifier"), "both": ()}[phase]

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        phase = self.phase(trainer.epoch)
        trunk_out = trainer.trunk_output(data)
        out: dict[str, Tensor] = {}
        if phase != "generator":
            embeddings = trainer.final_embeddings(trunk_out)
            out.update(_metric_loss(trainer, embeddings, labels))
            out.update(_classifier_loss(trainer, embeddings, labels))
        if phase != "metric":
            out.update(self._synthetic_losses(trainer, trunk_out, labels, with_synth=phase == "both"))
        return out

    def _synthetic_losses(
        self, trainer: Trainer, trunk_out: Tensor, labels: Tensor, with_synth: bool
    ) -> dict[str, Tensor]:
        per_anchor = self.g_triplets_per_anchor
        a, p, n = convert_to_triplets(None, labels, t_per_anchor=per_anchor, generator=trainer.generator)
        if len(a) == 0:
            zero = trunk_out.sum() * 0
            return {"g_adv_loss": zero, "g_hard_loss": zero, "g_reg_loss": zero}
        real_a, real_p, real_n = trunk_out[a], trunk_out[p], trunk_out[n]
        synthetic = trainer.models["generator"](torch.cat([real_a, real_p, real_n], dim=1))
        # triplet t is rows 3t, 3t+1, 3t+2: anchor, positive, synthetic negative
        stacked = torch.stack([real_a, real_p, synthetic], dim=1).flatten(0, 1)
        final = trainer.final_embeddings(stacked)
        triplet_labels = torch.stack([labels[a], labels[p], labels[n]], dim=1).flatten()
        rows = torch.arange(len(a), device=final.device) * 3
        packaged = Triplets(rows, rows + 1, rows + 2)
        out = {
            "g_adv_loss": _reversed_triplet_loss(trainer.loss_funcs["g_adv_loss"], final, triplet_labels, packaged),
            "g_hard_loss": F.mse_loss(F.normalize(synthetic, dim=1), F.normalize(real_a, dim=1)),
            "g_reg_loss": F.mse_loss(F.normalize(synthetic, dim=1), F.normalize(real_n, dim=1)),
        }
        if with_synth:
            out["synth_loss"] = trainer.loss_funcs["synth_loss"](final, triplet_labels, packaged)
        return out


def _reversed_triplet_loss(loss: nn.Module, embeddings: Tensor, labels: Tensor, triplets: Triplets) -> Tensor:
    """The generator's adversarial term ``[d(a, n~) - d(a, p) - margin]_+`` (Duan et al., 2018, eq. 5).

    It is the triplet margin loss of ``(a, n~, p)`` (positive and negative swapped) with the margin negated:
    the term is zero once the synthetic negative is at least ``margin`` closer to the anchor than the positive.
    """
    import copy

    from ..losses import TripletMarginLoss

    if not isinstance(loss, TripletMarginLoss):
        raise TypeError(
            message("AdversarialStep", 'loss_funcs["g_adv_loss"]', "a TripletMarginLoss", type(loss).__name__)
        )
    reversed_loss = copy.copy(loss)
    reversed_loss.margin = -loss.margin
    a, p, n = triplets
    return reversed_loss(embeddings, labels, Triplets(a, n, p))
