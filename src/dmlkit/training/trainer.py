"""The trainer: one loop for every training mode, with checkpoints that resume exactly.

The mode (metric loss only, with a classifier, cascaded, two-stream, self-supervised, adversarial) is a
:class:`~.steps.TrainingStep` plug-in; everything else (data loading, label mapping, mixed precision, loss
weights, gradient clipping, optimizers, schedulers, frozen models, validation, early stopping, best-model
tracking, checkpoints, logs, progress) is here once. The constructor takes PML's ``BaseTrainer`` arguments.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, Subset

from .._atomic import atomic_write
from .._validation import at_least, close_matches_hint, message
from ..errors import CorruptFileError
from ..wrappers.distributed import all_gather, broadcast_from_rank_0, rank_and_world_size
from .steps import MetricLossStep, TrainingStep

__all__ = ["Trainer", "Validation", "CheckpointMismatchError", "TRAINER_CHECKPOINT_VERSION"]

_OWNER = "Trainer"
#: the version of the files :meth:`Trainer.save_checkpoint` writes.
TRAINER_CHECKPOINT_VERSION = 1
_SCHEDULER_SUFFIXES = {
    "iteration": "_scheduler_by_iteration",
    "epoch": "_scheduler_by_epoch",
    "plateau": "_scheduler_by_plateau",
}


class CheckpointMismatchError(ValueError):
    """A checkpoint that is readable but does not fit this trainer (other models, optimizers or shapes)."""


class _Logger(Protocol):
    def log(self, stream: str, record: Mapping[str, Any]) -> None: ...


class Validation:
    """Evaluation on a validation set after every ``every`` epochs, with early stopping and best-model tracking.

    The validation embeddings are compared with themselves (each query's own entry excluded) by an
    :class:`~dmlkit.evaluation.AccuracyCalculator`; ``metric`` is the one that decides the best epoch and
    early stopping (MAP@R by default: Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check",
    arXiv:2003.08505).

    Args:
        dataset: the validation set, batches unpacked like the training batches.
        metric: the metric to maximise; a key the calculator returns.
        patience: stop after this many evaluations without improvement (None: never stop early).
        every: evaluate after every ``every`` epochs, ``>= 1``.
        calculator: the calculator (default: ``AccuracyCalculator(include=(metric, "precision_at_1",
            "r_precision"), k="max_bin_count")``).
        batch_size: embedding batch size.
        min_delta: an improvement must exceed this, ``>= 0``.

    Example:
        >>> Validation(torch.utils.data.TensorDataset(torch.rand(4, 2), torch.tensor([0, 0, 1, 1]))).metric
        'mean_average_precision_at_r'
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        metric: str = "mean_average_precision_at_r",
        patience: int | None = None,
        every: int = 1,
        calculator: Any = None,
        batch_size: int = 256,
        min_delta: float = 0.0,
    ) -> None:
        self.dataset = dataset
        self.metric = metric
        self.patience = None if patience is None else at_least("Validation", "patience", patience, 1)
        self.every = at_least("Validation", "every", every, 1)
        self.batch_size = at_least("Validation", "batch_size", batch_size, 1)
        self.min_delta = at_least("Validation", "min_delta", min_delta, 0.0)
        if calculator is None:
            from ..evaluation import AccuracyCalculator

            metrics = tuple(dict.fromkeys((metric, "precision_at_1", "r_precision", "mean_average_precision_at_r")))
            calculator = AccuracyCalculator(include=metrics, k="max_bin_count")
        self.calculator = calculator


class Trainer:
    """Trains an embedding network with metric (and classifier) losses; PML's trainer arguments, one class.

    Dictionaries are keyed as in PML: ``models`` (``trunk``, ``embedder``, ``classifier``...),
    ``optimizers`` (``<model or loss>_optimizer``), ``loss_funcs`` (``metric_loss``, ``classifier_loss``...),
    ``mining_funcs`` (``tuple_miner``, ``subset_batch_miner``), ``lr_schedulers``
    (``<model or loss>_scheduler_by_iteration`` / ``_by_epoch`` / ``_by_plateau``), ``gradient_clippers``
    (``<name>_grad_clipper``: callables). The ``step`` decides the mode (default: metric loss only). Unknown
    or missing keys raise ``KeyError`` naming the allowed ones.

    Reproducibility and resuming: batches come from one stream over the whole run, pass ``k`` over the loader
    ordered from ``(seed, k)`` (``set_epoch(k + 1)`` on samplers that have it; a seeded shuffle otherwise).
    An epoch of ``iterations_per_epoch`` batches shorter than the loader leaves off where the next goes on, as
    in pytorch-metric-learning; a ``BatchSampler`` given as ``sampler`` makes the batches itself. Random
    choices inside a step use :attr:`generator`. A checkpoint written at the end of an epoch holds the models,
    optimizers, schedulers, losses (their parameters: proxies), the generator and torch's global random state,
    the validation state and the history, so ``train(..., resume=path)`` after an interruption ends with the
    same weights as an uninterrupted run.

    Under ``torch.distributed`` (e.g. ``torchrun``; the process group initialised before :meth:`train`) every
    process runs the same trainer on its own batches of ``batch_size``: rank 0's weights are copied to every
    process at the start, parameter gradients are averaged over processes after each backward pass (the
    models stay plain modules, so checkpoints are the same as in one process), model buffers (batch-norm
    statistics) follow rank 0's before each step, a sampler without ``num_replicas`` is cut so that process
    ``r`` takes rows ``[r * batch_size, (r + 1) * batch_size)`` of each global batch of ``world_size *
    batch_size`` of its stream (with :class:`~dmlkit.samplers.DistributedMPerClassSampler`, each process
    draws its own part), validation embeds a part of the validation set on each process and gathers the
    embeddings once, and only rank 0 writes checkpoints, logs and the progress bar. A loss that should see
    the global batch is wrapped in :class:`~dmlkit.wrappers.distributed.DistributedLossWrapper` (and its
    miner in ``DistributedMinerWrapper``); unwrapped, each process's loss sees its own batch.

    Args:
        models: ``nn.Module`` s by name; ``embedder`` defaults to the identity (added to the given dict too,
            as pytorch-metric-learning does, so ``models["embedder"]`` works afterwards).
        optimizers: optimizers by ``<name>_optimizer``.
        batch_size: batch size of the training loader.
        loss_funcs: losses by name.
        dataset: the training set; items ``(data, label)`` (``label`` may be a row of hierarchy levels).
        mining_funcs: miners by name.
        iterations_per_epoch: batches per epoch (default: one pass of the loader, set when training starts).
        data_device: device the batches are moved to (default: the trunk's device).
        dtype: floating dtype the data are cast to (default: unchanged).
        loss_weights: weight of each named loss (default 1); a loss of weight 0 is not computed.
        sampler: a sampler of dataset indices (e.g. :class:`~dmlkit.samplers.MPerClassSampler`); default: a
            seeded shuffle.
        collate_fn: the loader's collate function.
        lr_schedulers, gradient_clippers: see above.
        freeze_these: names of models or losses that are not trained (no gradient, eval mode, no optimizer step).
        freeze_trunk_batchnorm: keep the trunk's batch-norm layers in eval mode (running statistics frozen).
        label_hierarchy_level: which column of 2-D labels to train on.
        dataloader_num_workers: loader worker processes.
        data_and_label_getter: ``batch -> (data, labels)`` (default: the step's own unpacking).
        dataset_labels: all labels of the dataset, which ``set_min_label_to_zero`` maps to ``0..C-1`` in sorted order.
        set_min_label_to_zero: map labels to ``0..C-1`` (from ``dataset_labels`` or from ``dataset.labels``).
        end_of_iteration_hook: ``hook(trainer)`` after every iteration.
        end_of_epoch_hook: ``hook(trainer)`` after every epoch; returning ``False`` stops training.
        step: the training mode (:mod:`dmlkit.training.steps`).
        validation: evaluation, early stopping and best-model tracking (:class:`Validation`).
        max_grad_norm: clip the global gradient norm of all trained parameters to this value (None: off).
        autocast_dtype: run forward passes under ``torch.autocast`` with this dtype (``torch.bfloat16`` on
            CPU, ``torch.float16`` on GPU); None: full precision. With ``torch.float16`` the loss is scaled by a
            ``torch.amp.GradScaler`` (Micikevicius et al., 2018, arXiv:1710.03740) so that small gradients do not
            flush to zero; steps whose gradients overflow are skipped and the scale lowered.
        seed: seeds the loader order and :attr:`generator`; given, it also seeds torch's global generator at the
            first epoch. None (the default): drawn from torch's global generator when the trainer is built, so
            ``torch.manual_seed`` before building it sets every random choice, as with pytorch-metric-learning's
            trainers, and the global generator is left to the caller. The seed is kept in checkpoints.
        checkpoint_dir: write ``last.pt`` after every epoch and ``best.pt`` at each validation improvement.
        logger: receives ``log("train", record)`` per iteration and ``log("eval", record)`` per evaluation
            (e.g. :class:`~dmlkit.training.logs.RunLogger`).
        progress: show a tqdm progress bar with the loss and the throughput.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from dmlkit.losses import ContrastiveLoss
        >>> data = TensorDataset(torch.randn(32, 4), torch.arange(4).repeat(8))
        >>> trunk = torch.nn.Linear(4, 3)
        >>> trainer = Trainer({"trunk": trunk}, {"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1)},
        ...                   batch_size=8, loss_funcs={"metric_loss": ContrastiveLoss()}, dataset=data,
        ...                   progress=False)
        >>> trainer.train(num_epochs=2)
        >>> trainer.epoch, len(trainer.history)
        (2, 8)
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        batch_size: int,
        loss_funcs: Mapping[str, nn.Module],
        dataset: Dataset[Any],
        mining_funcs: Mapping[str, Callable[..., Any]] | None = None,
        iterations_per_epoch: int | None = None,
        data_device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        loss_weights: Mapping[str, float] | None = None,
        sampler: Sampler[int] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        lr_schedulers: Mapping[str, Any] | None = None,
        gradient_clippers: Mapping[str, Callable[[], Any]] | None = None,
        freeze_these: Sequence[str] = (),
        freeze_trunk_batchnorm: bool = False,
        label_hierarchy_level: int = 0,
        dataloader_num_workers: int = 0,
        data_and_label_getter: Callable[[Any], tuple[Any, Tensor]] | None = None,
        dataset_labels: Sequence[int] | Tensor | np.ndarray | None = None,
        set_min_label_to_zero: bool = False,
        end_of_iteration_hook: Callable[[Trainer], Any] | None = None,
        end_of_epoch_hook: Callable[[Trainer], Any] | None = None,
        *,
        step: TrainingStep | None = None,
        validation: Validation | None = None,
        max_grad_norm: float | None = None,
        autocast_dtype: torch.dtype | None = None,
        seed: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        logger: _Logger | None = None,
        progress: bool = True,
    ) -> None:
        self.step: TrainingStep = MetricLossStep() if step is None else step
        self.models: dict[str, nn.Module] = dict(models)
        if "embedder" not in self.models:
            self.models["embedder"] = nn.Identity()
            if isinstance(models, dict):  # also in the caller's dict, as PML does: scripts read it back
                models["embedder"] = self.models["embedder"]
        self.optimizers = dict(optimizers)
        self.loss_funcs: dict[str, nn.Module] = dict(loss_funcs)
        self.mining_funcs: dict[str, Callable[..., Any]] = dict(mining_funcs or {})
        self.lr_schedulers = dict(lr_schedulers or {})
        self.gradient_clippers = dict(gradient_clippers or {})
        self.batch_size = at_least(_OWNER, "batch_size", batch_size, 1)
        self.dataset = dataset
        self.iterations_per_epoch = iterations_per_epoch
        if iterations_per_epoch is not None:
            at_least(_OWNER, "iterations_per_epoch", iterations_per_epoch, 1)
        self.dtype = dtype
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.freeze_these = tuple(freeze_these)
        self.freeze_trunk_batchnorm = freeze_trunk_batchnorm
        self.label_hierarchy_level = label_hierarchy_level
        self.dataloader_num_workers = at_least(_OWNER, "dataloader_num_workers", dataloader_num_workers, 0)
        self.data_and_label_getter = data_and_label_getter or self.step.unpack
        self.end_of_iteration_hook = end_of_iteration_hook
        self.end_of_epoch_hook = end_of_epoch_hook
        self.validation = validation
        self.max_grad_norm = None if max_grad_norm is None else at_least(_OWNER, "max_grad_norm", max_grad_norm, 0.0)
        self.autocast_dtype = autocast_dtype
        #: whether train() seeds torch's global generator (only when a seed was given)
        self._seeds_global = seed is not None
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else at_least(_OWNER, "seed", seed, 0)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.logger = logger
        self.progress = progress
        self._check_keys()
        weights = {name: 1.0 for name in self.loss_names}
        for name, value in (loss_weights or {}).items():
            if name not in weights:
                raise KeyError(f"Trainer: unknown loss_weights key {name!r}.{close_matches_hint(name, weights)} "
                               f"Known: {', '.join(weights)}.")
            weights[name] = float(value)
        self.loss_weights = weights
        self.data_device = torch.device(data_device) if data_device is not None else _device_of(self.models["trunk"])
        #: loss scaling for float16 autocast (None otherwise)
        self.grad_scaler = torch.amp.GradScaler(self.data_device.type) if autocast_dtype == torch.float16 else None
        self.label_map = _label_map(dataset, dataset_labels, set_min_label_to_zero, label_hierarchy_level)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.iteration = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.eval_history: list[dict[str, Any]] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.evaluations_since_best = 0
        self.stopped_early = False
        #: the last batch's losses as numbers: each named loss before its weight, and "total_loss", the weighted
        #: sum that was back-propagated (pytorch-metric-learning keeps the weighted tensors under the names)
        self.losses: dict[str, Any] = {}
        self._frozen: set[str] = set(self.freeze_these)
        # the parameters this trainer switched off, by module: unfreezing switches back on only these, so
        # parameters the caller froze stay frozen
        self._switched_off: dict[str, list[nn.Parameter]] = {}

    # Set-up ----------------------------------------------------------------------------------------

    @property
    def loss_names(self) -> list[str]:
        """Every loss this trainer weighs: the loss modules and the step's extra terms."""
        return list(self.loss_funcs) + [n for n in self.step.extra_losses if n not in self.loss_funcs]

    def _check_keys(self) -> None:
        step = self.step
        _check_dict("models", self.models, step.models, step.required_models)
        _check_dict("loss_funcs", self.loss_funcs, step.losses, step.required_losses)
        _check_dict("mining_funcs", self.mining_funcs, step.miners, ())
        owners = list(self.models) + list(self.loss_funcs)
        _check_dict("optimizers", self.optimizers, [f"{o}_optimizer" for o in owners], ())
        _check_dict("gradient_clippers", self.gradient_clippers, [f"{o}_grad_clipper" for o in owners], ())
        schedulers = [o + s for o in owners for s in _SCHEDULER_SUFFIXES.values()]
        _check_dict("lr_schedulers", self.lr_schedulers, schedulers, ())
        _check_dict("freeze_these", dict.fromkeys(self.freeze_these), owners, ())
        for name, module in {**self.models, **self.loss_funcs}.items():
            if not isinstance(module, nn.Module):
                raise TypeError(message(_OWNER, name, "an nn.Module", type(module).__name__))

    # pytorch-metric-learning's trainer methods that hooks call --------------------------------------

    def get_global_iteration(self) -> int:
        """Iterations run so far, over all epochs (pytorch-metric-learning's name for :attr:`global_step`)."""
        return self.global_step

    def step_lr_plateau_schedulers(self, validation_info: float) -> None:
        """Step every ``*_scheduler_by_plateau`` with ``validation_info`` (e.g. from an end-of-epoch hook)."""
        for name, scheduler in self.lr_schedulers.items():
            if name.endswith(_SCHEDULER_SUFFIXES["plateau"]):
                scheduler.step(validation_info)

    # Pieces a step calls ---------------------------------------------------------------------------

    def weight_of(self, name: str) -> float:
        """The current weight of loss ``name`` (0 for a loss this trainer does not have)."""
        return self.loss_weights.get(name, 0.0)

    def trunk_output(self, data: Any) -> Tensor:
        """``models["trunk"](data)`` with the data moved to :attr:`data_device` and cast to :attr:`dtype`."""
        data = data.to(self.data_device, dtype=self.dtype) if self.dtype is not None else data.to(self.data_device)
        return self.models["trunk"](data)

    def final_embeddings(self, trunk_output: Tensor) -> Tensor:
        """``models["embedder"](trunk_output)``."""
        return self.models["embedder"](trunk_output)

    def compute_embeddings(self, data: Any) -> Tensor:
        """The embeddings of a batch of data: trunk, then embedder."""
        return self.final_embeddings(self.trunk_output(data))

    def mine(self, name: str, embeddings: Tensor, labels: Tensor) -> Any:
        """The tuples of miner ``name`` (None when there is no such miner)."""
        miner = self.mining_funcs.get(name)
        return None if miner is None else miner(embeddings, labels)

    # pytorch-metric-learning's subclassing seam ------------------------------------------------------

    def calculate_loss(self, curr_batch: tuple[Any, Tensor]) -> None:
        """Fill :attr:`losses` with the named loss tensors of one ``(data, labels)`` batch; the trainer then
        adds them up, each times its weight (1 for a name missing from ``loss_weights``), and steps.

        By default the ``step`` computes them. A subclass may override this method, as pytorch-metric-learning's
        trainers are extended, with the helpers below (:meth:`compute_embeddings`,
        :meth:`maybe_mine_embeddings`, :meth:`maybe_get_metric_loss`...); a ``step`` is the way without a
        subclass.
        """
        data, labels = curr_batch
        self.losses = dict(self.step(self, data, labels))

    def get_trunk_output(self, data: Any) -> Tensor:
        """pytorch-metric-learning's name for :meth:`trunk_output`."""
        return self.trunk_output(data)

    def get_final_embeddings(self, base_output: Tensor) -> Tensor:
        """pytorch-metric-learning's name for :meth:`final_embeddings`."""
        return self.final_embeddings(base_output)

    def maybe_mine_embeddings(self, embeddings: Tensor, labels: Tensor) -> Any:
        """The ``tuple_miner``'s tuples, or None without one."""
        return self.mine("tuple_miner", embeddings, labels)

    def maybe_get_metric_loss(self, embeddings: Tensor, labels: Tensor, indices_tuple: Any) -> Tensor | float:
        """``metric_loss(embeddings, labels, indices_tuple)``, or 0 when its weight is 0."""
        if self.weight_of("metric_loss") <= 0:
            return 0
        return self.loss_funcs["metric_loss"](embeddings, labels, indices_tuple)

    # The loop --------------------------------------------------------------------------------------

    def train(self, start_epoch: int = 1, num_epochs: int = 1, resume: str | os.PathLike[str] | None = None) -> None:
        """Train until epoch ``num_epochs`` (counted from 1), continuing from ``resume`` when given.

        Args:
            start_epoch: the first epoch to run (PML's argument; ignored when resuming: the checkpoint knows).
            num_epochs: the last epoch to run.
            resume: a checkpoint written by :meth:`save_checkpoint` (e.g. ``checkpoint_dir / "last.pt"``).
        """
        at_least(_OWNER, "num_epochs", num_epochs, 0)
        if resume is not None:
            self.load_checkpoint(resume)
            start_epoch = self.epoch + 1
        else:
            at_least(_OWNER, "start_epoch", start_epoch, 1)
            if start_epoch == 1 and self._seeds_global:
                torch.manual_seed(self.seed)
        if self.stopped_early:
            return
        from tqdm.auto import tqdm

        loader = self._loader()
        if len(loader) == 0:
            raise ValueError(
                f"Trainer: the loader yields no batch (dataset of {len(self.dataset)} items, "  # type: ignore[arg-type]
                f"batch_size {self.batch_size}, incomplete batches dropped); lower batch_size."
            )
        if self.iterations_per_epoch is None:  # one pass of the loader, readable by hooks (as in PML)
            self.iterations_per_epoch = len(loader)
        iterations = self.iterations_per_epoch
        total_batches = max(0, num_epochs - start_epoch + 1) * iterations
        rank, world = rank_and_world_size()
        if world > 1:
            self._broadcast_from_rank_0()
        bar = tqdm(total=total_batches, desc="train", unit="batch", disable=not self.progress or rank != 0)
        # one stream of batches for the whole run: an epoch shorter than the loader leaves off where the next
        # one goes on, as in pytorch-metric-learning; a resumed run picks the stream up at its position
        batches = self._batches(loader, self.global_step)
        with bar:
            for epoch in range(start_epoch, num_epochs + 1):
                self.epoch = epoch
                self._set_to_train()
                for iteration in range(iterations):
                    self.iteration = iteration
                    batch = next(batches)
                    started = time.perf_counter()
                    total, count = self._forward_backward(batch)
                    self.global_step += 1
                    record = {
                        "step": self.global_step,
                        "epoch": epoch,
                        "loss": total,
                        **{name: value for name, value in self.losses.items() if name != "total_loss"},
                        "samples_per_second": count / max(time.perf_counter() - started, 1e-9),
                    }
                    self.history.append(record)
                    if self.logger is not None and rank == 0:
                        self.logger.log("train", record)
                    if self.end_of_iteration_hook is not None:
                        self.end_of_iteration_hook(self)
                    self._step_schedulers("iteration")
                    bar.set_postfix(
                        {"epoch": epoch, "loss": f"{total:.4f}", "samples/s": f"{record['samples_per_second']:.0f}"},
                        refresh=False,
                    )
                    bar.update(1)
                self._step_schedulers("epoch")
                improved = self._maybe_validate(epoch)
                if self.checkpoint_dir is not None and rank == 0:
                    self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                    self.save_checkpoint(self.checkpoint_dir / "last.pt")
                    if improved:
                        self.save_checkpoint(self.checkpoint_dir / "best.pt")
                stop_by_hook = self.end_of_epoch_hook is not None and self.end_of_epoch_hook(self) is False
                if self.stopped_early or stop_by_hook:
                    break

    def _loader(self) -> DataLoader[Any]:
        if isinstance(self.sampler, BatchSampler):  # it makes the batches itself, as pytorch-metric-learning allows
            return DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.dataloader_num_workers,
                collate_fn=self.collate_fn,
            )
        sampler = self.sampler if self.sampler is not None else RandomSampler(self.dataset, generator=torch.Generator())  # type: ignore[arg-type]
        rank, world = rank_and_world_size()
        if world > 1 and not hasattr(sampler, "num_replicas"):
            sampler = _ProcessShard(sampler, self.batch_size, rank, world)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.dataloader_num_workers,
            collate_fn=self.collate_fn,
        )

    def _batches(self, loader: DataLoader[Any], consumed: int) -> Iterator[Any]:
        """Batches from the ``consumed``-th on: pass ``k`` over the loader is ordered from ``(seed, k)``.

        A seedable sampler is re-seeded before each pass (``set_epoch(k + 1)`` on samplers that have it, the
        generator of a shuffling ``RandomSampler`` otherwise), so the stream is the same however the run is cut
        into epochs or resumed. When the loader's length equals the epoch, pass ``k`` is epoch ``k + 1``.
        """
        length = len(loader)
        first_pass, skip = divmod(consumed, length)
        for pass_number in itertools.count(first_pass):
            order_seed = ((self.seed * 1_000_003 + pass_number + 1) * 1_000_033) % 2**31
            sampler = self.sampler.sampler if isinstance(self.sampler, BatchSampler) else loader.sampler
            if isinstance(sampler, _ProcessShard):
                sampler = sampler.base
            if isinstance(sampler, RandomSampler) and sampler.generator is not None:
                sampler.generator.manual_seed(order_seed)
            elif hasattr(sampler, "set_epoch"):
                sampler.set_epoch(pass_number + 1)
            for index, batch in enumerate(loader):
                if pass_number == first_pass and index < skip:
                    continue
                yield batch

    def _forward_backward(self, batch: Any) -> tuple[float, int]:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        for module in {**self.models, **self.loss_funcs}.values():  # also those without an optimizer
            module.zero_grad(set_to_none=True)
        if rank_and_world_size()[1] > 1:
            self._broadcast_model_buffers()
        data, labels = self.data_and_label_getter(batch)
        labels = self._process_labels(labels)
        data, labels = self._subset_batch(data, labels)
        frozen = self._frozen
        self.losses = {}
        with self._autocast():
            self.calculate_loss((data, labels))
        losses: dict[str, Any] = dict(self.losses)
        total: Tensor | None = None
        for name, value in losses.items():
            if not isinstance(value, Tensor):  # a plain 0 from maybe_get_metric_loss: nothing to add
                continue
            weight = self.loss_weights.get(name, 1.0)
            if weight > 0:
                term = weight * value.float()
                total = term if total is None else total + term
        self.losses = {name: float(v.detach() if isinstance(v, Tensor) else v) for name, v in losses.items()}
        self.losses["total_loss"] = 0.0 if total is None else float(total.detach())
        if total is None:
            return 0.0, _batch_length(data)
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"Trainer: the loss is {float(total)} at epoch {self.epoch}, iteration {self.iteration} "
                f"(terms: {self.losses}); lower the learning rate, check the data for NaN/Inf, or use max_grad_norm."
            )
        scaler = self.grad_scaler
        (total if scaler is None else scaler.scale(total)).backward()
        if rank_and_world_size()[1] > 1:
            self._average_gradients(frozen)
        stepping = [opt for name, opt in self.optimizers.items() if name.removesuffix("_optimizer") not in frozen]
        if scaler is not None:
            for optimizer in stepping:
                scaler.unscale_(optimizer)  # clipping sees the true gradients
        self._clip_gradients(frozen)
        for optimizer in stepping:
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
        if scaler is not None:
            scaler.update()
        return float(total.detach()), _batch_length(data)

    def _process_labels(self, labels: Any) -> Tensor:
        labels = torch.as_tensor(labels)
        if labels.ndim == 2:
            labels = labels[:, self.label_hierarchy_level]
        if self.label_map is not None:
            labels = self.label_map(labels)
        return labels.to(self.data_device)

    def _subset_batch(self, data: Any, labels: Tensor) -> tuple[Any, Tensor]:
        miner = self.mining_funcs.get("subset_batch_miner")
        if miner is None:
            return data, labels
        with torch.no_grad():
            self._set_to_eval()
            idx = miner(self.compute_embeddings(data), labels)
            self._set_to_train()
        return data[idx], labels[idx]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.data_device.type, dtype=self.autocast_dtype)

    def _clip_gradients(self, frozen: set[str]) -> None:
        for clipper in self.gradient_clippers.values():
            clipper()
        if self.max_grad_norm is not None:
            params = [
                p
                for name, module in {**self.models, **self.loss_funcs}.items()
                if name not in frozen
                for p in module.parameters()
                if p.grad is not None
            ]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)

    def _step_schedulers(self, when: str) -> None:
        for name, scheduler in self.lr_schedulers.items():
            if name.endswith(_SCHEDULER_SUFFIXES[when]):
                scheduler.step()

    def _set_to_train(self) -> None:
        """Train mode and gradients for every module but the frozen ones (``freeze_these`` and the step's
        choice for this epoch), which get eval mode and no gradient; done at the start of each epoch."""
        self._frozen = set(self.freeze_these) | set(self.step.frozen_models(self.epoch))
        for name, module in {**self.models, **self.loss_funcs}.items():
            if name in self._frozen:
                if name not in self._switched_off:
                    self._switched_off[name] = [p for p in module.parameters() if p.requires_grad]
                    module.requires_grad_(False)
            else:
                for param in self._switched_off.pop(name, []):
                    param.requires_grad_(True)
            module.train(name not in self._frozen)
        self._freeze_batchnorm()

    def _set_to_eval(self) -> None:
        for module in {**self.models, **self.loss_funcs}.values():
            module.eval()

    def _freeze_batchnorm(self) -> None:
        if self.freeze_trunk_batchnorm:
            for layer in self.models["trunk"].modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    # Several processes -----------------------------------------------------------------------------

    def _synced_modules(self) -> list[nn.Module]:
        modules = [*self.models.values(), *self.loss_funcs.values()]
        return modules + [m for m in self.mining_funcs.values() if isinstance(m, nn.Module)]

    def _broadcast_from_rank_0(self) -> None:
        """Give every process rank 0's parameters and buffers (as ``DistributedDataParallel`` does at start)."""
        tensors = _unique(t for m in self._synced_modules() for t in [*m.parameters(), *m.buffers()])
        broadcast_from_rank_0(tensors, self.data_device)

    def _broadcast_model_buffers(self) -> None:
        broadcast_from_rank_0(_unique(t for m in self.models.values() for t in m.buffers()), self.data_device)

    def _average_gradients(self, frozen: set[str]) -> None:
        """Average the trained parameters' gradients over processes: one all-reduce per device and dtype.

        A parameter without a gradient on every process keeps none (an optimizer then skips it, as in one
        process); one with a gradient on some processes only counts zeros for the others.
        """
        import torch.distributed as dist

        world = dist.get_world_size()
        params = list(
            _unique(
                p
                for name, module in {**self.models, **self.loss_funcs}.items()
                if name not in frozen
                for p in module.parameters()
                if p.requires_grad
            )
        )
        if not params:
            return
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
        has_grad = _gathered_sum(has_grad, params[0].device)
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p, count in zip(params, has_grad.tolist(), strict=True):
            if count:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                groups.setdefault((p.device, p.dtype), []).append(p)
        for group in groups.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])  # type: ignore[union-attr]
            dist.all_reduce(flat)
            flat /= world
            for p, part in zip(group, flat.split([p.numel() for p in group]), strict=True):
                p.grad.copy_(part.view_as(p))  # type: ignore[union-attr]

    # Validation ------------------------------------------------------------------------------------

    def embed(self, dataset: Dataset[Any], batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """``(embeddings, labels)`` of a dataset in eval mode without gradients; the models' modes are restored."""
        modes = {name: module.training for name, module in self.models.items()}
        rank, world = rank_and_world_size()
        size = len(dataset)  # type: ignore[arg-type]
        keep = None
        if world > 1:
            # each process embeds a contiguous part; the parts are gathered once, in dataset order
            per_process = -(-size // world)
            start, stop = min(size, rank * per_process), min(size, (rank + 1) * per_process)
            keep = stop - start
            dataset = Subset(dataset, range(start, stop) if keep else range(min(1, size)))
        self._set_to_eval()
        parts, label_parts = [], []
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate_fn)
        try:
            with torch.no_grad(), self._autocast():
                for batch in loader:
                    data, labels = _pair_of(batch, self.data_and_label_getter)
                    parts.append(self.compute_embeddings(data).float().cpu())
                    label_parts.append(self._process_labels(labels).cpu())
        finally:
            for name, module in self.models.items():
                module.train(modes[name])
        embeddings, labels = torch.cat(parts), torch.cat(label_parts)
        if keep is None:
            return embeddings, labels
        embeddings, labels = embeddings[:keep], labels[:keep]
        return _gathered(embeddings, self.data_device), _gathered(labels, self.data_device)

    def _maybe_validate(self, epoch: int) -> bool:
        validation = self.validation
        if validation is None or epoch % validation.every != 0:
            return False
        embeddings, labels = self.embed(validation.dataset, validation.batch_size)
        metrics = validation.calculator.get_accuracy(embeddings, labels, ref_includes_query=True)
        if validation.metric not in metrics:
            raise KeyError(
                f"Validation: the calculator returned no {validation.metric!r}; it returned {', '.join(metrics)}."
            )
        record = {"epoch": epoch, "step": self.global_step, "split": "val", **{k: float(v) for k, v in metrics.items()}}
        self.eval_history.append(record)
        if self.logger is not None and rank_and_world_size()[0] == 0:
            self.logger.log("eval", record)
        value = float(metrics[validation.metric])
        for name, scheduler in self.lr_schedulers.items():
            if name.endswith(_SCHEDULER_SUFFIXES["plateau"]):
                scheduler.step(value)
        if self.best_metric is None or value > self.best_metric + validation.min_delta:
            self.best_metric, self.best_epoch, self.evaluations_since_best = value, epoch, 0
            return True
        self.evaluations_since_best += 1
        if validation.patience is not None and self.evaluations_since_best >= validation.patience:
            self.stopped_early = True
        return False

    # Checkpoints -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly after the current epoch."""
        state_of = getattr(self.sampler, "state_dict", None)
        sampler_state = state_of() if callable(state_of) else None
        return {
            "format_version": TRAINER_CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "models": {k: v.state_dict() for k, v in self.models.items()},
            "loss_funcs": {k: v.state_dict() for k, v in self.loss_funcs.items()},
            "miners": {k: v.state_dict() for k, v in self.mining_funcs.items() if isinstance(v, nn.Module)},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "lr_schedulers": {k: v.state_dict() for k, v in self.lr_schedulers.items()},
            "loss_weights": dict(self.loss_weights),
            "generator": self.generator.get_state(),
            "seed": self.seed,
            "torch_rng": torch.get_rng_state(),
            "sampler": sampler_state,
            "history": list(self.history),
            "eval_history": list(self.eval_history),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "evaluations_since_best": self.evaluations_since_best,
            "stopped_early": self.stopped_early,
            "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
        }

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically (a temporary file, then a rename)."""
        state = self.state_dict()
        return atomic_write(path, lambda f: torch.save(state, f))

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer.

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: the file is truncated, corrupt, or not a trainer checkpoint of this version.
            CheckpointMismatchError: the checkpoint holds other models, losses or optimizers, or other shapes
                (then nothing is loaded when the names differ; after a shape error the trainer is partly
                loaded and should be rebuilt).
        """
        raw = Path(path).read_bytes()
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:  # malformed bytes surface as many different exception types inside torch.load
            raise CorruptFileError(
                f"{path}: cannot read the trainer checkpoint; the file is truncated or corrupt ({len(raw)} bytes): "
                f"{type(exc).__name__}"
            ) from None
        if not isinstance(state, dict) or "format_version" not in state or "models" not in state:
            raise CorruptFileError(f"{path}: not a dmlkit trainer checkpoint.")
        if state["format_version"] != TRAINER_CHECKPOINT_VERSION:
            raise CorruptFileError(
                f"{path}: trainer checkpoint format_version {state['format_version']!r} is not supported "
                f"(this dmlkit reads version {TRAINER_CHECKPOINT_VERSION})."
            )
        groups = (
            ("models", self.models),
            ("loss_funcs", self.loss_funcs),
            ("optimizers", self.optimizers),
            ("lr_schedulers", self.lr_schedulers),
        )
        for group, owned in groups:
            if set(state[group]) != set(owned):
                raise CheckpointMismatchError(
                    f"{path}: the checkpoint's {group} are {sorted(state[group])}, this trainer's are "
                    f"{sorted(owned)}; build the trainer as it was when the checkpoint was written."
                )
        for group, owned in groups:
            for name, obj in owned.items():
                try:
                    obj.load_state_dict(state[group][name])
                except (RuntimeError, ValueError, KeyError) as exc:
                    detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
                    raise CheckpointMismatchError(
                        f"{path}: {group}[{name!r}] does not fit this trainer ({detail}); build the trainer as it "
                        "was when the checkpoint was written."
                    ) from None
        for name, miner in self.mining_funcs.items():
            if isinstance(miner, nn.Module) and name in state["miners"]:
                miner.load_state_dict(state["miners"][name])
        load_sampler = getattr(self.sampler, "load_state_dict", None)
        if state["sampler"] is not None and callable(load_sampler):
            load_sampler(state["sampler"])
        self.generator.set_state(state["generator"])
        self.seed = int(state.get("seed", self.seed))
        torch.set_rng_state(state["torch_rng"])
        self.loss_weights = dict(state["loss_weights"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.eval_history = list(state["eval_history"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.evaluations_since_best = int(state["evaluations_since_best"])
        self.stopped_early = bool(state["stopped_early"])
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])


def _check_dict(group: str, given: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str]) -> None:
    for key in given:
        if not any(fnmatch.fnmatchcase(key, pattern.replace("_*", "_[0-9]*")) for pattern in allowed):
            names = ", ".join(allowed)
            raise KeyError(f"Trainer: unknown {group} key {key!r}.{close_matches_hint(key, allowed)} Allowed: {names}.")
    missing = [key for key in required if key not in given]
    if missing:
        raise KeyError(f"Trainer: {group} must include {', '.join(map(repr, missing))} for this training step.")


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _label_map(
    dataset: Any, dataset_labels: Any, set_min_label_to_zero: bool, level: int
) -> Callable[[Tensor], Tensor] | None:
    """Map labels to ``0..C-1`` in sorted order when ``set_min_label_to_zero`` asks for it; ``dataset_labels`` (or
    the dataset's ``labels``) lists the labels there are. As in pytorch-metric-learning, ``dataset_labels``
    alone maps nothing."""
    if not set_min_label_to_zero:
        return None
    source = dataset_labels if dataset_labels is not None else getattr(dataset, "labels", None)
    if source is None:
        raise ValueError(
            "Trainer: set_min_label_to_zero needs every label of the dataset: pass dataset_labels, or give the "
            "dataset a `labels` attribute."
        )
    values = torch.as_tensor(np.asarray(source))
    known = torch.unique(values[:, level] if values.ndim == 2 else values)

    def mapped(labels: Tensor) -> Tensor:
        position = torch.searchsorted(known, labels.cpu().contiguous())
        position = position.clamp(max=len(known) - 1)
        if not bool((known[position] == labels.cpu()).all()):
            raise ValueError("Trainer: a batch holds a label missing from dataset_labels.")
        return position.to(labels.device)

    return mapped


def _batch_length(data: Any) -> int:
    if isinstance(data, Tensor):
        return len(data)
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], Tensor):
        return sum(len(part) for part in data)
    return 0


def _pair_of(batch: Any, getter: Callable[[Any], tuple[Any, Tensor]]) -> tuple[Any, Tensor]:
    data, labels = getter(batch)
    if isinstance(data, (tuple, list)):  # two-stream batches: validation embeds the first stream
        data = data[0]
    return data, labels


class _ProcessShard(Sampler[int]):
    """This process's part of a sampler's stream: of each ``world * batch_size`` consecutive indices (a global
    batch), rows ``[rank * batch_size, (rank + 1) * batch_size)``; an incomplete global batch is dropped."""

    def __init__(self, base: Sampler[int], batch_size: int, rank: int, world: int) -> None:
        self.base = base
        self.batch_size = batch_size
        self.rank = rank
        self.world = world

    def __len__(self) -> int:
        return len(self.base) // (self.world * self.batch_size) * self.batch_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        size = self.world * self.batch_size
        start = self.rank * self.batch_size
        chunk: list[int] = []
        for index in self.base:
            chunk.append(index)
            if len(chunk) == size:
                yield from chunk[start : start + self.batch_size]
                chunk = []


def _unique(tensors: Iterator[Tensor] | Any) -> Iterator[Tensor]:
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield tensor


def _collective_device(device: torch.device) -> torch.device:
    """Where a collective's tensors must live: the GPU for NCCL, else the CPU."""
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _gathered(tensor: Tensor, device: torch.device) -> Tensor:
    return all_gather(tensor.to(_collective_device(device))).cpu()


def _gathered_sum(tensor: Tensor, device: torch.device) -> Tensor:
    import torch.distributed as dist

    tensor = tensor.to(_collective_device(device))
    dist.all_reduce(tensor)
    return tensor.cpu()
