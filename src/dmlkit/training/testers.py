"""Testers: embed labelled datasets split by split and report retrieval and clustering accuracy.

The evaluation follows the protocol of Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check",
arXiv:2003.08505: every query split is embedded by the model in eval mode, compared with one or more
reference splits through :class:`~dmlkit.evaluation.AccuracyCalculator`, and each label level of a
hierarchical labelling is scored on its own (``{metric}_level{L}`` keys, plus ``AVERAGE_{metric}`` when
several levels are scored). The constructors, methods and result keys are those of pytorch-metric-learning's
testers, so ``from dmlkit.testers import GlobalEmbeddingSpaceTester`` is a drop-in replacement.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._validation import Described, close_matches_hint, message
from ..evaluation import AccuracyCalculator

__all__ = [
    "BaseTester",
    "GlobalEmbeddingSpaceTester",
    "WithSameParentLabelTester",
    "GlobalTwoStreamEmbeddingSpaceTester",
]

logger = logging.getLogger(__name__)

#: ``label_hierarchy_level``: one level, several levels, or "all".
LevelSpec: TypeAlias = "int | str | Sequence[int]"
#: ``[(query_split, [reference_split, ...]), ...]``
SplitPlan: TypeAlias = "list[tuple[str, list[str]]]"

_LEVEL_RULE = "an integer >= 0, a non-empty list of integers >= 0, or 'all'"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_levels(owner: str, value: Any) -> int | str | list[int]:
    """Validate ``label_hierarchy_level``: an int, a non-empty list / tuple of ints, or ``"all"``."""
    if isinstance(value, str):
        if value == "all":
            return value
        raise ValueError(
            message(owner, "label_hierarchy_level", _LEVEL_RULE, value) + close_matches_hint(value, ["all"])
        )
    if _is_int(value):
        if value < 0:
            raise ValueError(message(owner, "label_hierarchy_level", _LEVEL_RULE, value))
        return int(value)
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_int(v) and v >= 0 for v in value):
            raise ValueError(message(owner, "label_hierarchy_level", _LEVEL_RULE, value))
        return [int(v) for v in value]
    raise TypeError(message(owner, "label_hierarchy_level", _LEVEL_RULE, Described(type(value).__name__)))


def _check_count(owner: str, arg: str, value: Any, low: int) -> int:
    if not _is_int(value):
        raise TypeError(message(owner, arg, f"an integer >= {low}", value))
    if value < low:
        raise ValueError(message(owner, arg, f"an integer >= {low}", value))
    return int(value)


def _check_callable(owner: str, arg: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(message(owner, arg, "None or a callable", Described(type(value).__name__)))


def _describe(x: Any) -> Described:
    if isinstance(x, Tensor):
        return Described(f"a tensor of shape {tuple(x.shape)}")
    if isinstance(x, (list, tuple)):
        return Described(f"a {type(x).__name__} of {len(x)} element(s)")
    return Described(type(x).__name__)


def _move(x: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """Tensors (also inside dicts, lists and tuples) on ``device``, cast to ``dtype`` when given."""
    if isinstance(x, Tensor):
        x = x.to(device)
        return x if dtype is None else x.to(dtype)
    if isinstance(x, Mapping):
        return {k: _move(v, device, dtype) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_move(v, device, dtype) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_move(v, device, dtype) for v in x)
    return x


@contextlib.contextmanager
def _eval_mode(models: Sequence[nn.Module], enabled: bool) -> Iterator[None]:
    """Every module of ``models`` in eval mode inside the block; each module's own mode is restored after."""
    if not enabled:
        yield
        return
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _standardized_pca(x: Tensor, dims: int) -> Tensor:
    """Standardise each column (zero mean, unit sample standard deviation), then project on the ``dims``
    leading principal axes (eigenvectors of the covariance, by decreasing eigenvalue).

    Columns with no spread are only centred (a division by their zero deviation would give NaN). Each axis
    is oriented so that its largest loading is positive, which makes the result reproducible.
    """
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    mean = work.mean(0)
    std = work.std(0) if work.shape[0] > 1 else torch.zeros_like(mean)
    flat = ~(std > torch.finfo(work.dtype).eps * 8 * mean.abs().clamp(min=1))
    z = (work - mean) / torch.where(flat, torch.ones_like(std), std)
    z = z - z.mean(0)
    _, vectors = torch.linalg.eigh(z.T @ z)
    axes = vectors.flip(1)[:, :dims]
    pivot = axes.abs().argmax(0)
    signs = torch.sign(axes[pivot, torch.arange(dims, device=axes.device)])
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    return (z @ axes).to(x.dtype)


class _Rows:
    """Batches of rows gathered into one tensor, preallocated when the total row count is known."""

    def __init__(self, total: int | None, device: torch.device) -> None:
        self.total, self.device = total, device
        self.buffer: Tensor | None = None
        self.parts: list[Tensor] = []
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.to(self.device)
        if self.buffer is None and not self.parts and self.total is not None and self.total >= x.shape[0]:
            self.buffer = x.new_empty((self.total, *x.shape[1:]))
        if self.buffer is not None and self.count + x.shape[0] > self.buffer.shape[0]:
            # the dataset yielded more rows than its len() promised: fall back to concatenation
            self.parts, self.buffer = [self.buffer[: self.count]], None
        if self.buffer is not None:
            self.buffer[self.count : self.count + x.shape[0]] = x
        else:
            self.parts.append(x)
        self.count += x.shape[0]

    def result(self) -> Tensor:
        if self.buffer is not None:
            return self.buffer[: self.count]
        return torch.cat(self.parts)


class _LabelRanks:
    """Maps the labels of each level to their rank among that level's values in ``dataset_labels``."""

    def __init__(self, owner: str, dataset_labels: Any) -> None:
        labels = torch.as_tensor(np.asarray(dataset_labels))
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] == 0:
            rule = "a non-empty 1-D sequence of labels, or 2-D of shape (N, levels)"
            raise ValueError(message(owner, "dataset_labels", rule, Described(f"shape {tuple(labels.shape)}")))
        self.owner = owner
        self.tables = [torch.unique(labels[:, h]) for h in range(labels.shape[1])]

    def __call__(self, labels: Tensor) -> Tensor:
        if labels.shape[1] > len(self.tables):
            rule = f"labelled with at most {len(self.tables)} level(s), like `dataset_labels`"
            raise ValueError(message(self.owner, "dataset", rule, Described(f"{labels.shape[1]} levels")))
        columns = []
        for h in range(labels.shape[1]):
            table = self.tables[h].to(labels.device, labels.dtype)
            column = labels[:, h].contiguous()
            ranks = torch.searchsorted(table, column).clamp(max=table.shape[0] - 1)
            unknown = table[ranks] != column
            if bool(unknown.any()):
                rule = "a superset of the labels of the data, at every level"
                value = Described(f"level {h} without label {column[unknown][0].item()!r}")
                raise ValueError(message(self.owner, "dataset_labels", rule, value))
            columns.append(ranks)
        return torch.stack(columns, dim=1)


class BaseTester:
    """Embeds the splits of a dataset dictionary and scores each query split against its reference splits.

    The shared machinery of the testers (Musgrave, Belongie and Lim, 2020, arXiv:2003.08505); a concrete
    tester says how one label level of a query set is scored against a reference set. Constructor
    parameters, defaults and methods are pytorch-metric-learning 2.9's.

    Data: each batch of a split's ``DataLoader``, after ``data_and_label_getter``, is ``(inputs, labels)``.
    ``labels`` is a ``(B,)`` tensor, a ``(B, levels)`` tensor, or a list of ``(B,)`` tensors (one per level,
    what the default collate makes of per-item label tuples); embeddings come back with labels of shape
    ``(N, 1)`` or ``(N, levels)``. ``inputs`` (a tensor, or a dict / list of tensors) is moved to
    ``data_device`` and cast to ``dtype`` before ``trunk_model``.

    Differences from pytorch-metric-learning 2.9, each a fix:

    * the models' train/eval modes (of every submodule) are restored after testing and after
      :meth:`get_all_embeddings`; pytorch-metric-learning leaves them in eval mode;
    * ``splits_to_eval`` is checked before any embedding is computed (unknown split names raise ``KeyError``
      with close matches) and is not modified in place; splits are embedded in the order they are named;
    * a dataset without labels, an empty dataset and a label level beyond the labels raise ``ValueError``
      instead of an unpacking error, an ``AssertionError`` or a silent misreading;
    * PCA (``pca``) is exact (eigenvectors of the covariance, in the embeddings' dtype, no faiss needed) and
      leaves constant columns at 0 instead of dividing by a zero deviation;
    * ``AVERAGE_{metric}`` keys average every key the calculator returned (so ``precision_at_{k}`` keys of
      ``at_k`` are averaged too);
    * ``set_min_label_to_zero=True`` without ``dataset_labels`` is rejected at construction;
    * the returned ``all_accuracies`` is a plain ``dict``; labels keep their dtype and stay on the device;
    * ``visualizer_hook`` is the stored callable itself (pytorch-metric-learning wraps it in a method and
      keeps the callable as ``original_visualizer_hook``).

    Args:
        normalize_embeddings: L2-normalise the embeddings (after PCA) before scoring.
        use_trunk_output: score the trunk's output and ignore ``embedder_model``.
        batch_size: batch size of the evaluation ``DataLoader``, ``>= 1``.
        dataloader_num_workers: its worker processes, ``>= 0``.
        pca: reduce the standardised embeddings to this many principal components; None or 0: off.
        data_device: where inputs go and embeddings are gathered; None: CUDA when available, else CPU.
        dtype: cast the inputs to this dtype; None: keep theirs.
        data_and_label_getter: ``fn(batch) -> (inputs, labels)``; None: the batch itself.
        label_hierarchy_level: the label level(s) to score: an integer, a list of integers, or ``"all"``.
        end_of_testing_hook: ``fn(tester)`` called at the end of :meth:`test` (while
            ``tester.embeddings_and_labels`` still exists); None: log the accuracies.
        dataset_labels: every label of the data (1-D, or ``(N, levels)``), for ``set_min_label_to_zero``.
        set_min_label_to_zero: map each level's labels to their rank among that level's ``dataset_labels``.
        accuracy_calculator: None: ``AccuracyCalculator()`` (all default metrics).
        visualizer: an object with ``fit_transform(numpy_array) -> 2-D coordinates`` (e.g. ``umap.UMAP()``),
            run on every embedded split.
        visualizer_hook: ``fn(visualizer, coordinates, labels, split_name, keyname, epoch)`` called with the
            visualizer's output, once per scored label level.

    Attributes:
        all_accuracies: ``{query_split: {"epoch": epoch, "{metric}_level{L}": value, ...}}`` of the last test.
        reference_split_names: ``{query_split: [reference splits]}`` of the last test (the query first when
            it is among its references).
        label_levels: the levels scored for the last query split.
        embeddings_and_labels: ``{split: (embeddings, labels)}``, only while :meth:`test` runs (hooks).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.tensor([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 1]))
        >>> emb, labels = GlobalEmbeddingSpaceTester(dataloader_num_workers=0).get_all_embeddings(
        ...     data, torch.nn.Identity())
        >>> tuple(emb.shape), labels.tolist()
        ((3, 2), [[0], [0], [1]])
    """

    #: whether every query split must be its own and only reference split.
    _self_reference_only = False

    def __init__(
        self,
        normalize_embeddings: bool = True,
        use_trunk_output: bool = False,
        batch_size: int = 32,
        dataloader_num_workers: int = 2,
        pca: int | None = None,
        data_device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        data_and_label_getter: Callable[[Any], Sequence[Any]] | None = None,
        label_hierarchy_level: LevelSpec = 0,
        end_of_testing_hook: Callable[[BaseTester], Any] | None = None,
        dataset_labels: Any = None,
        set_min_label_to_zero: bool = False,
        accuracy_calculator: AccuracyCalculator | None = None,
        visualizer: Any = None,
        visualizer_hook: Callable[..., Any] | None = None,
    ) -> None:
        owner = type(self).__name__
        self.normalize_embeddings = bool(normalize_embeddings)
        self.use_trunk_output = bool(use_trunk_output)
        self.batch_size = _check_count(owner, "batch_size", batch_size, 1)
        self.dataloader_num_workers = _check_count(owner, "dataloader_num_workers", dataloader_num_workers, 0)
        # pytorch-metric-learning reads pca=0 as "off", like None
        self.pca = None if pca is None else (_check_count(owner, "pca", pca, 0) or None)
        self.data_device = (
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if data_device is None
            else torch.device(data_device)
        )
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(message(owner, "dtype", "None or a torch.dtype", dtype))
        self.dtype = dtype
        _check_callable(owner, "data_and_label_getter", data_and_label_getter)
        self.data_and_label_getter: Callable[[Any], Any] = (
            data_and_label_getter if data_and_label_getter is not None else _identity
        )
        self.label_hierarchy_level = _check_levels(owner, label_hierarchy_level)
        _check_callable(owner, "end_of_testing_hook", end_of_testing_hook)
        self.end_of_testing_hook = end_of_testing_hook
        self.dataset_labels = dataset_labels
        self.set_min_label_to_zero = bool(set_min_label_to_zero)
        self._label_ranks: _LabelRanks | None = None
        if self.set_min_label_to_zero:
            if dataset_labels is None:
                raise ValueError(message(owner, "dataset_labels", "given when set_min_label_to_zero is True", None))
            self._label_ranks = _LabelRanks(owner, dataset_labels)
        self.accuracy_calculator = AccuracyCalculator() if accuracy_calculator is None else accuracy_calculator
        if visualizer is not None and not callable(getattr(visualizer, "fit_transform", None)):
            rule = "None or an object with a fit_transform method"
            raise TypeError(message(owner, "visualizer", rule, Described(type(visualizer).__name__)))
        self.visualizer = visualizer
        _check_callable(owner, "visualizer_hook", visualizer_hook)
        self.visualizer_hook = visualizer_hook
        self.label_levels: list[int] = []
        self.reference_split_names: dict[str, list[str]] = {}
        self.all_accuracies: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ embeddings

    def get_embeddings_for_eval(self, trunk_model: nn.Module, embedder_model: nn.Module, input_imgs: Any) -> Tensor:
        """Embeddings of one batch of inputs (the trunk's output when ``use_trunk_output``)."""
        trunk_output = trunk_model(_move(input_imgs, self.data_device, self.dtype))
        return trunk_output if self.use_trunk_output else embedder_model(trunk_output)

    def _batch_labels(self, labels: Any, size: int) -> Tensor:
        """One batch's labels as a ``(size, levels)`` tensor (ranked when ``set_min_label_to_zero``)."""
        owner = type(self).__name__
        if isinstance(labels, (list, tuple)) and labels and isinstance(labels[0], (Tensor, np.ndarray)):
            labels = torch.stack(
                [torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x for x in labels], 1
            )
        elif isinstance(labels, (list, tuple, np.ndarray)):
            labels = torch.as_tensor(np.asarray(labels))
        elif not isinstance(labels, Tensor):
            rule = "labelled: batches of (inputs, labels) with labels a tensor, an array or a list of them"
            raise TypeError(message(owner, "dataset", rule, _describe(labels)))
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != size:
            rule = f"labelled with ({size},) or ({size}, levels) labels for a batch of {size} inputs"
            raise ValueError(message(owner, "dataset", rule, Described(f"labels of shape {tuple(labels.shape)}")))
        return self._label_ranks(labels) if self._label_ranks is not None else labels

    def _gather(
        self, dataloader: DataLoader, trunk_model: nn.Module, embedder_model: nn.Module, streams: int
    ) -> tuple[list[Tensor], Tensor]:
        """Embeddings of each input stream of every batch, and the labels, gathered on ``data_device``."""
        owner = type(self).__name__
        try:
            total: int | None = len(dataloader.dataset)  # type: ignore[arg-type]
        except TypeError:
            total = None
        gathered = [_Rows(total, self.data_device) for _ in range(streams)]
        labels = _Rows(total, self.data_device)
        shape = "(inputs, labels) pairs" if streams == 1 else "(anchors, positives, labels) triples"
        with torch.no_grad():
            for batch in tqdm(dataloader, disable=None, leave=False, desc=f"{owner}: embedding"):
                data = self.data_and_label_getter(batch)
                if not isinstance(data, (list, tuple)) or len(data) != streams + 1 or data[-1] is None:
                    rule = f"labelled: its batches (after `data_and_label_getter`) {shape}"
                    raise ValueError(message(owner, "dataset", rule, _describe(data)))
                outputs = [self.get_embeddings_for_eval(trunk_model, embedder_model, x) for x in data[:-1]]
                if any(out.shape[0] != outputs[0].shape[0] for out in outputs):
                    sizes = [out.shape[0] for out in outputs]
                    rule = "made of input streams of equal length"
                    raise ValueError(message(owner, "dataset", rule, Described(f"streams of {sizes} rows")))
                for rows, out in zip(gathered, outputs, strict=True):
                    rows.add(out)
                labels.add(self._batch_labels(data[-1], outputs[0].shape[0]))
        if labels.count == 0:
            raise ValueError(message(owner, "dataset", "non-empty", Described("an empty dataset")))
        return [rows.result() for rows in gathered], labels.result()

    def compute_all_embeddings(
        self, dataloader: DataLoader, trunk_model: nn.Module, embedder_model: nn.Module
    ) -> tuple[Tensor, ...]:
        """``(embeddings, labels)`` of a whole loader, before PCA and normalisation, without gradients."""
        (embeddings,), labels = self._gather(dataloader, trunk_model, embedder_model, 1)
        return embeddings, labels

    def _split_embeddings(
        self, dataloader: DataLoader, trunk_model: nn.Module, embedder_model: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """One split's ``(embeddings, labels)``, one row per scored sample, before normalisation."""
        embeddings, labels = self.compute_all_embeddings(dataloader, trunk_model, embedder_model)
        return embeddings, labels

    def maybe_normalize(self, embeddings: Tensor) -> Tensor:
        """PCA (when ``pca``), then L2 normalisation (when ``normalize_embeddings``)."""
        if self.pca:
            if self.pca > embeddings.shape[1]:
                rule = f"at most the embedding size ({embeddings.shape[1]})"
                raise ValueError(message(type(self).__name__, "pca", rule, self.pca))
            embeddings = _standardized_pca(embeddings, self.pca)
        if self.normalize_embeddings:
            embeddings = F.normalize(embeddings, dim=1)
        return embeddings

    def get_all_embeddings(
        self,
        dataset: Dataset,
        trunk_model: nn.Module,
        embedder_model: nn.Module | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        eval: bool = True,
        return_as_numpy: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(N, D)`` and labels ``(N, 1)`` or ``(N, levels)`` of a whole dataset, in order.

        Args:
            dataset: items batched by the default collate (or ``collate_fn``) into ``(inputs, labels)``.
            trunk_model: the network; its output goes through ``embedder_model`` unless ``use_trunk_output``.
            embedder_model: None: identity.
            collate_fn: the ``DataLoader``'s collate function.
            eval: run the models in eval mode (their modes are restored afterwards).
            return_as_numpy: return numpy arrays instead of tensors.
        """
        embedder = nn.Identity() if embedder_model is None else embedder_model
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.dataloader_num_workers,
            collate_fn=collate_fn,
            pin_memory=False,
        )
        with _eval_mode([trunk_model, embedder], eval):
            embeddings, labels = self._split_embeddings(loader, trunk_model, embedder)
        embeddings = self.maybe_normalize(embeddings)
        if return_as_numpy:
            return embeddings.cpu().numpy(), labels.cpu().numpy()
        return embeddings, labels

    # ------------------------------------------------------------------ names of results

    def label_hierarchy_level_to_str(self, label_hierarchy_level: LevelSpec) -> str:
        """``"0"``, ``"0_2"`` or ``"all"``."""
        if isinstance(label_hierarchy_level, (list, tuple)):
            return "_".join(str(x) for x in label_hierarchy_level)
        return str(label_hierarchy_level)

    def accuracies_keyname(self, metric: str, label_hierarchy_level: LevelSpec = 0, average: bool = False) -> str:
        """``{metric}_level{L}`` (``AVERAGE_{metric}`` with ``average``).

        A level spec of ``"all"`` or a list names the only level scored last, when exactly one was.
        """
        if average:
            return f"AVERAGE_{metric}"
        if (label_hierarchy_level == "all" or isinstance(label_hierarchy_level, (list, tuple))) and len(
            self.label_levels
        ) == 1:
            label_hierarchy_level = self.label_levels[0]
        return f"{metric}_level{self.label_hierarchy_level_to_str(label_hierarchy_level)}"

    def description_suffixes(self, base_name: str) -> str:
        """``base_name`` followed by the settings that change the accuracies (used to name record groups)."""
        if self.pca:
            base_name += f"_pca{self.pca}"
        if self.normalize_embeddings:
            base_name += "_normalized"
        if self.use_trunk_output:
            base_name += "_trunk"
        base_name += f"_{type(self).__name__}_level_{self.label_hierarchy_level_to_str(self.label_hierarchy_level)}"
        describe = getattr(self.accuracy_calculator, "description", None)
        extra = describe() if callable(describe) else ""
        return f"{base_name}_{extra}" if extra else base_name

    # ------------------------------------------------------------------ scoring

    def label_levels_to_evaluate(self, query_labels: Tensor) -> list[int]:
        """The label levels named by ``label_hierarchy_level`` for labels of shape ``(N, levels)``."""
        available = query_labels.shape[1]
        spec = self.label_hierarchy_level
        if isinstance(spec, str):
            return list(range(available))
        levels = [spec] if isinstance(spec, int) else [int(level) for level in spec]
        if max(levels) >= available:
            rule = f"levels below the number of label levels ({available})"
            raise ValueError(message(type(self).__name__, "label_hierarchy_level", rule, spec))
        return levels

    def _accuracy_levels(self, query_labels: Tensor) -> list[int]:
        """The levels that get accuracies (the visualiser sees :meth:`label_levels_to_evaluate`'s)."""
        return self.label_levels_to_evaluate(query_labels)

    def set_reference_and_query(
        self,
        embeddings_and_labels: Mapping[str, tuple[Tensor, Tensor]],
        query_split_name: str,
        reference_split_names: Sequence[str],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(query, query_labels, reference, reference_labels)``; the references concatenated in order."""
        query, query_labels = embeddings_and_labels[query_split_name]
        parts = [embeddings_and_labels[name] for name in reference_split_names]
        widths = {name: labels.shape[1] for name, (_, labels) in zip(reference_split_names, parts, strict=True)}
        if any(width != query_labels.shape[1] for width in widths.values()):
            widths = {query_split_name: query_labels.shape[1], **widths}
            rule = "splits whose labels have the same number of levels"
            raise ValueError(message(type(self).__name__, "dataset_dict", rule, Described(f"levels {widths}")))
        if len(parts) == 1:
            reference, reference_labels = parts[0]
        else:
            reference = torch.cat([emb for emb, _ in parts])
            reference_labels = torch.cat([labels for _, labels in parts])
        return query, query_labels, reference, reference_labels

    def ref_includes_query(self, query_split_name: str, reference_split_names: Sequence[str]) -> bool:
        """Whether the query split is among its references (then each query is left out of its own list)."""
        return query_split_name in reference_split_names

    def _level_accuracies(
        self,
        query: Tensor,
        query_labels: Tensor,
        reference: Tensor,
        reference_labels: Tensor,
        level: int,
        ref_includes_query: bool,
    ) -> dict[str, Any]:
        """``{metric: value}`` of one label level; what distinguishes the testers."""
        raise NotImplementedError(f"{type(self).__name__} does not say how a label level is scored.")

    def calculate_average_accuracies(
        self, accuracies: dict[str, Any], metrics: Sequence[str], label_levels: Sequence[int]
    ) -> None:
        """Add ``AVERAGE_{metric}``: the mean of ``{metric}_level{L}`` over ``label_levels``."""
        for metric in metrics:
            total = 0.0
            for level in label_levels:
                total += accuracies[self.accuracies_keyname(metric, label_hierarchy_level=level)]
            accuracies[self.accuracies_keyname(metric, average=True)] = total / len(label_levels)

    def do_knn_and_accuracies(
        self,
        accuracies: dict[str, Any],
        embeddings_and_labels: Mapping[str, tuple[Tensor, Tensor]],
        query_split_name: str,
        reference_split_names: Sequence[str],
    ) -> None:
        """Score one query split against its references, level by level, into ``accuracies``."""
        query, query_labels, reference, reference_labels = self.set_reference_and_query(
            embeddings_and_labels, query_split_name, reference_split_names
        )
        includes = self.ref_includes_query(query_split_name, reference_split_names)
        self.label_levels = self._accuracy_levels(query_labels)
        metrics: list[str] = []
        for level in self.label_levels:
            values = self._level_accuracies(query, query_labels, reference, reference_labels, level, includes)
            metrics = metrics or list(values)
            for metric, value in values.items():
                accuracies[self.accuracies_keyname(metric, label_hierarchy_level=level)] = value
        if len(self.label_levels) > 1:
            self.calculate_average_accuracies(accuracies, metrics, self.label_levels)

    def maybe_visualize(self, embeddings_and_labels: Mapping[str, tuple[Tensor, Tensor]], epoch: int) -> None:
        """Run ``visualizer`` on each split and pass its output to ``visualizer_hook`` for each label level."""
        if self.visualizer is None:
            return
        name = type(self.visualizer).__name__
        for split_name, (embeddings, labels) in embeddings_and_labels.items():
            logger.info("Running %s on the %s split", name, split_name)
            coordinates = self.visualizer.fit_transform(embeddings.cpu().numpy())
            if self.visualizer_hook is None:
                continue
            for level in self.label_levels_to_evaluate(labels):
                keyname = self.accuracies_keyname(name, label_hierarchy_level=level)
                self.visualizer_hook(
                    self.visualizer, coordinates, labels[:, level].cpu().numpy(), split_name, keyname, epoch
                )

    def _plan(self, dataset_dict: Mapping[str, Dataset], splits_to_eval: Any) -> SplitPlan:
        """Validated ``[(query, [references])]``, the query first among its references when it is one."""
        owner = type(self).__name__
        if splits_to_eval is None:
            return [(name, [name]) for name in dataset_dict]
        if not isinstance(splits_to_eval, (list, tuple)):
            rule = "None or a list of (query_split, [reference_splits]) pairs"
            raise TypeError(message(owner, "splits_to_eval", rule, Described(type(splits_to_eval).__name__)))
        plan: SplitPlan = []
        for entry in splits_to_eval:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], (list, tuple))):
                raise TypeError(
                    message(owner, "splits_to_eval", "a list of (query_split, [reference_splits]) pairs", entry)
                )
            query, references = entry[0], list(dict.fromkeys(entry[1]))
            for name in [query, *references]:
                if name not in dataset_dict:
                    known = ", ".join(repr(k) for k in dataset_dict)
                    hint = close_matches_hint(name, [str(k) for k in dataset_dict]) if isinstance(name, str) else ""
                    rule = f"made of split names of `dataset_dict` ({known})"
                    raise KeyError(message(owner, "splits_to_eval", rule, name) + hint)
            if not references:
                rule = "pairs with at least one reference split"
                raise ValueError(message(owner, "splits_to_eval", rule, entry))
            if any(query == done for done, _ in plan):
                raise ValueError(message(owner, "splits_to_eval", "a list naming each query split once", query))
            if query in references:
                references = [query, *(name for name in references if name != query)]
            if self._self_reference_only and references != [query]:
                rule = "pairs of a split with itself only, like ('val', ['val'])"
                raise ValueError(message(owner, "splits_to_eval", rule, entry))
            plan.append((query, references))
        return plan

    def test(
        self,
        dataset_dict: Mapping[str, Dataset],
        epoch: int,
        trunk_model: nn.Module,
        embedder_model: nn.Module | None = None,
        splits_to_eval: Sequence[tuple[str, Sequence[str]]] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Embed the needed splits and score every query split against its reference splits.

        Args:
            dataset_dict: ``{split_name: dataset}``.
            epoch: stored under ``"epoch"`` in each split's accuracies.
            trunk_model: the network (its modes are restored afterwards).
            embedder_model: applied to the trunk's output; None: identity.
            splits_to_eval: ``[(query_split, [reference_split, ...]), ...]``; None: each split against itself.
            collate_fn: the ``DataLoader``'s collate function.

        Returns:
            ``{query_split: {"epoch": epoch, "{metric}_level{L}": value, ...}}`` (plus ``AVERAGE_{metric}``
            when several levels are scored); also kept as ``all_accuracies``.
        """
        logger.info("Evaluating epoch %s", epoch)
        plan = self._plan(dataset_dict, splits_to_eval)
        embedder = nn.Identity() if embedder_model is None else embedder_model
        names = list(dict.fromkeys(name for query, references in plan for name in (query, *references)))
        embedded: dict[str, tuple[Tensor, Tensor]] = {}
        for name in names:
            logger.info("Computing embeddings of the %s split", name)
            embedded[name] = self.get_all_embeddings(dataset_dict[name], trunk_model, embedder, collate_fn)  # type: ignore[assignment]
        self.embeddings_and_labels = embedded
        try:
            self.maybe_visualize(embedded, epoch)
            self.all_accuracies = {}
            for query, references in plan:
                logger.info("Computing accuracies of the %s split against %s", query, references)
                accuracies: dict[str, Any] = {"epoch": epoch}
                self.all_accuracies[query] = accuracies
                self.reference_split_names[query] = references
                self.do_knn_and_accuracies(accuracies, embedded, query, references)
            if self.end_of_testing_hook is not None:
                self.end_of_testing_hook(self)
            else:
                logger.info("%s", self.all_accuracies)
        finally:
            del self.embeddings_and_labels
        return self.all_accuracies


def _identity(x: Any) -> Any:
    return x


class GlobalEmbeddingSpaceTester(BaseTester):
    """Scores each query split against the whole reference set, one label level at a time.

    The evaluation of Musgrave, Belongie and Lim, 2020, "A Metric Learning Reality Check", arXiv:2003.08505:
    every query is ranked against all references (the other queries too, when the query split is among its
    references). Parameters and differences from pytorch-metric-learning: see :class:`BaseTester`.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from dmlkit.evaluation import AccuracyCalculator
        >>> x = torch.tensor([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.2], [0.9, 0.1]])
        >>> val = TensorDataset(x, torch.tensor([0, 0, 1, 1, 0]))
        >>> tester = GlobalEmbeddingSpaceTester(
        ...     dataloader_num_workers=0, accuracy_calculator=AccuracyCalculator(include=("precision_at_1",)))
        >>> tester.test({"val": val}, epoch=3, trunk_model=torch.nn.Identity())
        {'val': {'epoch': 3, 'precision_at_1_level0': 0.4}}
    """

    def _level_accuracies(
        self,
        query: Tensor,
        query_labels: Tensor,
        reference: Tensor,
        reference_labels: Tensor,
        level: int,
        ref_includes_query: bool,
    ) -> dict[str, Any]:
        return self.accuracy_calculator.get_accuracy(
            query, query_labels[:, level], reference, reference_labels[:, level], ref_includes_query
        )


class WithSameParentLabelTester(BaseTester):
    """Scores label level ``L`` separately inside each group of samples sharing their level ``L + 1`` label.

    For hierarchical labels (level 0 the finest): at level ``L``, the queries whose parent label (level
    ``L + 1``) is ``p`` are ranked only against the references whose parent label is ``p``, for every
    parent label ``p`` present among the queries; each metric is the plain mean of the per-group values.
    This measures how well the fine classes are told apart within their coarse class, the fine-grained
    protocol of e.g. Van Horn et al., 2018, "The iNaturalist Species Classification and Detection Dataset",
    arXiv:1707.06642, with the retrieval metrics of Musgrave, Belongie and Lim, 2020, arXiv:2003.08505.

    Only levels with a parent can be scored: ``"all"`` means every level but the last; an explicit level
    without a parent is an error (pytorch-metric-learning 2.9 silently drops it from a list). Other
    parameters and differences: see :class:`BaseTester`.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from dmlkit.evaluation import AccuracyCalculator
        >>> x = torch.tensor([[0.0], [0.1], [0.3], [0.4], [5.0], [5.1], [5.3], [5.4]])
        >>> fine_and_parent = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0], [2, 1], [3, 1], [2, 1], [3, 1]])
        >>> tester = WithSameParentLabelTester(normalize_embeddings=False, dataloader_num_workers=0,
        ...     accuracy_calculator=AccuracyCalculator(include=("precision_at_1",)))
        >>> tester.test({"val": TensorDataset(x, fine_and_parent)}, epoch=0, trunk_model=torch.nn.Identity())
        {'val': {'epoch': 0, 'precision_at_1_level0': 0.5}}
    """

    def _accuracy_levels(self, query_labels: Tensor) -> list[int]:
        available = query_labels.shape[1]
        levels = self.label_levels_to_evaluate(query_labels)
        if self.label_hierarchy_level == "all":
            levels = levels[:-1]
        if not levels or max(levels) >= available - 1:
            rule = f"levels that have a parent level, below {available - 1} (the labels have {available} levels)"
            raise ValueError(message(type(self).__name__, "label_hierarchy_level", rule, self.label_hierarchy_level))
        return levels

    def _level_accuracies(
        self,
        query: Tensor,
        query_labels: Tensor,
        reference: Tensor,
        reference_labels: Tensor,
        level: int,
        ref_includes_query: bool,
    ) -> dict[str, Any]:
        query_parents, reference_parents = query_labels[:, level + 1], reference_labels[:, level + 1]
        per_group: dict[str, list[Any]] = {}
        for parent in torch.unique(query_parents):
            in_query, in_reference = query_parents == parent, reference_parents == parent
            values = self.accuracy_calculator.get_accuracy(
                query[in_query],
                query_labels[in_query, level],
                reference[in_reference],
                reference_labels[in_reference, level],
                ref_includes_query,
            )
            for metric, value in values.items():
                per_group.setdefault(metric, []).append(value)
        out: dict[str, Any] = {}
        for metric, group_values in per_group.items():
            mean = np.mean(group_values, axis=0)
            out[metric] = float(mean) if np.ndim(mean) == 0 else mean.tolist()
        return out


class GlobalTwoStreamEmbeddingSpaceTester(GlobalEmbeddingSpaceTester):
    """Scores two-stream data: each anchor is a query ranked against the second stream (its positives).

    Each item is ``(anchor, positive, label...)``, e.g. a sentence and its paraphrase or an image and its
    caption (two views of one sample, as in Wu et al., 2018, "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", arXiv:1805.01978). Both streams go through the same models;
    the anchors of a split are the queries and the positives of the same split the references (the anchors
    are not among the references), both with the item's label; the retrieval metrics are those of
    Musgrave, Belongie and Lim, 2020, arXiv:2003.08505. A split can only be scored against itself.
    :meth:`get_all_embeddings` returns the anchors' embeddings followed by the positives', with the labels
    repeated (``(2N, 1)`` or ``(2N, levels)``).

    Differences from pytorch-metric-learning 2.9, besides :class:`BaseTester`'s: embeddings keep their dtype
    and ``data_device`` (it gathers them in float32 on the CPU); labels keep every level, so any
    ``label_hierarchy_level`` works (it fails for an integer level above 0); PCA is fitted once on both
    streams together, so anchors and positives share one projection (it fits one per stream).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from dmlkit.evaluation import AccuracyCalculator
        >>> anchors = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.2]])
        >>> positives = torch.tensor([[0.2, 1.0], [1.0, 0.1], [1.0, 0.5]])
        >>> tester = GlobalTwoStreamEmbeddingSpaceTester(dataloader_num_workers=0,
        ...     accuracy_calculator=AccuracyCalculator(include=("precision_at_1",)))
        >>> data = TensorDataset(anchors, positives, torch.tensor([0, 1, 2]))
        >>> tester.test({"pairs": data}, epoch=0, trunk_model=torch.nn.Identity())
        {'pairs': {'epoch': 0, 'precision_at_1_level0': 0.6666666666666666}}
    """

    _self_reference_only = True

    def compute_all_embeddings(
        self, dataloader: DataLoader, trunk_model: nn.Module, embedder_model: nn.Module
    ) -> tuple[Tensor, ...]:
        """``(anchor_embeddings, positive_embeddings, labels)`` of a whole loader, before normalisation."""
        (anchors, positives), labels = self._gather(dataloader, trunk_model, embedder_model, 2)
        return anchors, positives, labels

    def _split_embeddings(
        self, dataloader: DataLoader, trunk_model: nn.Module, embedder_model: nn.Module
    ) -> tuple[Tensor, Tensor]:
        anchors, positives, labels = self.compute_all_embeddings(dataloader, trunk_model, embedder_model)
        return torch.cat([anchors, positives]), torch.cat([labels, labels])

    def set_reference_and_query(
        self,
        embeddings_and_labels: Mapping[str, tuple[Tensor, Tensor]],
        query_split_name: str,
        reference_split_names: Sequence[str],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The anchors (first half) as queries, the positives (second half) as references."""
        if list(reference_split_names) != [query_split_name]:
            rule = "pairs of a split with itself only, like ('val', ['val'])"
            entry = (query_split_name, list(reference_split_names))
            raise ValueError(message(type(self).__name__, "splits_to_eval", rule, entry))
        embeddings, labels = embeddings_and_labels[query_split_name]
        half = embeddings.shape[0] // 2
        return embeddings[:half], labels[:half], embeddings[half:], labels[half:]

    def ref_includes_query(self, query_split_name: str, reference_split_names: Sequence[str]) -> bool:
        return False
