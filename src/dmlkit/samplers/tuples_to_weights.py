"""Offline mining: sample dataset items in proportion to how often a miner picks them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from .._validation import Described, check_embeddings, check_range, check_type, close_matches_hint, message
from .base import BaseSampler, as_int

__all__ = ["TuplesToWeightsSampler"]

#: the tester keyword arguments of pytorch-metric-learning that mean something here, with their defaults
TESTER_OPTIONS: dict[str, Any] = {
    "batch_size": 32,
    "normalize_embeddings": True,
    "data_device": None,
    "dtype": None,
    "data_and_label_getter": None,
    "dataloader_num_workers": 0,
    "label_hierarchy_level": 0,
}


def _inputs_and_labels(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        message(
            "TuplesToWeightsSampler",
            "dataset",
            "a dataset of (input, label) items, or given with a `data_and_label_getter`",
            Described(f"a batch of type {type(batch).__name__}"),
        )
    )


class TuplesToWeightsSampler(BaseSampler[int]):
    """Samples dataset indices with probabilities proportional to how often a miner selects each item.

    A simple offline miner: at the start of every iteration (every epoch of a ``DataLoader``), it embeds a
    random subset of ``subset_size`` items of the dataset (the whole dataset when None) with ``model`` in
    eval mode and without gradients, runs ``miner(embeddings, labels)`` on the subset, counts how many
    times each item appears in the mined tuples (every position of every pair or triplet), and draws
    ``len(sampler)`` indices with replacement, item ``i`` with probability ``count[i] / sum(count)``. Items
    outside the subset, or never mined, are not drawn; when the miner returns no tuple, the subset is drawn
    uniformly. It follows the idea of mining hard examples over a large pool rather than one batch
    (Schroff, Kalenichenko and Philbin, 2015, "FaceNet", arXiv:1503.03832, offline triplet generation).

    After an iteration, ``weights`` holds the per-item weights of that iteration: the counts divided by
    their maximum (float32, on the CPU, ``len(dataset)`` entries), as in pytorch-metric-learning.

    Embeddings are computed by a plain loop over ``DataLoader(dataset, batch_size, shuffle=False)``, then
    L2-normalised when ``normalize_embeddings`` is true (the default, as pytorch-metric-learning's testers).
    The model's train/eval mode is restored afterwards (pytorch-metric-learning leaves it in eval mode).

    ``tester_kwargs`` accepts pytorch-metric-learning's tester options that apply here: ``batch_size``
    (32), ``normalize_embeddings`` (True), ``data_device`` (where inputs and embeddings go; default: the
    device of the model's parameters), ``dtype`` (the dtype floating-point inputs are cast to; default
    unchanged), ``data_and_label_getter`` (maps a collated batch to ``(inputs, labels)``; default: its
    first two entries), ``dataloader_num_workers`` (0 here, 2 in pytorch-metric-learning: the embedding
    pass runs in the process that starts each epoch) and ``label_hierarchy_level`` (the column used when
    labels are 2-D). Any other name is refused, with suggestions for typos.

    Randomness is per instance: the subset and the draw are a function of ``(seed, epoch)`` and of the
    model's embeddings; call :meth:`set_epoch` before each epoch. With ``seed=None`` every iteration gives a
    new draw.

    Args:
        model: maps a batch of inputs to ``(batch, embedding_size)`` embeddings.
        miner: ``miner(embeddings, labels)`` returning a 3-tuple (anchors, positives, negatives) or a 4-tuple
            (anchors_pos, positives, anchors_neg, negatives) of index tensors, e.g. a dmlkit or
            pytorch-metric-learning miner.
        dataset: a map-style dataset of ``(input, label)`` items (or see ``data_and_label_getter``).
        subset_size: items embedded per iteration, and indices drawn per iteration (``len(sampler)``),
            ``>= 1``; None for the whole dataset. Above ``len(dataset)``, the whole dataset is embedded
            (pytorch-metric-learning then embeds a sample drawn with replacement, with duplicates).
        seed: non-negative integer seed, or None for fresh entropy (keyword only).
        **tester_kwargs: the options above.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from dmlkit.miners import TripletMarginMiner
        >>> data = TensorDataset(torch.randn(40, 4), torch.arange(4).repeat(10))
        >>> sampler = TuplesToWeightsSampler(
        ...     torch.nn.Linear(4, 3), TripletMarginMiner(margin=0.1), data, subset_size=20, seed=0, batch_size=8
        ... )
        >>> indices = list(sampler)
        >>> len(indices), sampler.weights.shape
        (20, torch.Size([40]))
        >>> bool((sampler.weights[indices] > 0).all())
        True
    """

    def __init__(
        self,
        model: nn.Module,
        miner: Callable[..., Any],
        dataset: Dataset[Any],
        subset_size: int | None = None,
        *,
        seed: int | None = None,
        **tester_kwargs: Any,
    ) -> None:
        owner = self._owner
        check_type(owner, "model", model, nn.Module, "a torch.nn.Module")
        if not callable(miner):
            raise TypeError(message(owner, "miner", "callable as miner(embeddings, labels)", type(miner).__name__))
        if not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                message(owner, "dataset", "a map-style dataset (with __len__ and __getitem__)", type(dataset).__name__)
            )
        if len(dataset) < 1:
            raise ValueError(message(owner, "dataset", "non-empty", Described("an empty dataset")))
        if subset_size is not None:
            subset_size = as_int(subset_size)
            check_range(owner, "subset_size", subset_size, low=1, integer=True)
        unknown = sorted(set(tester_kwargs) - set(TESTER_OPTIONS))
        if unknown:
            valid = ", ".join(repr(name) for name in TESTER_OPTIONS)
            hint = close_matches_hint(unknown[0], TESTER_OPTIONS)
            raise TypeError(message(owner, "tester_kwargs", f"among {valid}", unknown[0]) + hint)
        options = {**TESTER_OPTIONS, **tester_kwargs}
        batch_size = as_int(options["batch_size"])
        check_range(owner, "batch_size", batch_size, low=1, integer=True)
        workers = as_int(options["dataloader_num_workers"])
        check_range(owner, "dataloader_num_workers", workers, low=0, integer=True)
        level = as_int(options["label_hierarchy_level"])
        check_range(owner, "label_hierarchy_level", level, low=0, integer=True)
        getter = options["data_and_label_getter"]
        if getter is not None and not callable(getter):
            raise TypeError(message(owner, "data_and_label_getter", "callable or None", type(getter).__name__))
        dtype = options["dtype"]
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(message(owner, "dtype", "a floating-point torch.dtype or None", dtype))

        super().__init__(seed)
        self.model = model
        self.miner = miner
        self.dataset = dataset
        self.subset_size = subset_size
        self.batch_size = batch_size
        self.normalize_embeddings = bool(options["normalize_embeddings"])
        self.data_device = options["data_device"]
        self.dtype = dtype
        self.data_and_label_getter: Callable[[Any], tuple[Any, Any]] = getter or _inputs_and_labels
        self.dataloader_num_workers = workers
        self.label_hierarchy_level = level
        self.weights: Tensor | None = None

    def __len__(self) -> int:
        return self.subset_size if self.subset_size is not None else len(self._sized_dataset)

    @property
    def _sized_dataset(self) -> Sized:
        return cast(Sized, self.dataset)  # checked at construction

    def _device(self) -> torch.device:
        if self.data_device is not None:
            return torch.device(self.data_device)
        for parameter in self.model.parameters():
            return parameter.device
        for buffer in self.model.buffers():
            return buffer.device
        return torch.device("cpu")

    def __iter__(self) -> Iterator[int]:
        rng = self._generator()
        size = len(self._sized_dataset)
        if self.subset_size is not None and self.subset_size < size:
            subset = np.sort(rng.choice(size, size=self.subset_size, replace=False))
        else:
            subset = np.arange(size)
        embeddings, labels = self._embed(subset, int(rng.integers(2**63)))
        counts = self._count_mined(embeddings, labels)
        weights = np.zeros(size)
        weights[subset] = counts / counts.max() if counts.max() > 0 else 1.0
        self.weights = torch.from_numpy(weights).float()
        drawn = rng.choice(size, size=len(self), replace=True, p=weights / weights.sum())
        return iter(drawn.tolist())

    def _embed(self, subset: np.ndarray, loader_seed: int) -> tuple[Tensor, Tensor]:
        """Embeddings and labels of ``dataset[subset]``, computed in eval mode without gradients."""
        owner = self._owner
        device = self._device()
        loader = DataLoader(
            Subset(self.dataset, subset.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.dataloader_num_workers,
            # the loader draws its workers' base seed from this generator, not from torch's global one
            generator=torch.Generator().manual_seed(loader_seed),
        )
        chunks, label_chunks = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    inputs, labels = self.data_and_label_getter(batch)
                    if isinstance(inputs, Tensor):
                        cast_to = self.dtype if self.dtype is not None and inputs.is_floating_point() else inputs.dtype
                        inputs = inputs.to(device=device, dtype=cast_to)
                    chunks.append(self.model(inputs).to(device))
                    label_chunks.append(self._label_column(torch.as_tensor(labels)))
        finally:
            self.model.train(was_training)
        embeddings = torch.cat(chunks)
        check_embeddings(owner, embeddings, "model output")
        if self.normalize_embeddings:
            embeddings = F.normalize(embeddings, dim=1)
        return embeddings, torch.cat(label_chunks).to(device=device, dtype=torch.long)

    def _label_column(self, labels: Tensor) -> Tensor:
        level = self.label_hierarchy_level
        if labels.ndim == 2 and level < labels.shape[1]:
            return labels[:, level]
        if labels.ndim == 1 and level == 0:
            return labels
        rule = f"1-D class labels, or 2-D with more than `label_hierarchy_level` ({level}) columns"
        raise ValueError(message(self._owner, "labels", rule, Described(f"shape {tuple(labels.shape)}")))

    def _count_mined(self, embeddings: Tensor, labels: Tensor) -> np.ndarray:
        """How many times each subset position appears in the miner's tuples."""
        owner = self._owner
        mined = self.miner(embeddings, labels)
        rule = (
            "a function returning a 3-tuple (anchors, positives, negatives) or a 4-tuple "
            "(anchors_pos, positives, anchors_neg, negatives) of 1-D integer tensors"
        )
        if not isinstance(mined, (tuple, list)) or len(mined) not in (3, 4):
            raise TypeError(message(owner, "miner", rule, Described(f"a result of type {type(mined).__name__}")))
        for part in mined:
            if not isinstance(part, Tensor) or part.ndim != 1 or part.is_floating_point() or part.dtype == torch.bool:
                raise TypeError(message(owner, "miner", rule, Described(f"a tuple holding {type(part).__name__}")))
        flat = torch.cat([part.reshape(-1).long().cpu() for part in mined])
        num = embeddings.shape[0]
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num):
            bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
            rule = f"a function returning indices in [0, {num}) for {num} embeddings"
            raise ValueError(message(owner, "miner", rule, Described(f"index {bad}")))
        return torch.bincount(flat, minlength=num).double().numpy()
