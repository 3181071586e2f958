"""A configured training run: data, model, losses and optimizer from a :class:`TrainConfig`, trained by the
:class:`~.trainer.Trainer`, with retrieval on the unseen test classes before and after training."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from .._validation import message
from ..data import load_dataset, noisy_view, split_by_classes
from ..evaluation import retrieval_metrics
from ..losses import LOSSES
from ..losses.ntxent import NTXentLoss
from ..miners import MINERS
from ..samplers import DistributedMPerClassSampler, MPerClassSampler
from ..types import Pairs
from ..wrappers.distributed import DistributedLossWrapper, DistributedMinerWrapper, rank_and_world_size
from .components import OPTIMIZERS, SCHEDULERS, accepted_params, build_component
from .config import TrainConfig
from .models import build_model, fit_projections, projection_heads, training_width
from .steps import TrainingStep
from .trainer import Trainer, Validation

__all__ = [
    "TrainResult",
    "RunData",
    "embed",
    "evaluate",
    "indices_of_classes",
    "load_run_data",
    "model_spec",
    "train",
]

#: the retrieval metrics reported before and after training, in report order.
METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
#: data sets with an official train/test split: test classes come from the test split.
_SPLIT_DATASETS = ("mnist", "fashion_mnist")
#: flat feature vectors that are images: their shape as (channels, height, width), for crops and galleries.
IMAGE_SHAPES = {"digits": (1, 8, 8)}


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: the trained embedding network (in eval mode); the best epoch's weights when there is a
            validation set.
        optimizer: its optimizer, with its state.
        loss_fn: the metric loss module (it may hold learned parameters, e.g. proxies).
        before: retrieval metrics of the untrained model on the test classes (a model with
            :class:`~.models.PCAHead` layers is measured with them fitted on the training data, as after training).
        after: the same metrics after training.
        history: one entry per epoch: ``epoch``, mean ``loss`` (the total), mean ``instance_loss`` (the
            unweighted instance-discrimination term; ``None`` when it is off), mean number of ``mined`` tuples
            per batch (``None`` without a miner).
        raw_input: the same metrics on the input features themselves (no model), for context.
        num_train: training samples. num_test: test samples. seconds: wall time of the whole run.
        trainer: the trainer (per-iteration ``history``, ``eval_history``, ``best_epoch``...).
        test_embeddings: embeddings of the test set by the final model (for reports).
        num_input_shape: the shape of one input sample (rebuilds the model from a checkpoint).
        data: the run's training, validation and test parts (reports read the test images from it).

    Under ``torch.distributed`` only rank 0 measures retrieval: on the other processes ``before``, ``after``
    and ``raw_input`` are empty and ``test_embeddings`` is None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    num_train: int = 0
    num_test: int = 0
    seconds: float = 0.0
    raw_input: dict[str, float] = field(default_factory=dict)
    trainer: Trainer | None = None
    test_embeddings: Tensor | None = None
    num_input_shape: tuple[int, ...] = ()
    data: RunData | None = None


@dataclass
class RunData:
    """The class-disjoint parts of a configured data set; training labels are mapped to ``0..C-1``."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def embed(model: nn.Module, features: Tensor, batch_size: int = 1024, device: str | torch.device = "cpu") -> Tensor:
    """Embeddings of ``features`` computed in eval mode without gradients; the model's mode is restored.

    Example:
        >>> from dmlkit.training import MLP
        >>> model = MLP(4, hidden=(8,), out_features=2)
        >>> tuple(embed(model, torch.rand(10, 4), batch_size=3).shape)
        (10, 2)
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [model(chunk.to(device)) for chunk in features.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts).cpu()


def evaluate(
    model: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    distance: str = "euclidean",
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Retrieval metrics of the test set against itself (each query's own entry excluded).

    Returns:
        ``precision_at_1``, ``r_precision`` and ``mean_average_precision_at_r`` (Musgrave et al., 2020,
        "A Metric Learning Reality Check", arXiv:2003.08505).
    """
    emb = embed(model, features, batch_size, device)
    return _retrieval(emb, labels, distance)


def _retrieval(emb: Tensor, labels: Tensor, distance: str) -> dict[str, float]:
    metrics = retrieval_metrics(emb, labels, emb, labels, ref_includes_query=True, distance=distance)
    return {key: float(metrics[key]) for key in METRICS}


def load_run_data(config: TrainConfig) -> RunData:
    """Load the configured data set and cut it into training, validation and test classes.

    Example:
        >>> parts = load_run_data(TrainConfig())
        >>> sorted(set(parts.y_train.tolist())), len(parts.x_val), sorted(set(parts.y_test.tolist()))
        ([0, 1, 2, 3, 4], 0, [5, 6, 7, 8, 9])
    """
    data = config.data
    features, labels = load_dataset(data.name, root=data.root)
    test_features, test_labels = features, labels
    if data.name in _SPLIT_DATASETS:
        test_features, test_labels = load_dataset(data.name, root=data.root, split="test")
    train_idx = indices_of_classes(labels, data.train_classes, data.max_per_class)
    val_idx = indices_of_classes(labels, data.val_classes, data.max_per_class) if data.val_classes else train_idx[:0]
    test_idx = indices_of_classes(test_labels, data.test_classes, data.max_per_class)
    # Losses with one weight per class (proxies, softmax heads) need labels 0..C-1.
    train_classes = torch.tensor(sorted(set(data.train_classes)), dtype=labels.dtype)
    return RunData(
        x_train=features[train_idx],
        y_train=torch.searchsorted(train_classes, labels[train_idx]),
        x_val=features[val_idx],
        y_val=labels[val_idx],
        x_test=test_features[test_idx],
        y_test=test_labels[test_idx],
    )


def indices_of_classes(labels: Tensor, classes: list[int], cap: int | None) -> Tensor:
    """Indices of the samples of ``classes`` (in data order), at most ``cap`` per class (the first ones)."""
    (idx,) = split_by_classes(labels, [classes])
    if cap is None:
        return idx
    chosen = labels[idx]
    order = torch.argsort(chosen, stable=True)
    sorted_labels = chosen[order]
    rank = torch.arange(len(order)) - torch.searchsorted(sorted_labels, sorted_labels)
    return torch.sort(idx[order[rank < cap]]).values


class _MetricWithInstanceStep(TrainingStep):
    """The demo's step: the metric loss on a noisy view, plus NT-Xent between two noisy views of each sample."""

    losses = ("metric_loss", "instance_loss")
    miners = ("tuple_miner",)

    def __init__(
        self,
        noise: float,
        low: float,
        high: float,
        crop_scale: float | None = None,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        self.noise, self.low, self.high, self.crop_scale = noise, low, high, crop_scale
        self.image_shape = image_shape
        self.mined: dict[int, list[int]] = {}

    def __call__(self, trainer: Trainer, data: Any, labels: Tensor) -> dict[str, Tensor]:
        data = data.to(trainer.data_device)
        instance = trainer.weight_of("instance_loss") > 0
        view = self._view(data, trainer.generator) if instance else data
        emb = trainer.compute_embeddings(view)
        tuples = trainer.mine("tuple_miner", emb, labels)
        if tuples is not None:
            self.mined.setdefault(trainer.epoch, []).append(_count(tuples))
        out = {"metric_loss": trainer.loss_funcs["metric_loss"](emb, labels, tuples)}
        if instance:
            second = trainer.compute_embeddings(self._view(data, trainer.generator))
            # each sample's two views share a label that no other sample of the batch has (nor of another
            # process's batch: the instance loss may gather the batches of every process)
            first_id = rank_and_world_size()[0] * len(data)
            ids = torch.arange(first_id, first_id + len(data), device=emb.device).repeat(2)
            out["instance_loss"] = trainer.loss_funcs["instance_loss"](torch.cat([emb, second]), ids)
        return out

    def _view(self, data: Tensor, generator: torch.Generator) -> Tensor:
        flat_images = data.ndim == 2 and self.image_shape is not None
        if self.crop_scale is not None and (data.ndim == 4 or flat_images):
            from ..data.transforms import RandomResizedCrop

            images = data.reshape(len(data), *self.image_shape) if flat_images else data  # type: ignore[misc]
            crop = RandomResizedCrop(tuple(images.shape[-2:]), scale=(self.crop_scale, 1.0), generator=generator)
            data = crop(images).reshape(data.shape)
        return noisy_view(data, self.noise, generator=generator, low=self.low, high=self.high)


def train(
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    run_folder: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train an embedding network as ``config`` says and measure retrieval on the unseen test classes.

    The run is reproducible: the model's initialisation uses ``torch.manual_seed(config.seed)`` inside a
    forked random state (the caller's global generator is left untouched), ``MPerClassSampler`` draws
    batches from its own generator seeded with ``config.seed`` and the epoch, and the noise of the views
    comes from the trainer's generator seeded with ``config.seed``.

    A model with :class:`~.models.PCAHead` layers (``model.name: energy``) trains on its full-width features;
    after training the heads are fitted on the training data (:func:`~.models.fit_projections`), so the test
    embeddings and the saved model have ``model.embedding_size`` dimensions.

    With ``config.instance.weight > 0`` every batch is embedded twice, each time with fresh Gaussian pixel
    noise; the metric loss (and the miner) see the first view and ``weight * NTXentLoss`` treats the two views
    of each sample as its only positive pair (see :class:`~dmlkit.training.config.InstanceConfig`).

    Under ``torch.distributed`` (a process group initialised by the caller, as ``dmlkit train`` does under
    ``torchrun``), each of the ``N`` processes trains on its ``1/N`` of every batch of ``sampler.batch_size``
    (which must be a multiple of ``N * sampler.m``) drawn by :class:`~dmlkit.samplers.DistributedMPerClassSampler`,
    the losses and the miner see the whole batch (:class:`~dmlkit.wrappers.distributed.DistributedLossWrapper`),
    ``device="cuda"`` means each process's own GPU (``LOCAL_RANK``), and only rank 0 writes the run folder and
    measures retrieval. The batches and the gradients are those of one process; the random views of the
    instance term are drawn by each process for its own part.

    Args:
        config: the configuration; the ``dmlkit train`` demo when None.
        progress: show a progress bar with the loss and the throughput.
        run_folder: where checkpoints (``last.pt``, ``best.pt``) and logs (``train``/``eval`` ``.jsonl`` and
            ``.csv``) go; None: nowhere.
        resume: continue from ``run_folder/last.pt`` (the logs are cut back to that epoch).

    Example:
        >>> result = train(TrainConfig().apply_overrides(["epochs=1", "iterations_per_epoch=2"]), progress=False)
        >>> sorted(result.after), len(result.history)
        (['mean_average_precision_at_r', 'precision_at_1', 'r_precision'], 1)
    """
    config = TrainConfig() if config is None else config
    config.validate()
    if resume and run_folder is None:
        raise ValueError("train: resume=True needs the run_folder that holds last.pt.")
    start = time.perf_counter()
    rank, world = rank_and_world_size()
    device = _process_device(config.device, world)
    parts = load_run_data(config)
    eval_kwargs: dict[str, Any] = {
        "distance": config.evaluation.distance,
        "batch_size": config.evaluation.batch_size,
        "device": device,
    }
    num_classes = len(set(config.data.train_classes))
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        spec = model_spec(config, tuple(parts.x_train.shape[1:]))
        model = build_model(spec["name"], spec["in_shape"], spec["embedding_size"], spec["params"]).to(device)
        width = training_width(model, config.model.embedding_size)
        loss_fn = _build_loss(config, num_classes=num_classes, embedding_size=width).to(device)
        before: dict[str, float] = {}
        raw_input: dict[str, float] = {}
        if rank == 0:
            untrained = _with_fitted_projections(model, parts.x_train, config.evaluation.batch_size, device)
            before = evaluate(untrained, parts.x_test, parts.y_test, **eval_kwargs)
            raw_input = _retrieval(parts.x_test.flatten(1), parts.y_test, config.evaluation.distance)
        logger = None
        if run_folder is not None and rank == 0:
            from .logs import RunLogger

            logger = RunLogger(run_folder, tensorboard=config.output.tensorboard)
        trainer, step = _build_trainer(config, parts, model, loss_fn, device, progress, run_folder, logger)
        try:
            if resume:
                assert run_folder is not None
                checkpoint = Path(run_folder) / "last.pt"
                if not checkpoint.exists():
                    raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from.")
                trainer.load_checkpoint(checkpoint)  # read once: the logs are cut back to its epoch
                if logger is not None:
                    for stream in ("train", "eval"):
                        logger.truncate(stream, _up_to_epoch(trainer.epoch))
                trainer.train(start_epoch=trainer.epoch + 1, num_epochs=config.epochs)
            else:
                trainer.train(num_epochs=config.epochs)
        finally:
            if logger is not None:
                logger.close()
        best_file = None if run_folder is None else Path(run_folder) / "best.pt"
        if trainer.validation is not None and best_file is not None and best_file.exists() and rank == 0:
            best = torch.load(best_file, map_location=device, weights_only=True)
            model.load_state_dict(best["models"]["trunk"])
        fit_projections(model, parts.x_train, config.evaluation.batch_size, device)
        test_embeddings: Tensor | None = None
        after: dict[str, float] = {}
        if rank == 0:
            test_embeddings = embed(model, parts.x_test, config.evaluation.batch_size, device)
            after = _retrieval(test_embeddings, parts.y_test, config.evaluation.distance)
    model.eval()
    return TrainResult(
        model=model,
        optimizer=trainer.optimizers["trunk_optimizer"],
        loss_fn=loss_fn,
        before=before,
        after=after,
        history=_per_epoch(trainer.history, config.instance.weight > 0, step),
        num_train=len(parts.x_train),
        num_test=len(parts.x_test),
        seconds=time.perf_counter() - start,
        raw_input=raw_input,
        trainer=trainer,
        test_embeddings=test_embeddings,
        num_input_shape=tuple(parts.x_train.shape[1:]),
        data=parts,
    )


def _process_device(name: str, world: int) -> torch.device:
    """The configured device; with several processes, ``cuda`` without an index is this process's GPU."""
    device = torch.device(name)
    if world > 1 and device.type == "cuda" and device.index is None:
        local = os.environ.get("LOCAL_RANK")
        return torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
    return device


def _up_to_epoch(epoch: int) -> Any:
    """A log-record filter keeping the records of epochs ``<= epoch`` (the state a checkpoint resumes from)."""

    def keep(record: dict[str, Any]) -> bool:
        return int(record.get("epoch", 0)) <= epoch

    return keep


def model_spec(config: TrainConfig, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """:func:`~dmlkit.training.models.build_model`'s arguments for the configured model and input shape.

    Example:
        >>> model_spec(TrainConfig(), (64,))["params"]
        {'hidden': [128], 'normalize': True, 'batch_norm': False}
    """
    model = config.model
    if model.name == "mlp":
        params = {"hidden": list(model.hidden), "normalize": model.normalize, "batch_norm": model.batch_norm}
    elif model.name == "cnn":
        params = {"normalize": model.normalize}
    else:
        params = {}
    params.update(model.params)
    return {"name": model.name, "in_shape": list(in_shape), "embedding_size": model.embedding_size, "params": params}


def _build_trainer(
    config: TrainConfig,
    parts: RunData,
    model: nn.Module,
    loss_fn: nn.Module,
    device: torch.device,
    progress: bool,
    run_folder: str | Path | None,
    logger: Any,
) -> tuple[Trainer, _MetricWithInstanceStep]:
    rank, world = rank_and_world_size()
    miners: dict[str, Any] = {}
    if config.miner is not None:
        miners["tuple_miner"] = build_component(MINERS, config.miner.name, config.miner.params, "miner")
    instance = config.instance
    losses: dict[str, nn.Module] = {"metric_loss": loss_fn}
    if instance.weight > 0:
        losses["instance_loss"] = NTXentLoss(temperature=instance.temperature)
    if world > 1:
        # every loss and the miner see the batches of all processes: the gradients of one process
        losses = {name: DistributedLossWrapper(loss) for name, loss in losses.items()}  # type: ignore[arg-type]
        miners = {name: DistributedMinerWrapper(miner) for name, miner in miners.items()}
    parameters = list(model.parameters()) + list(loss_fn.parameters())
    optimizer = build_component(
        OPTIMIZERS, config.optimizer.name, config.optimizer.params, "optimizer", params=parameters
    )
    schedulers = {}
    if config.scheduler is not None:
        params = dict(config.scheduler.params)
        suffix = "_scheduler_by_epoch"
        if config.scheduler.name == "plateau":
            params.setdefault("mode", "max")  # the validation metric is maximised
            suffix = "_scheduler_by_plateau"
        schedulers["trunk" + suffix] = build_component(
            SCHEDULERS, config.scheduler.name, params, "scheduler", optimizer=optimizer
        )
    iterations = config.iterations_per_epoch or max(1, len(parts.x_train) // config.sampler.batch_size)
    batch_size = config.sampler.batch_size
    sampler: MPerClassSampler | DistributedMPerClassSampler
    if world > 1:
        if batch_size % (world * config.sampler.m):
            rule = f"a multiple of `sampler.m` * number of processes ({config.sampler.m} * {world})"
            raise ValueError(message("TrainConfig", "sampler.batch_size", rule, batch_size))
        batch_size //= world  # each process's part; together the batches of one process
        sampler = DistributedMPerClassSampler(
            parts.y_train,
            m=config.sampler.m,
            batch_size=batch_size,
            length_before_new_iter=iterations * batch_size,
            num_replicas=world,
            rank=rank,
            seed=config.seed,
        )
    else:
        sampler = MPerClassSampler(
            parts.y_train,
            m=config.sampler.m,
            batch_size=batch_size,
            length_before_new_iter=iterations * batch_size,
            seed=config.seed,
        )
    validation = None
    if len(parts.x_val):
        v = config.validation
        validation = Validation(
            TensorDataset(parts.x_val, parts.y_val),
            metric=v.metric,
            patience=v.patience,
            every=v.every,
            batch_size=config.evaluation.batch_size,
        )
    low, high = float(parts.x_train.min()), float(parts.x_train.max())
    step = _MetricWithInstanceStep(instance.noise, low, high, instance.crop_scale, IMAGE_SHAPES.get(config.data.name))
    trainer = Trainer(
        {"trunk": model},
        {"trunk_optimizer": optimizer},
        batch_size,
        losses,
        TensorDataset(parts.x_train, parts.y_train),
        mining_funcs=miners,
        iterations_per_epoch=iterations,
        data_device=device,
        loss_weights={"instance_loss": instance.weight} if instance.weight > 0 else None,
        sampler=sampler,
        lr_schedulers=schedulers,
        step=step,
        validation=validation,
        max_grad_norm=config.max_grad_norm,
        autocast_dtype=None if config.autocast is None else getattr(torch, config.autocast),
        seed=config.seed,
        checkpoint_dir=run_folder,
        logger=logger,
        progress=progress,
    )
    return trainer, step


def _per_epoch(records: list[dict[str, Any]], instance: bool, step: _MetricWithInstanceStep) -> list[dict[str, Any]]:
    """Mean loss, instance term and mined tuples of each epoch, from per-iteration records."""
    epochs: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        epochs.setdefault(int(record["epoch"]), []).append(record)
    out = []
    for epoch, rows in sorted(epochs.items()):
        counts = step.mined.get(epoch)  # None for epochs run before a resume, or without a miner
        out.append(
            {
                "epoch": epoch,
                "loss": sum(r["loss"] for r in rows) / len(rows),
                "instance_loss": sum(r["instance_loss"] for r in rows) / len(rows) if instance else None,
                "mined": sum(counts) / len(counts) if counts else None,
            }
        )
    return out


def _with_fitted_projections(model: nn.Module, x_train: Tensor, batch_size: int, device: torch.device) -> nn.Module:
    """``model`` itself, or, when it has :class:`~.models.PCAHead` layers, a copy with them fitted on ``x_train``."""
    if not projection_heads(model):
        return model
    return fit_projections(copy.deepcopy(model), x_train, batch_size, device)


def _build_loss(config: TrainConfig, num_classes: int, embedding_size: int) -> nn.Module:
    accepted = accepted_params(LOSSES[config.loss.name])
    sizes = {"num_classes": num_classes, "embedding_size": embedding_size}
    extra = {k: v for k, v in sizes.items() if k in accepted and k not in config.loss.params}
    return build_component(LOSSES, config.loss.name, config.loss.params, "loss", **extra)


def _count(tuples: tuple[Tensor, ...]) -> int:
    if isinstance(tuples, Pairs):
        return tuples.num_pos + tuples.num_neg
    return int(tuples[0].numel())
