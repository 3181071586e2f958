"""The training loop: class-balanced batches, mining, a metric loss (plus an optional instance-discrimination
term on two noisy views), and retrieval before and after training."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..data import class_disjoint_split, load_dataset, noisy_view
from ..evaluation import retrieval_metrics
from ..losses import LOSSES
from ..losses.ntxent import NTXentLoss
from ..miners import MINERS
from ..samplers import MPerClassSampler
from ..types import Pairs
from .components import OPTIMIZERS, accepted_params, build_component
from .config import TrainConfig
from .models import MLP

__all__ = ["TrainResult", "embed", "evaluate", "train"]

#: the retrieval metrics reported before and after training, in report order.
METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: the trained embedding network (in eval mode).
        optimizer: its optimizer, with its state.
        loss_fn: the loss module (it may hold learned parameters, e.g. proxies).
        before: retrieval metrics of the untrained model on the test classes.
        after: the same metrics after training.
        history: one entry per epoch: ``epoch``, mean ``loss`` (the total), mean ``instance_loss`` (the
            unweighted instance-discrimination term; ``None`` when it is off), mean number of ``mined`` tuples
            per batch (``None`` without a miner).
        raw_input: the same metrics on the input features themselves (no model), for context.
        num_train: training samples. num_test: test samples. seconds: wall time of the whole run.
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


def embed(model: nn.Module, features: Tensor, batch_size: int = 1024, device: str | torch.device = "cpu") -> Tensor:
    """Embeddings of ``features`` computed in eval mode without gradients; the model's mode is restored.

    Example:
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


def train(config: TrainConfig | None = None, *, progress: bool = True) -> TrainResult:
    """Train an embedding network as ``config`` says and measure retrieval on the unseen test classes.

    The run is reproducible: the model's initialisation uses ``torch.manual_seed(config.seed)`` inside a
    forked random state (the caller's global generator is left untouched), ``MPerClassSampler`` draws
    batches from its own generator seeded with ``config.seed`` and the epoch, and the noise of the views
    comes from a generator seeded with ``config.seed``.

    With ``config.instance.weight > 0`` every batch is embedded twice, each time with fresh Gaussian pixel
    noise; the metric loss (and the miner) see the first view and ``weight * NTXentLoss`` treats the two views
    of each sample as its only positive pair (see :class:`~dmlkit.training.config.InstanceConfig`).

    Args:
        config: the configuration; the ``dmlkit train`` demo when None.
        progress: show a progress bar with the loss and the number of mined tuples.

    Example:
        >>> result = train(TrainConfig().apply_overrides(["epochs=1", "iterations_per_epoch=2"]), progress=False)
        >>> sorted(result.after), len(result.history)
        (['mean_average_precision_at_r', 'precision_at_1', 'r_precision'], 1)
    """
    from tqdm.auto import tqdm

    config = TrainConfig() if config is None else config
    config.validate()
    start = time.perf_counter()
    device = torch.device(config.device)
    features, labels = load_dataset(config.data.name)
    train_idx, test_idx = class_disjoint_split(labels, config.data.train_classes, config.data.test_classes)
    x_train, x_test, y_test = features[train_idx], features[test_idx], labels[test_idx]
    # Losses with one weight per class (proxies, softmax heads) need labels 0..C-1.
    train_classes = torch.tensor(sorted(set(config.data.train_classes)), dtype=labels.dtype)
    y_train = torch.searchsorted(train_classes, labels[train_idx])
    eval_kwargs: dict[str, Any] = {
        "distance": config.evaluation.distance,
        "batch_size": config.evaluation.batch_size,
        "device": device,
    }

    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = MLP(
            x_train.shape[1],
            hidden=config.model.hidden,
            out_features=config.model.embedding_size,
            normalize=config.model.normalize,
            batch_norm=config.model.batch_norm,
        ).to(device)
        loss_fn = _build_loss(config, num_classes=len(train_classes)).to(device)
        miner = None
        if config.miner is not None:
            miner = build_component(MINERS, config.miner.name, config.miner.params, "miner")
        parameters = list(model.parameters()) + list(loss_fn.parameters())
        optimizer = build_component(
            OPTIMIZERS, config.optimizer.name, config.optimizer.params, "optimizer", params=parameters
        )
        before = evaluate(model, x_test, y_test, **eval_kwargs)
        raw_input = _retrieval(x_test, y_test, config.evaluation.distance)
        instance = config.instance
        instance_loss = NTXentLoss(temperature=instance.temperature) if instance.weight > 0 else None
        noise = torch.Generator(device=device).manual_seed(config.seed)
        # noisy views stay within the range of the training features (pixel intensities, for images)
        value_range = {"low": float(x_train.min()), "high": float(x_train.max())}

        iterations = config.iterations_per_epoch or max(1, len(train_idx) // config.sampler.batch_size)
        sampler = MPerClassSampler(
            y_train,
            m=config.sampler.m,
            batch_size=config.sampler.batch_size,
            length_before_new_iter=iterations * config.sampler.batch_size,
            seed=config.seed,
        )
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=config.sampler.batch_size, sampler=sampler)
        history: list[dict[str, Any]] = []
        model.train()
        with tqdm(total=config.epochs * iterations, desc="train", unit="batch", disable=not progress) as bar:
            for epoch in range(config.epochs):
                sampler.set_epoch(epoch)
                losses: list[float] = []
                instance_losses: list[float] = []
                mined: list[int] = []
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    view = x
                    if instance_loss is not None:
                        view = noisy_view(x, instance.noise, generator=noise, **value_range)
                    emb = model(view)
                    tuples = None if miner is None else miner(emb, y)
                    loss = loss_fn(emb, y, tuples)
                    if instance_loss is not None:
                        second = model(noisy_view(x, instance.noise, generator=noise, **value_range))
                        # each sample's two views share a label that no other sample of the batch has
                        ids = torch.arange(len(x), device=device).repeat(2)
                        term = instance_loss(torch.cat([emb, second]), ids)
                        instance_losses.append(float(term.detach()))
                        loss = loss + instance.weight * term
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    postfix: dict[str, Any] = {"epoch": epoch + 1, "loss": f"{losses[-1]:.4f}"}
                    if tuples is not None:
                        mined.append(_count(tuples))
                        postfix["pairs" if isinstance(tuples, Pairs) else "triplets"] = mined[-1]
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(1)
                history.append(
                    {
                        "epoch": epoch + 1,
                        "loss": sum(losses) / len(losses),
                        "instance_loss": sum(instance_losses) / len(instance_losses) if instance_losses else None,
                        "mined": sum(mined) / len(mined) if mined else None,
                    }
                )
        after = evaluate(model, x_test, y_test, **eval_kwargs)
    model.eval()
    return TrainResult(
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        before=before,
        after=after,
        history=history,
        num_train=len(train_idx),
        num_test=len(test_idx),
        seconds=time.perf_counter() - start,
        raw_input=raw_input,
    )


def _build_loss(config: TrainConfig, num_classes: int) -> nn.Module:
    accepted = accepted_params(LOSSES[config.loss.name])
    sizes = {"num_classes": num_classes, "embedding_size": config.model.embedding_size}
    extra = {k: v for k, v in sizes.items() if k in accepted and k not in config.loss.params}
    return build_component(LOSSES, config.loss.name, config.loss.params, "loss", **extra)


def _count(tuples: tuple[Tensor, ...]) -> int:
    if isinstance(tuples, Pairs):
        return tuples.num_pos + tuples.num_neg
    return int(tuples[0].numel())
