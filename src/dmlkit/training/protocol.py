"""Benchmarks users can trust: the reality-check protocol of Musgrave, Belongie and Lim (2020).

"A Metric Learning Reality Check" (Musgrave, Belongie and Lim, ECCV 2020, arXiv:2003.08505) showed that
many published gains of metric-learning losses vanish once every loss gets the same network, embedding
size, batch size, sampler and iteration budget, hyperparameters are chosen on a validation set of classes
disjoint from the test classes, and accuracy is measured by MAP@R. This module runs that protocol:

1. the classes are sorted and halved (:func:`~dmlkit.data.class_halves_split`): the first half for
   training and validation, the second half for the final test;
2. the first half is cut into ``k`` class-disjoint folds (:func:`~dmlkit.data.class_disjoint_kfold`):
   fold ``i`` trains on the other ``k - 1`` class groups and validates on group ``i``; the epoch with the
   best validation MAP@R is kept;
3. hyperparameters are either fixed in the configuration or searched on the mean validation MAP@R of the
   ``k`` folds by Optuna's TPE sampler (Bergstra et al., 2011) with a seed and a budget of trials;
4. with the chosen hyperparameters, each fold's model embeds the test half: the **separate** result is the
   mean over the ``k`` models, the **concatenated** result evaluates the ``k`` L2-normalised embeddings
   side by side (the paper's "concatenated"); MAP@R, R-precision and precision@1 come with a 95%
   confidence interval (Student's t) across folds, or across seeds when several are configured.

Every entry of a configuration is one loss (with an optional miner) trained by the same
:class:`~dmlkit.training.Trainer` recipe. ``library: pml`` builds the same loss and miner from
pytorch-metric-learning's classes instead (a control: same seeds, same data order, same network), and
``library: both`` adds one entry of each. Results are written atomically to an output folder as JSON and a
markdown table; finished (entry, seed, fold) cells found there are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from .._atomic import atomic_write
from .._validation import check_range, close_matches_hint, message
from ..data import DATASET_NAMES, class_disjoint_kfold, class_halves_split, load_dataset
from ..errors import MissingDependencyError
from ..losses import LOSSES
from ..miners import MINERS
from ..registry import Registry
from ..samplers import MPerClassSampler
from .components import OPTIMIZERS, SUBCOMPONENTS, accepted_params, build_component, check_component, split_spec
from .config import ComponentConfig, ModelConfig, SamplerConfig, TrainConfig, read_mapping_file
from .loop import embed, indices_of_classes, model_spec
from .models import build_model, check_model_name, fit_projections, training_width
from .trainer import Trainer, Validation

__all__ = [
    "BENCHMARK_FORMAT_VERSION",
    "METRICS",
    "LIBRARIES",
    "SearchConfig",
    "LossEntry",
    "BenchmarkData",
    "BenchmarkConfig",
    "ProtocolData",
    "FoldRun",
    "load_benchmark_config",
    "quick_config",
    "control_pairs",
    "make_protocol_data",
    "load_protocol_data",
    "confidence_interval",
    "concatenated_embeddings",
    "retrieval_scores",
    "build_loss_and_miner",
    "search_hyperparameters",
    "train_fold",
    "reference_results",
    "run_benchmark",
    "results_markdown",
    "environment_info",
]

#: the version of the files a benchmark writes (cells, searches, results); loading checks it.
BENCHMARK_FORMAT_VERSION = 1
#: the test metrics, in report order (Musgrave et al., 2020, arXiv:2003.08505).
METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
#: where an entry's loss and miner classes come from; ``both`` expands into one entry of each.
LIBRARIES = ("dmlkit", "pml", "both")
_SHORT = {"precision_at_1": "P@1", "r_precision": "R-Prec", "mean_average_precision_at_r": "MAP@R"}
_OWNER = "BenchmarkConfig"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# Configuration ---------------------------------------------------------------------------------------


@dataclass
class SearchConfig:
    """A hyperparameter search budget and space for one entry.

    ``space`` maps ``"loss.<argument>"``, ``"miner.<argument>"`` or ``"loss_lr"`` to ``{"low": a, "high": b}``
    (a float; ``"log": true`` for a log scale, ``"step"`` for a grid, ``"int": true`` for integers) or
    ``{"choices": [...]}``. ``trials = 0`` means no search: the configured values are used as they are.

    Example:
        >>> SearchConfig(trials=8, space={"loss.margin": {"low": 0.0, "high": 0.5}}).trials
        8
    """

    trials: int = 0
    seed: int = 0
    space: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LossEntry:
    """One row of a benchmark: a loss, an optional miner, the library that provides them, and its search.

    Args:
        loss: the loss, by dmlkit registry key (``"triplet_margin"``) or class name (``"TripletMarginLoss"``),
            with its constructor arguments; ``num_classes`` and ``embedding_size`` are filled in when the class
            takes them.
        miner: the miner, likewise, or None.
        library: ``"dmlkit"`` or ``"pml"`` (pytorch-metric-learning's class of the same name and arguments).
        label: the name in reports and in the output folder (default: the class names, with `` (PML)`` added for
            pytorch-metric-learning's entry; with ``library: both``, a given label gets it too).
        loss_lr: learning rate of the loss's own parameters (proxies, class weights); None: the trunk's.
        search: the hyperparameter search (none by default).

    Example:
        >>> entry = BenchmarkConfig.from_dict({"losses": [{"loss": "TripletMarginLoss", "library": "pml"}]}).losses[0]
        >>> entry.loss.name, entry.label
        ('triplet_margin', 'TripletMarginLoss (PML)')
    """

    loss: ComponentConfig
    miner: ComponentConfig | None = None
    library: str = "dmlkit"
    label: str = ""
    loss_lr: float | None = None
    search: SearchConfig = field(default_factory=SearchConfig)

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label).strip("_") or "entry"


@dataclass
class BenchmarkData:
    """The data set (a name of :data:`~dmlkit.data.DATASET_NAMES`), its folder, and a cap per class.

    Data sets with an official test split (MNIST, Fashion-MNIST) take the first half of the classes from the
    training split and the second half from the test split; others split one set of samples by class.
    ``max_per_class`` keeps the first that many samples of each class (None: all).

    Example:
        >>> BenchmarkConfig.from_dict({"data": {"name": "mnist", "max_per_class": 600}, "losses": ["ntxent"]}).data
        BenchmarkData(name='mnist', root=None, max_per_class=600)
    """

    name: str = "digits"
    root: str | None = None
    max_per_class: int | None = None


@dataclass
class BenchmarkConfig:
    """Everything a benchmark depends on; the same recipe for every entry of ``losses``.

    Written in a file as a mapping: ``title``, ``data`` (:class:`BenchmarkData`), ``model``
    (:class:`~dmlkit.training.config.ModelConfig`), ``sampler`` (``m`` per class, ``batch_size``),
    ``optimizer`` (``{"name": "adam", "lr": ...}``), ``epochs`` and ``iterations_per_epoch`` (the budget
    of every fold; validation after each epoch), ``folds`` (``k``), ``fold_seed`` (None: contiguous class
    groups), ``seeds`` (one run of the ``k`` folds per seed), ``dtype`` (``float32`` or ``float64``),
    ``eval_batch_size`` and ``losses`` (a list of :class:`LossEntry` mappings). Unknown keys raise
    ``KeyError`` with suggestions. The defaults of ``folds`` (4) and of the sampler (batches of 32, 4 per
    class) are the paper's; they need a data set with at least 8 training classes.

    Example:
        >>> config = BenchmarkConfig.from_dict({"folds": 2, "losses": [{"loss": "contrastive", "library": "both"}]})
        >>> [entry.label for entry in config.losses]
        ['ContrastiveLoss', 'ContrastiveLoss (PML)']
        >>> BenchmarkConfig.from_dict(config.to_dict()) == config
        True
    """

    losses: list[LossEntry]
    title: str = "benchmark"
    data: BenchmarkData = field(default_factory=BenchmarkData)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(m=4, batch_size=32))
    optimizer: ComponentConfig = field(default_factory=lambda: ComponentConfig("adam", {"lr": 0.001}))
    epochs: int = 1
    iterations_per_epoch: int = 100
    folds: int = 4
    fold_seed: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    dtype: str = "float32"
    eval_batch_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``library: both`` already expanded), with ``"format_version"``."""
        body = dataclasses.asdict(self)
        body["optimizer"] = self.optimizer.to_dict()
        body["losses"] = [
            {
                "loss": entry.loss.to_dict(),
                "miner": None if entry.miner is None else entry.miner.to_dict(),
                "library": entry.library,
                "label": entry.label,
                "loss_lr": entry.loss_lr,
                "search": dataclasses.asdict(entry.search),
            }
            for entry in self.losses
        ]
        return {"format_version": BENCHMARK_FORMAT_VERSION, **body}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkConfig:
        """Build and check a configuration from a mapping (as read from a JSON or YAML file).

        Raises:
            KeyError: an unknown key, loss or miner name, or argument, with suggestions.
            TypeError, ValueError: a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise TypeError(message(_OWNER, "config", "a mapping of keys to values", data))
        allowed = [f.name for f in dataclasses.fields(cls)] + ["format_version"]
        _check_keys(data, allowed, "")
        version = data.get("format_version", BENCHMARK_FORMAT_VERSION)
        if version != BENCHMARK_FORMAT_VERSION:
            raise ValueError(message(_OWNER, "format_version", str(BENCHMARK_FORMAT_VERSION), version))
        if "losses" not in data:
            raise KeyError("Benchmark config: `losses` is required (a list of {loss: ..., miner: ...} entries).")
        config = cls(losses=[])
        config.title = _typed(data.get("title", config.title), str, "title")
        config.data = _dataclass_section(BenchmarkData, data.get("data", {}), "data")
        config.model = _dataclass_section(ModelConfig, data.get("model", {}), "model")
        config.sampler = _dataclass_section(SamplerConfig, data.get("sampler", {"m": 4, "batch_size": 32}), "sampler")
        if "optimizer" in data:
            name, params = split_spec(data["optimizer"], "optimizer")
            check_component(OPTIMIZERS, name, params, "optimizer")
            config.optimizer = ComponentConfig(name, copy.deepcopy(params))
        for key in ("epochs", "iterations_per_epoch", "folds", "eval_batch_size"):
            if key in data:
                setattr(config, key, _typed(data[key], int, key))
        if data.get("fold_seed") is not None:
            config.fold_seed = _typed(data["fold_seed"], int, "fold_seed")
        if "seeds" in data:
            seeds = data["seeds"]
            if not isinstance(seeds, list) or not seeds:
                raise TypeError(message(_OWNER, "seeds", "a non-empty list of integers", seeds))
            config.seeds = [_typed(s, int, "seeds") for s in seeds]
        config.dtype = _typed(data.get("dtype", config.dtype), str, "dtype")
        raw_losses = data["losses"]
        if not isinstance(raw_losses, list) or not raw_losses:
            raise TypeError(message(_OWNER, "losses", "a non-empty list of entries", raw_losses))
        for i, raw in enumerate(raw_losses):
            config.losses.extend(_entries(raw, f"losses[{i}]"))
        config.validate()
        return config

    def validate(self) -> None:
        """Check every value; raise ``KeyError``, ``TypeError`` or ``ValueError`` on the first problem."""
        if self.data.name not in DATASET_NAMES:
            hint = close_matches_hint(self.data.name, DATASET_NAMES)
            raise KeyError(
                f"Config key 'data.name': Unknown dataset {self.data.name!r}.{hint} Known: {', '.join(DATASET_NAMES)}."
            )
        if self.data.max_per_class is not None:
            check_range(_OWNER, "data.max_per_class", self.data.max_per_class, low=2, integer=True)
        model = self.model
        for size in model.hidden:
            check_range(_OWNER, "model.hidden", size, low=1, integer=True)
        check_range(_OWNER, "model.embedding_size", model.embedding_size, low=1, integer=True)
        check_model_name(_OWNER, model.name)
        check_range(_OWNER, "sampler.m", self.sampler.m, low=1, integer=True)
        check_range(_OWNER, "sampler.batch_size", self.sampler.batch_size, low=2, integer=True)
        if self.sampler.batch_size % self.sampler.m:
            rule = f"a multiple of `sampler.m` ({self.sampler.m})"
            raise ValueError(message(_OWNER, "sampler.batch_size", rule, self.sampler.batch_size))
        for key in ("epochs", "iterations_per_epoch", "eval_batch_size"):
            check_range(_OWNER, key, getattr(self, key), low=1, integer=True)
        check_range(_OWNER, "folds", self.folds, low=2, integer=True)
        if self.fold_seed is not None:
            check_range(_OWNER, "fold_seed", self.fold_seed, low=0, integer=True)
        for seed in self.seeds:
            check_range(_OWNER, "seeds", seed, low=0, integer=True)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(message(_OWNER, "seeds", "free of repeated seeds", self.seeds))
        if self.dtype not in _DTYPES:
            raise ValueError(message(_OWNER, "dtype", "'float32' or 'float64'", self.dtype))
        labels = [entry.label for entry in self.losses]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            rule = "distinct labels (give each entry its own `label`)"
            raise ValueError(message(_OWNER, "losses", rule, repeated))


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            full = f"{where}.{key}" if where else str(key)
            hint = close_matches_hint(str(key), allowed)
            raise KeyError(f"Unknown benchmark config key {full!r}.{hint} Known: {', '.join(allowed)}.")


def _typed(value: Any, kind: type, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise TypeError(message(_OWNER, key, f"a {kind.__name__}", value))
    if not isinstance(value, kind):
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        raise TypeError(message(_OWNER, key, names.get(kind, kind.__name__), value))
    return value


def _dataclass_section(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, Mapping):
        raise TypeError(message(_OWNER, key, "a mapping", raw))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(raw, list(fields), key)
    instance = cls()
    defaults = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
    for name, value in raw.items():
        default = defaults[name]
        where = f"{key}.{name}"
        if value is None or default is None:
            setattr(instance, name, value)
        elif isinstance(default, bool):
            setattr(instance, name, _typed(value, bool, where))
        elif isinstance(default, (int, float, str)):
            setattr(instance, name, _typed(value, type(default), where))
        elif isinstance(default, list):
            if not isinstance(value, list):
                raise TypeError(message(_OWNER, where, "a list", value))
            setattr(instance, name, [_typed(v, int, where) for v in value])
        elif isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise TypeError(message(_OWNER, where, "a mapping", value))
            setattr(instance, name, copy.deepcopy(dict(value)))
        else:  # pragma: no cover - every section field is one of the above
            setattr(instance, name, value)
    return instance


def _registry_key(registry: Registry[Any], name: Any, key: str) -> str:
    """The registry key of ``name``, given as a key (``"contrastive"``) or a class name (``"ContrastiveLoss"``)."""
    if not isinstance(name, str):
        raise TypeError(message(_OWNER, f"{key}.name", f"a {registry.family} name (a string)", name))
    if name in registry:
        return name
    for registry_key, cls in registry.items():
        if cls.__name__ == name:
            return registry_key
    known = list(registry)
    hint = close_matches_hint(name, known + [cls.__name__ for cls in registry.values()])
    known_text = ", ".join(sorted(known))
    raise KeyError(f"Config key '{key}.name': Unknown {registry.family} {name!r}.{hint} Known: {known_text}.")


def _component(registry: Registry[Any], spec: Any, key: str) -> ComponentConfig:
    name, params = split_spec(spec, key)
    registry_key = _registry_key(registry, name, key)
    check_component(registry, registry_key, params, key)
    return ComponentConfig(registry_key, copy.deepcopy(params))


def _entries(raw: Any, key: str) -> list[LossEntry]:
    if isinstance(raw, str):
        raw = {"loss": raw}
    if not isinstance(raw, Mapping):
        raise TypeError(message(_OWNER, key, "a mapping {loss: ..., miner: ..., library: ...}", raw))
    _check_keys(raw, ["loss", "miner", "library", "label", "loss_lr", "search"], key)
    if "loss" not in raw:
        raise KeyError(f"Benchmark config: `{key}.loss` is required.")
    loss = _component(LOSSES, raw["loss"], f"{key}.loss")
    miner = None if raw.get("miner") is None else _component(MINERS, raw["miner"], f"{key}.miner")
    library = raw.get("library", "dmlkit")
    if library not in LIBRARIES:
        hint = close_matches_hint(str(library), LIBRARIES)
        raise ValueError(message(_OWNER, f"{key}.library", "one of 'dmlkit', 'pml', 'both'", library) + hint)
    loss_lr = None if raw.get("loss_lr") is None else _typed(raw["loss_lr"], float, f"{key}.loss_lr")
    if loss_lr is not None:
        check_range(_OWNER, f"{key}.loss_lr", loss_lr, low=0.0, low_inclusive=False)
    search = _search(raw.get("search", {}), loss, miner, f"{key}.search")
    label = raw.get("label")
    if label is not None:
        _typed(label, str, f"{key}.label")
    libraries = ["dmlkit", "pml"] if library == "both" else [library]
    out = []
    for lib in libraries:
        text = label or _default_label(loss, miner)
        if lib == "pml" and (label is None or library == "both"):
            text += " (PML)"
        entry = LossEntry(copy.deepcopy(loss), copy.deepcopy(miner), lib, text, loss_lr, copy.deepcopy(search))
        out.append(entry)
    return out


def _default_label(loss: ComponentConfig, miner: ComponentConfig | None) -> str:
    text = LOSSES[loss.name].__name__
    return text if miner is None else f"{text} + {MINERS[miner.name].__name__}"


def _search(raw: Any, loss: ComponentConfig, miner: ComponentConfig | None, key: str) -> SearchConfig:
    if not isinstance(raw, Mapping):
        raise TypeError(message(_OWNER, key, "a mapping {trials: ..., seed: ..., space: ...}", raw))
    _check_keys(raw, ["trials", "seed", "space"], key)
    search = SearchConfig(
        trials=_typed(raw.get("trials", 0), int, f"{key}.trials"),
        seed=_typed(raw.get("seed", 0), int, f"{key}.seed"),
        space=copy.deepcopy(dict(raw.get("space") or {})),
    )
    check_range(_OWNER, f"{key}.trials", search.trials, low=0, integer=True)
    check_range(_OWNER, f"{key}.seed", search.seed, low=0, integer=True)
    if search.trials and not search.space:
        raise ValueError(message(_OWNER, f"{key}.space", "a non-empty mapping when `trials` > 0", search.space))
    for name, spec in search.space.items():
        _check_space_item(name, spec, loss, miner, f"{key}.space")
    return search


def _check_space_item(name: str, spec: Any, loss: ComponentConfig, miner: ComponentConfig | None, key: str) -> None:
    where = f"{key}.{name}"
    target, _, arg = name.partition(".")
    if name != "loss_lr":
        if target not in ("loss", "miner") or not arg:
            raise KeyError(
                f"Benchmark config: unknown search parameter {where!r}; use 'loss.<argument>', "
                "'miner.<argument>' or 'loss_lr'."
            )
        if target == "miner" and miner is None:
            raise ValueError(message(_OWNER, where, "a miner argument of an entry that has a miner", name))
        component = loss if target == "loss" else miner
        assert component is not None
        registry = LOSSES if target == "loss" else MINERS
        allowed = accepted_params(registry[component.name])
        if arg not in allowed:
            hint = close_matches_hint(arg, allowed)
            raise KeyError(
                f"Benchmark config: {where!r}: {registry[component.name].__name__} has no argument "
                f"{arg!r}.{hint} Known: {', '.join(allowed)}."
            )
    if not isinstance(spec, Mapping):
        raise TypeError(message(_OWNER, where, "a mapping {low, high[, log, step, int]} or {choices}", spec))
    if "choices" in spec:
        _check_keys(spec, ["choices"], where)
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ValueError(message(_OWNER, f"{where}.choices", "a non-empty list", spec["choices"]))
        return
    _check_keys(spec, ["low", "high", "log", "step", "int"], where)
    if "low" not in spec or "high" not in spec:
        raise KeyError(f"Benchmark config: {where!r} needs `low` and `high` (or `choices`).")
    low, high = spec["low"], spec["high"]
    check_range(_OWNER, f"{where}.low", low)
    check_range(_OWNER, f"{where}.high", high, low=low, low_inclusive=False)
    if spec.get("log") and low <= 0:
        raise ValueError(message(_OWNER, f"{where}.low", "> 0 on a log scale", low))


def load_benchmark_config(path: str | os.PathLike[str]) -> BenchmarkConfig:
    """Read a benchmark configuration from ``.json``, or ``.yaml``/``.yml`` (PyYAML).

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: the file cannot be parsed or is not a mapping.
        MissingDependencyError: a YAML file without PyYAML.
        KeyError, TypeError, ValueError: invalid contents (see :meth:`BenchmarkConfig.from_dict`).
    """
    return BenchmarkConfig.from_dict(read_mapping_file(path, "benchmark configuration"))


def quick_config(config: BenchmarkConfig) -> BenchmarkConfig:
    """A copy sized for a smoke test: one epoch of at most 20 iterations, at most 100 samples per class,
    the first seed only, at most 2 search trials.

    Example:
        >>> quick_config(BenchmarkConfig.from_dict({"epochs": 5, "losses": ["ntxent"]})).epochs
        1
    """
    quick = copy.deepcopy(config)
    quick.epochs = 1
    quick.iterations_per_epoch = min(config.iterations_per_epoch, 20)
    quick.data.max_per_class = min(config.data.max_per_class or 100, 100)
    quick.seeds = config.seeds[:1]
    for entry in quick.losses:
        entry.search.trials = min(entry.search.trials, 2)
    return quick


# Data ------------------------------------------------------------------------------------------------


@dataclass
class ProtocolData:
    """The class-disjoint parts of a data set for the protocol.

    Attributes:
        x_trainval, y_trainval: the first half of the classes (training and validation).
        x_test, y_test: the second half (the final test).
        folds: per fold, ``(train_indices, val_indices)`` into ``x_trainval``; their classes are disjoint.
        trainval_classes, test_classes: the sorted classes of each half.

    Example:
        >>> data = make_protocol_data(torch.rand(60, 2), torch.arange(12).repeat(5), folds=3)
        >>> len(data.y_trainval), len(data.y_test), data.fold_classes(2)
        (30, 30, ([0, 1, 2, 3], [4, 5]))
    """

    x_trainval: Tensor
    y_trainval: Tensor
    x_test: Tensor
    y_test: Tensor
    folds: list[tuple[Tensor, Tensor]]
    trainval_classes: list[int]
    test_classes: list[int]

    def fold_classes(self, fold: int) -> tuple[list[int], list[int]]:
        """The training and the validation classes of ``fold``."""
        train, val = self.folds[fold]
        return (
            sorted(torch.unique(self.y_trainval[train]).tolist()),
            sorted(torch.unique(self.y_trainval[val]).tolist()),
        )


def make_protocol_data(
    features: Tensor,
    labels: Tensor,
    folds: int,
    *,
    fold_seed: int | None = None,
    max_per_class: int | None = None,
    test_features: Tensor | None = None,
    test_labels: Tensor | None = None,
) -> ProtocolData:
    """Halve the classes and cut the first half into ``folds`` class-disjoint folds.

    Args:
        features, labels: the samples whose sorted classes are halved (:func:`~dmlkit.data.class_halves_split`).
        folds: ``k``, at least 2 and at most half the number of training classes, so that every validation
            fold holds two classes or more (retrieval within a single class is always perfect).
        fold_seed: None: contiguous class groups; an integer shuffles the classes first.
        max_per_class: keep the first that many samples of each class (None: all).
        test_features, test_labels: where the test half comes from (an official test split); default: the
            second half of ``features``.

    Raises:
        ValueError: ``folds`` below 2, above the number of training classes, or above half of it.

    Example:
        >>> data = make_protocol_data(torch.rand(40, 3), torch.arange(8).repeat(5), folds=2)
        >>> data.trainval_classes, data.test_classes, [data.fold_classes(i) for i in range(2)]
        ([0, 1, 2, 3], [4, 5, 6, 7], [([2, 3], [0, 1]), ([0, 1], [2, 3])])
    """
    trainval_idx, test_idx = class_halves_split(labels)
    trainval_classes = sorted(torch.unique(labels[trainval_idx]).tolist())
    test_classes = sorted(torch.unique(labels[test_idx]).tolist())
    check_range(_OWNER, "folds", folds, low=2, integer=True)
    if folds > len(trainval_classes):
        rule = f"at most the number of training classes ({len(trainval_classes)})"
        raise ValueError(message(_OWNER, "folds", rule, folds))
    if folds > len(trainval_classes) // 2:
        rule = (
            f"at most half the number of training classes ({len(trainval_classes)} // 2 = "
            f"{len(trainval_classes) // 2}) so that every validation fold holds two classes or more"
        )
        raise ValueError(message(_OWNER, "folds", rule, folds))
    trainval_idx = indices_of_classes(labels, trainval_classes, max_per_class)
    if test_features is None or test_labels is None:
        test_features, test_labels = features, labels
    test_idx = indices_of_classes(test_labels, test_classes, max_per_class)
    y_trainval = labels[trainval_idx]
    return ProtocolData(
        x_trainval=features[trainval_idx],
        y_trainval=y_trainval,
        x_test=test_features[test_idx],
        y_test=test_labels[test_idx],
        folds=list(class_disjoint_kfold(y_trainval, folds, seed=fold_seed)),
        trainval_classes=trainval_classes,
        test_classes=test_classes,
    )


def load_protocol_data(config: BenchmarkConfig) -> ProtocolData:
    """Load the configured data set and cut it as :func:`make_protocol_data` does.

    Raises:
        FileNotFoundError: the data files are not in the data folder.
        ValueError: the folds do not fit the classes, or the batch does not fit a fold's training classes.
    """
    data = config.data
    features, labels = load_dataset(data.name, root=data.root)
    test_features = test_labels = None
    if data.name in ("mnist", "fashion_mnist"):
        test_features, test_labels = load_dataset(data.name, root=data.root, split="test")
    parts = make_protocol_data(
        features,
        labels,
        config.folds,
        fold_seed=config.fold_seed,
        max_per_class=data.max_per_class,
        test_features=test_features,
        test_labels=test_labels,
    )
    fewest = min(len(parts.fold_classes(i)[0]) for i in range(config.folds))
    most = config.sampler.m * fewest
    if config.sampler.batch_size > most:
        rule = f"<= `sampler.m` * the fewest training classes of a fold ({config.sampler.m} * {fewest} = {most})"
        raise ValueError(message(_OWNER, "sampler.batch_size", rule, config.sampler.batch_size))
    return parts


# Statistics and evaluation -----------------------------------------------------------------------------


def confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of the Student-t confidence interval of the mean of ``values``.

    ``half_width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard deviation;
    NaN for a single value (no interval).

    Example:
        >>> mean, half = confidence_interval([0.5, 0.6, 0.7])
        >>> round(mean, 4), round(half, 4)
        (0.6, 0.2484)
    """
    check_range(
        "confidence_interval", "confidence", confidence, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )
    data = [float(v) for v in values]
    if not data:
        raise ValueError(message("confidence_interval", "values", "a non-empty sequence", list(values)))
    mean = math.fsum(data) / len(data)
    if len(data) == 1:
        return mean, math.nan
    from scipy import stats

    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (len(data) - 1))
    return mean, float(stats.t.ppf((1 + confidence) / 2, len(data) - 1)) * std / math.sqrt(len(data))


def concatenated_embeddings(parts: Sequence[Tensor]) -> Tensor:
    """The paper's "concatenated" embedding: each model's embeddings L2-normalised, then side by side.

    Example:
        >>> concatenated_embeddings([torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0]])]).tolist()
        [[0.6000000238418579, 0.800000011920929, 1.0]]
    """
    if not parts:
        raise ValueError(message("concatenated_embeddings", "parts", "a non-empty sequence of tensors", []))
    return torch.cat([F.normalize(p, dim=1) for p in parts], dim=1)


def retrieval_scores(embeddings: Tensor, labels: Tensor) -> dict[str, float]:
    """MAP@R, R-precision and precision@1 of the L2-normalised embeddings against themselves.

    Each query's own row is excluded; Euclidean distance on unit vectors ranks as cosine similarity does.
    Computed by :class:`~dmlkit.evaluation.AccuracyCalculator` with ``k="max_bin_count"``.

    Example:
        >>> retrieval_scores(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]),
        ...                  torch.tensor([0, 0, 1, 1]))["mean_average_precision_at_r"]
        1.0
    """
    from ..evaluation import AccuracyCalculator

    calculator = AccuracyCalculator(include=METRICS, k="max_bin_count")
    values = calculator.get_accuracy(F.normalize(embeddings, dim=1), labels)
    return {key: float(values[key]) for key in METRICS}


def _validation_calculator() -> Any:
    from ..evaluation import AccuracyCalculator, ExactKNN

    return AccuracyCalculator(include=METRICS, k="max_bin_count", knn_func=ExactKNN("cosine"))


# Losses, miners and the two libraries -------------------------------------------------------------------


def _pml_modules() -> dict[str, Any]:
    try:
        import pytorch_metric_learning.distances as distances
        import pytorch_metric_learning.losses as losses
        import pytorch_metric_learning.miners as miners
        import pytorch_metric_learning.reducers as reducers
        import pytorch_metric_learning.regularizers as regularizers
    except ImportError:
        raise MissingDependencyError(
            "pytorch-metric-learning", "pml", "The pytorch-metric-learning control (`library: pml`)"
        ) from None
    return {
        "loss": losses,
        "miner": miners,
        "distance": distances,
        "reducer": reducers,
        "embedding_regularizer": regularizers,
    }


def _pml_component(
    modules: Mapping[str, Any],
    kind: str,
    registry: Registry[Any],
    name: str,
    params: Mapping[str, Any],
    key: str,
    **extra: Any,
) -> Any:
    class_name = registry[name].__name__
    cls = getattr(modules[kind], class_name, None)
    if cls is None:
        raise ValueError(f"{key}: pytorch-metric-learning has no {class_name}; use `library: dmlkit` for it.")
    kwargs: dict[str, Any] = {}
    for param, value in params.items():
        if param in SUBCOMPONENTS and value is not None:
            sub_name, sub_params = split_spec(value, f"{key}.{param}")
            kwargs[param] = _pml_component(modules, param, SUBCOMPONENTS[param], sub_name, sub_params, f"{key}.{param}")
        else:
            kwargs[param] = value
    return cls(**extra, **kwargs)


def _with_params(entry: LossEntry, params: Mapping[str, Any]) -> tuple[ComponentConfig, ComponentConfig | None, Any]:
    loss, miner = copy.deepcopy(entry.loss), copy.deepcopy(entry.miner)
    loss_lr = entry.loss_lr
    for name, value in params.items():
        target, _, arg = name.partition(".")
        if name == "loss_lr":
            loss_lr = value
        elif target == "loss":
            loss.params[arg] = value
        elif miner is not None:
            miner.params[arg] = value
    return loss, miner, loss_lr


def build_loss_and_miner(
    entry: LossEntry, params: Mapping[str, Any] | None = None, *, num_classes: int, embedding_size: int
) -> tuple[nn.Module, nn.Module | None]:
    """The entry's loss and miner from its library, with ``params`` (``"loss.margin"``...) applied.

    ``num_classes`` and ``embedding_size`` are passed to classes that take them (proxies, class weights)
    unless the entry sets them. pytorch-metric-learning is imported only for ``library: pml``.

    Raises:
        MissingDependencyError: ``library: pml`` without pytorch-metric-learning installed.

    Example:
        >>> entry = BenchmarkConfig.from_dict({"losses": [{"loss": "proxy_anchor"}]}).losses[0]
        >>> loss, miner = build_loss_and_miner(entry, num_classes=3, embedding_size=8)
        >>> type(loss).__name__, tuple(loss.proxies.shape), miner
        ('ProxyAnchorLoss', (3, 8), None)
    """
    loss_spec, miner_spec, _ = _with_params(entry, params or {})
    sizes = {"num_classes": num_classes, "embedding_size": embedding_size}
    accepted = accepted_params(LOSSES[loss_spec.name])
    extra = {k: v for k, v in sizes.items() if k in accepted and k not in loss_spec.params}
    if entry.library == "pml":
        modules = _pml_modules()
        loss = _pml_component(modules, "loss", LOSSES, loss_spec.name, loss_spec.params, "loss", **extra)
        miner = None
        if miner_spec is not None:
            miner = _pml_component(modules, "miner", MINERS, miner_spec.name, miner_spec.params, "miner")
        return loss, miner
    loss = build_component(LOSSES, loss_spec.name, loss_spec.params, "loss", **extra)
    miner = None if miner_spec is None else build_component(MINERS, miner_spec.name, miner_spec.params, "miner")
    return loss, miner


# One fold ----------------------------------------------------------------------------------------------


@dataclass
class FoldRun:
    """What training one fold produced.

    Attributes:
        record: JSON-ready: ``best_epoch``, ``val`` (validation metrics at the best epoch), ``test`` (the
            test metrics of that epoch's model; empty when not asked), ``losses`` (the total loss of every
            iteration), ``seconds``, ``train_classes``, ``val_classes``, ``error`` (None, or why training
            failed, e.g. a non-finite loss).
        test_embeddings: the test half embedded by the best epoch's model (None when not asked or failed).

    Example:
        >>> config = BenchmarkConfig.from_dict({"data": {"max_per_class": 10}, "folds": 2, "iterations_per_epoch": 2,
        ...                                     "sampler": {"m": 4, "batch_size": 8}, "losses": ["sup_con"],
        ...                                     "model": {"hidden": [8], "embedding_size": 4}})
        >>> run = train_fold(config, config.losses[0], load_protocol_data(config), fold=0, seed=0)
        >>> run.record["best_epoch"], len(run.record["losses"]), tuple(run.test_embeddings.shape)
        (1, 2, (50, 4))
    """

    record: dict[str, Any]
    test_embeddings: Tensor | None = None


def _trunk(config: BenchmarkConfig, in_shape: tuple[int, ...]) -> nn.Module:
    """The configured network, initialised from torch's global generator (the caller seeds it)."""
    spec = model_spec(TrainConfig(model=config.model), in_shape)
    model = build_model(spec["name"], spec["in_shape"], spec["embedding_size"], spec["params"])
    return model.to(_DTYPES[config.dtype])


def train_fold(
    config: BenchmarkConfig,
    entry: LossEntry,
    data: ProtocolData,
    fold: int,
    seed: int,
    params: Mapping[str, Any] | None = None,
    *,
    with_test: bool = True,
    on_iteration: Callable[[], None] | None = None,
) -> FoldRun:
    """Train the fold-``fold`` model of ``entry`` with ``seed`` and measure it.

    The recipe is the same for every entry: the configured model (initialised under
    ``torch.manual_seed(seed * 1000 + fold)``), :class:`~dmlkit.samplers.MPerClassSampler` and
    :class:`~dmlkit.training.Trainer` seeded with the same number, the configured optimizer (a second one of
    the same kind, at ``loss_lr``, for the loss's own parameters), ``epochs * iterations_per_epoch`` batches
    with validation MAP@R after each epoch, and the best epoch's weights kept. The caller's random state is
    left untouched.
    """
    owner = "train_fold"
    check_range(owner, "fold", fold, low=0, high=len(data.folds) - 1, integer=True)
    dtype = _DTYPES[config.dtype]
    train_idx, val_idx = data.folds[fold]
    train_classes, val_classes = data.fold_classes(fold)
    cell_seed = seed * 1000 + fold
    x_train = data.x_trainval[train_idx].to(dtype)
    # losses with one weight per class (proxies, class weights) need labels 0..C-1
    y_train = torch.searchsorted(torch.tensor(train_classes, dtype=data.y_trainval.dtype), data.y_trainval[train_idx])
    x_val, y_val = data.x_trainval[val_idx].to(dtype), data.y_trainval[val_idx]
    record: dict[str, Any] = {
        "seed": seed,
        "fold": fold,
        "cell_seed": cell_seed,
        "train_classes": train_classes,
        "val_classes": val_classes,
        "error": None,
    }
    start = time.perf_counter()
    _, _, loss_lr = _with_params(entry, params or {})
    with torch.random.fork_rng():
        torch.manual_seed(cell_seed)
        model = _trunk(config, tuple(x_train.shape[1:]))
        loss_fn, miner = build_loss_and_miner(
            entry, params, num_classes=len(train_classes),
            embedding_size=training_width(model, config.model.embedding_size),
        )
        loss_fn = loss_fn.to(dtype)
        optimizer = config.optimizer
        optimizers = {
            "trunk_optimizer": build_component(
                OPTIMIZERS, optimizer.name, optimizer.params, "optimizer", params=list(model.parameters())
            )
        }
        loss_parameters = [p for p in loss_fn.parameters() if p.requires_grad]
        if loss_parameters:
            loss_params = dict(optimizer.params)
            if loss_lr is not None:
                loss_params["lr"] = loss_lr
            optimizers["metric_loss_optimizer"] = build_component(
                OPTIMIZERS, optimizer.name, loss_params, "optimizer", params=loss_parameters
            )
        batch_size = config.sampler.batch_size
        sampler = MPerClassSampler(
            y_train,
            m=config.sampler.m,
            batch_size=batch_size,
            length_before_new_iter=config.iterations_per_epoch * batch_size,
            seed=cell_seed,
        )
        best: dict[str, Any] = {}

        def keep_best(trainer: Trainer) -> None:
            if trainer.best_epoch == trainer.epoch:
                best["state"] = copy.deepcopy(model.state_dict())

        def each_iteration(trainer: Trainer) -> None:
            if on_iteration is not None:
                on_iteration()

        trainer = Trainer(
            {"trunk": model},
            optimizers,
            batch_size,
            {"metric_loss": loss_fn},
            TensorDataset(x_train, y_train),
            mining_funcs={} if miner is None else {"tuple_miner": miner},
            iterations_per_epoch=config.iterations_per_epoch,
            data_device="cpu",
            sampler=sampler,
            validation=Validation(
                TensorDataset(x_val, y_val), calculator=_validation_calculator(), batch_size=config.eval_batch_size
            ),
            seed=cell_seed,
            end_of_iteration_hook=each_iteration,
            end_of_epoch_hook=keep_best,
            progress=False,
        )
        try:
            trainer.train(num_epochs=config.epochs)
        except FloatingPointError as exc:
            record.update(error=str(exc), losses=[r["loss"] for r in trainer.history])
            record["seconds"] = time.perf_counter() - start
            return FoldRun(record)
    model.load_state_dict(best["state"])
    val = next(r for r in trainer.eval_history if r["epoch"] == trainer.best_epoch)
    record.update(
        best_epoch=trainer.best_epoch,
        val={key: float(val[key]) for key in METRICS},
        losses=[float(r["loss"]) for r in trainer.history],
    )
    test_embeddings = None
    record["test"] = {}
    if with_test:
        fit_projections(model, x_train, config.eval_batch_size)
        test_embeddings = embed(model, data.x_test.to(dtype), config.eval_batch_size)
        record["test"] = retrieval_scores(test_embeddings, data.y_test)
    record["seconds"] = time.perf_counter() - start
    return FoldRun(record, test_embeddings)


# Hyperparameter search -----------------------------------------------------------------------------------


def _distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = CategoricalDistribution(list(spec["choices"]))
        elif spec.get("int"):
            out[name] = IntDistribution(
                int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)), step=int(spec.get("step") or 1)
            )
        else:
            out[name] = FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)), step=spec.get("step")
            )
    return out


def search_hyperparameters(
    space: Mapping[str, Mapping[str, Any]],
    objective: Callable[[dict[str, Any]], float],
    trials: int,
    seed: int = 0,
    previous: Sequence[Mapping[str, Any]] = (),
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Maximise ``objective(params)`` over ``space`` with Optuna's TPE sampler, in ``trials`` trials in all.

    Args:
        space: ``{name: {"low", "high"[, "log", "step", "int"]} | {"choices": [...]}}`` (see :class:`SearchConfig`).
        objective: the value to maximise (the mean validation MAP@R over the folds); NaN marks a failed trial.
        trials: the budget, counting ``previous`` trials.
        seed: the seed of ``optuna.samplers.TPESampler``.
        previous: trials already run, ``{"params": ..., "value": ...}`` (as returned in ``"trials"``), told to the
            study first so that an interrupted search resumes.
        on_trial: called with each new trial's record (e.g. to save progress).

    Returns:
        ``{"trials": [{"number", "params", "value"}], "best_params": ..., "best_value": ...}``; the best trial is
        the one of highest value (the first of equal ones); ``best_params`` is None when every trial failed.

    Raises:
        MissingDependencyError: Optuna is not installed.

    Example:
        >>> out = search_hyperparameters({"x": {"low": 0.0, "high": 1.0}}, lambda p: -(p["x"] - 0.3) ** 2, trials=5)
        >>> len(out["trials"]), out["best_value"] == max(t["value"] for t in out["trials"])
        (5, True)
    """
    check_range("search_hyperparameters", "trials", trials, low=0, integer=True)
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("optuna", "search", "The hyperparameter search") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = _distributions(space)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    records: list[dict[str, Any]] = []
    for old in list(previous)[:trials]:
        value = old.get("value")
        state = optuna.trial.TrialState.COMPLETE if _finite(value) else optuna.trial.TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                params=dict(old["params"]),
                distributions=distributions,
                value=value if state == optuna.trial.TrialState.COMPLETE else None,
                state=state,
            )
        )
        records.append({"number": len(records), "params": dict(old["params"]), "value": value})

    def run(trial: Any) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        value = float(objective(params))
        record = {"number": len(records), "params": params, "value": value if _finite(value) else None}
        records.append(record)
        if on_trial is not None:
            on_trial(record)
        return value

    remaining = trials - len(records)
    if remaining > 0:
        study.optimize(run, n_trials=remaining, catch=())
    finished = [r for r in records if _finite(r["value"])]
    best = max(finished, key=lambda r: r["value"]) if finished else None
    return {
        "trials": records,
        "best_params": None if best is None else dict(best["params"]),
        "best_value": None if best is None else best["value"],
    }


def _suggest(trial: Any, name: str, spec: Mapping[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    log = bool(spec.get("log", False))
    if spec.get("int"):
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1), log=log)
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=log)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# The whole benchmark -------------------------------------------------------------------------------------


def environment_info() -> dict[str, Any]:
    """The machine and versions a result was measured with: CPU model, cores, torch threads, Python, torch,
    dmlkit, pytorch-metric-learning and Optuna (None when not installed).

    Example:
        >>> sorted(environment_info())[:3]
        ['cores', 'cpu', 'dmlkit']
    """
    import dmlkit

    def version(module: str) -> str | None:
        try:
            return str(__import__(module).__version__)
        except ImportError:
            return None

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dmlkit": dmlkit.__version__,
        "pytorch_metric_learning": version("pytorch_metric_learning"),
        "optuna": version("optuna"),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fingerprint(config: BenchmarkConfig, entry: LossEntry, extra: Mapping[str, Any]) -> str:
    shared = config.to_dict()
    for key in ("losses", "title", "seeds", "eval_batch_size"):
        shared.pop(key)
    body = {
        "shared": shared,
        "loss": entry.loss.to_dict(),
        "miner": None if entry.miner is None else entry.miner.to_dict(),
        "library": entry.library,
        "loss_lr": entry.loss_lr,
        **extra,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, default=_json_default)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _save_tensor(path: Path, tensor: Tensor) -> None:
    atomic_write(path, lambda f: torch.save(tensor, f))


def _read_json(path: Path) -> Any:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("format_version") != BENCHMARK_FORMAT_VERSION:
        return None
    return payload


class _Progress:
    """A tqdm bar over every training iteration of the run (disabled when quiet)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="benchmark", unit="it", disable=not enabled)

    def describe(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def step(self, count: int = 1) -> None:
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()


def _nan_to_none(values: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (v if _finite(v) else None) for k, v in values.items()}


def _summary(values: Sequence[float]) -> dict[str, Any]:
    mean, half = confidence_interval(values)
    return {"mean": mean, "half_width": half if math.isfinite(half) else None, "n": len(values), "values": list(values)}


def _test_summary(
    tests: Mapping[tuple[int, int], Mapping[str, float]],
    embeddings: Mapping[tuple[int, int], Tensor],
    labels: Tensor,
    seeds: Sequence[int],
    folds: int,
) -> dict[str, Any]:
    """Separate (mean of the fold models) and concatenated test results, with confidence intervals."""
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        concat = retrieval_scores(concatenated_embeddings([embeddings[(seed, f)] for f in range(folds)]), labels)
        per_seed.append(
            {
                "seed": seed,
                "separate": {m: _summary([tests[(seed, f)][m] for f in range(folds)]) for m in METRICS},
                "concatenated": concat,
            }
        )
    if len(seeds) == 1:
        separate = per_seed[0]["separate"]
        concatenated = {m: _summary([per_seed[0]["concatenated"][m]]) for m in METRICS}
        over = "folds"
    else:
        separate = {m: _summary([s["separate"][m]["mean"] for s in per_seed]) for m in METRICS}
        concatenated = {m: _summary([s["concatenated"][m] for s in per_seed]) for m in METRICS}
        over = "seeds"
    return {"separate": separate, "concatenated": concatenated, "interval_over": over, "per_seed": per_seed}


def _aggregate(
    cells: list[dict[str, Any]],
    embeddings: dict[tuple[int, int], Tensor],
    data: ProtocolData,
    seeds: Sequence[int],
    folds: int,
) -> dict[str, Any]:
    if any(cell.get("error") for cell in cells):
        return {"error": next(cell["error"] for cell in cells if cell.get("error"))}
    tests = {(c["seed"], c["fold"]): c["test"] for c in cells}
    summary = _test_summary(tests, embeddings, data.y_test, seeds, folds)
    summary["validation"] = {m: _summary([c["val"][m] for c in cells]) for m in METRICS}
    return summary


def reference_results(config: BenchmarkConfig, data: ProtocolData) -> dict[str, Any]:
    """What the test half scores without metric learning, for context: the raw input features, and the
    untrained network of every (seed, fold) cell (initialised exactly as :func:`train_fold` initialises it),
    summarised like a trained entry.

    Example:
        >>> config = BenchmarkConfig.from_dict({"data": {"max_per_class": 10}, "folds": 2,
        ...     "sampler": {"m": 4, "batch_size": 8}, "model": {"hidden": [8]}, "losses": ["ntxent"]})
        >>> sorted(reference_results(config, load_protocol_data(config)))
        ['raw_input', 'untrained']
    """
    dtype = _DTYPES[config.dtype]
    embeddings: dict[tuple[int, int], Tensor] = {}
    for seed in config.seeds:
        for fold in range(config.folds):
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1000 + fold)
                model = _trunk(config, tuple(data.x_test.shape[1:]))
            embeddings[(seed, fold)] = embed(model, data.x_test.to(dtype), config.eval_batch_size)
    tests = {key: retrieval_scores(emb, data.y_test) for key, emb in embeddings.items()}
    return {
        "raw_input": retrieval_scores(data.x_test.flatten(1).to(dtype), data.y_test),
        "untrained": _test_summary(tests, embeddings, data.y_test, config.seeds, config.folds),
    }


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | os.PathLike[str],
    *,
    data: ProtocolData | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    quick: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the protocol for every entry (or those whose label contains one of ``only``) and write the results.

    The output folder receives ``config.json``, one ``cells/<entry>/seed<S>-fold<F>.json`` (and ``.pt``: the
    fold model's test embeddings) per trained fold, ``search/<entry>.json`` per searched entry,
    ``results.json`` and ``results.md``. Cells and search trials already there with the same settings are
    reused; others are (re)computed. Entries left out by ``only`` appear in the results when all their
    cells are already in the folder.

    Returns:
        The content of ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_protocol_data(config) if data is None else data
    _write_json(out / "config.json", config.to_dict())
    selected = [e for e in config.losses if only is None or any(part in e.label for part in only)]
    if only is not None and not selected:
        labels = ", ".join(e.label for e in config.losses)
        raise ValueError(f"benchmark: no entry label contains any of {list(only)}; labels: {labels}.")
    per_cell = config.epochs * config.iterations_per_epoch
    total = sum((e.search.trials * config.folds + len(config.seeds) * config.folds) * per_cell for e in selected)
    bar = _Progress(total, progress)
    entries = []
    try:
        for entry in config.losses:
            run_it = entry in selected
            result = _run_entry(config, entry, data, out, bar if run_it else None)
            if result is not None:
                entries.append(result)
    finally:
        bar.close()
    references = reference_results(config, data)
    results = {
        "format_version": BENCHMARK_FORMAT_VERSION,
        "title": config.title,
        "quick": quick,
        "command": command,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "cell_seconds": sum(e.get("seconds", 0.0) for e in entries),
        "environment": environment_info(),
        "config": config.to_dict(),
        "data": {
            "trainval_classes": data.trainval_classes,
            "test_classes": data.test_classes,
            "num_trainval": len(data.y_trainval),
            "num_test": len(data.y_test),
            "folds": [
                dict(zip(("train_classes", "val_classes"), data.fold_classes(i), strict=True))
                for i in range(config.folds)
            ],
        },
        "references": references,
        "entries": entries,
    }
    _write_json(out / "results.json", results)
    text = results_markdown(results)
    atomic_write(out / "results.md", lambda f: f.write(text.encode("utf-8")))
    return results


def _run_entry(
    config: BenchmarkConfig, entry: LossEntry, data: ProtocolData, out: Path, bar: _Progress | None
) -> dict[str, Any] | None:
    """One entry: its search (when configured), its cells, and their summary; None when skipped and unfinished."""
    per_cell = config.epochs * config.iterations_per_epoch
    search_out = None
    params: dict[str, Any] = {}
    if entry.search.trials:
        search_file = out / "search" / f"{entry.slug}.json"
        key = _fingerprint(config, entry, {"search": dataclasses.asdict(entry.search), "seed": config.seeds[0]})
        saved = _read_json(search_file)
        previous = saved["trials"] if saved is not None and saved.get("fingerprint") == key else []
        if bar is None:
            if saved is None or saved.get("fingerprint") != key or not saved.get("complete"):
                return None
            search_out = saved
        else:
            search_out = _search_entry(config, entry, data, search_file, key, previous, bar)
        if search_out["best_params"] is None:
            return {
                "label": entry.label,
                "library": entry.library,
                "error": "every search trial failed",
                "search": search_out,
            }
        params = dict(search_out["best_params"])
    cells: list[dict[str, Any]] = []
    embeddings: dict[tuple[int, int], Tensor] = {}
    for seed in config.seeds:
        for fold in range(config.folds):
            key = _fingerprint(config, entry, {"params": params, "seed": seed, "fold": fold})
            stem = out / "cells" / entry.slug / f"seed{seed}-fold{fold}"
            cell = _read_json(stem.with_suffix(".json"))
            cached = cell is not None and cell.get("fingerprint") == key
            if cached and cell is not None and not cell.get("error"):
                try:
                    embeddings[(seed, fold)] = torch.load(stem.with_suffix(".pt"), weights_only=True)
                except (OSError, RuntimeError, EOFError):
                    cached = False
            if cached and cell is not None:
                if bar is not None:
                    bar.step(per_cell)
                cells.append(cell)
                continue
            if bar is None:
                return None
            bar.describe(f"{entry.label} seed {seed} fold {fold}")
            run = train_fold(config, entry, data, fold, seed, params, on_iteration=bar.step)
            record: dict[str, Any] = {
                "format_version": BENCHMARK_FORMAT_VERSION,
                "fingerprint": key,
                "label": entry.label,
                **run.record,
            }
            if run.test_embeddings is not None:
                embeddings[(seed, fold)] = run.test_embeddings
                stem.parent.mkdir(parents=True, exist_ok=True)
                _save_tensor(stem.with_suffix(".pt"), run.test_embeddings)
            else:  # a failed run: the bar still moves by the whole cell
                bar.step(per_cell - len(record.get("losses", [])))
            _write_json(stem.with_suffix(".json"), record)
            cells.append(record)
    summary = _aggregate(cells, embeddings, data, config.seeds, config.folds)
    return {
        "label": entry.label,
        "library": entry.library,
        "loss": entry.loss.to_dict(),
        "miner": None if entry.miner is None else entry.miner.to_dict(),
        "loss_lr": entry.loss_lr,
        "params": params,
        "search": search_out,
        "seconds": sum(c.get("seconds", 0.0) for c in cells),
        "cells": [{k: v for k, v in c.items() if k not in ("losses", "format_version")} for c in cells],
        **summary,
    }


def _search_entry(
    config: BenchmarkConfig,
    entry: LossEntry,
    data: ProtocolData,
    search_file: Path,
    key: str,
    previous: list[dict[str, Any]],
    bar: _Progress,
) -> dict[str, Any]:
    per_cell = config.epochs * config.iterations_per_epoch
    seed = config.seeds[0]
    done = list(previous)[: entry.search.trials]
    bar.step(len(done) * config.folds * per_cell)

    def objective(params: dict[str, Any]) -> float:
        values = []
        for fold in range(config.folds):
            bar.describe(f"{entry.label} search trial {len(done) + 1}/{entry.search.trials} fold {fold}")
            run = train_fold(config, entry, data, fold, seed, params, with_test=False, on_iteration=bar.step)
            if run.record["error"]:
                bar.step(per_cell - len(run.record.get("losses", [])))
                bar.step((config.folds - fold - 1) * per_cell)
                return math.nan
            values.append(run.record["val"]["mean_average_precision_at_r"])
        return math.fsum(values) / len(values)

    def save(record: dict[str, Any], complete: bool = False, best: dict[str, Any] | None = None) -> None:
        if record:
            done.append(record)
        payload = {
            "format_version": BENCHMARK_FORMAT_VERSION,
            "fingerprint": key,
            "label": entry.label,
            "space": entry.search.space,
            "trials": done,
            "complete": complete,
        }
        if best is not None:
            payload.update(best_params=best["best_params"], best_value=best["best_value"])
        _write_json(search_file, payload)

    found = search_hyperparameters(
        entry.search.space, objective, entry.search.trials, entry.search.seed, previous=done, on_trial=save
    )
    done[:] = found["trials"]
    save({}, complete=True, best=found)
    return {
        "trials": found["trials"],
        "best_params": found["best_params"],
        "best_value": found["best_value"],
        "complete": True,
    }


# Reports -------------------------------------------------------------------------------------------------


def _pct(summary: Mapping[str, Any] | None) -> str:
    if summary is None or summary.get("mean") is None or not _finite(summary["mean"]):
        return "-"
    text = f"{100 * summary['mean']:.2f}"
    if summary.get("half_width") is not None:
        text += f" ± {100 * summary['half_width']:.2f}"
    return text


def _classes(classes: Sequence[int]) -> str:
    values = list(classes)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(c) for c in values)


def _params_text(entry: Mapping[str, Any]) -> str:
    loss = {k: v for k, v in entry["loss"].items() if k != "name"}
    miner = entry.get("miner")
    parts = [f"{k}={v}" for k, v in loss.items()]
    if miner:
        parts += [f"miner.{k}={v}" for k, v in miner.items() if k != "name"]
    if entry.get("loss_lr") is not None:
        parts.append(f"loss_lr={entry['loss_lr']}")
    for k, v in (entry.get("params") or {}).items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts) or "defaults"


def results_markdown(results: Mapping[str, Any]) -> str:
    """The markdown report of a :func:`run_benchmark` result: set-up, the test table, the PML control
    comparison, searches, and every fold.

    Example:
        >>> "Musgrave" in results_markdown({"title": "t", "config": BenchmarkConfig.from_dict(
        ...     {"losses": ["ntxent"]}).to_dict(), "entries": [], "environment": environment_info(), "data": {}})
        True
    """
    config = results["config"]
    env = results.get("environment") or {}
    data = results.get("data") or {}
    model = config["model"]
    sampler = config["sampler"]
    optimizer = dict(config["optimizer"])
    optimizer_name = optimizer.pop("name")
    seeds = config["seeds"]
    lines = [
        f"# {results['title']}: the metric-learning reality check",
        "",
        'The protocol of Musgrave, Belongie and Lim (2020, "A Metric Learning Reality Check", arXiv:2003.08505): '
        "the same network, embedding size, batch, sampler and iteration budget for every loss; the first half of "
        "the classes for training and class-disjoint validation folds, the second half for the test.",
        "",
    ]
    if results.get("quick"):
        lines += ["**Quick run (`--quick`): a smoke test with a tiny budget; the numbers mean nothing.**", ""]
    if results.get("command"):
        lines += [f"- Command: `{results['command']}`"]
    if env:
        lines += [
            f"- Machine: {env.get('cpu')}, {env.get('cores')} cores, torch threads: {env.get('torch_threads')}; "
            f"Python {env.get('python')}, torch {env.get('torch')}, dmlkit {env.get('dmlkit')}, "
            f"pytorch-metric-learning {env.get('pytorch_metric_learning')}, Optuna {env.get('optuna')}."
        ]
    cap = config["data"].get("max_per_class")
    if data:
        folds_text = " | ".join(
            f"train {_classes(f['train_classes'])} / val {_classes(f['val_classes'])}" for f in data.get("folds", [])
        )
        lines += [
            f"- Data: {config['data']['name']}, classes {_classes(data.get('trainval_classes', []))} for training and "
            f"validation ({data.get('num_trainval')} samples), classes {_classes(data.get('test_classes', []))} for "
            f"the test ({data.get('num_test')} samples)" + (f"; at most {cap} samples per class" if cap else "") + ".",
            f"- Folds (k = {config['folds']}): {folds_text}.",
        ]
    model_params = ", ".join(f"{k}={v}" for k, v in model.get("params", {}).items())
    lines += [
        f"- Budget per fold: {config['epochs']} epochs x {config['iterations_per_epoch']} iterations of batch "
        f"{sampler['batch_size']} ({sampler['m']} per class); model {model['name']}"
        + (f" ({model_params})" if model_params else "")
        + f", embedding size {model['embedding_size']}, {config['dtype']}; {optimizer_name} "
        f"({', '.join(f'{k}={v}' for k, v in optimizer.items())}); the epoch of best validation MAP@R is kept.",
        f"- Seeds: {', '.join(map(str, seeds))}."
        + (
            f" Training time of all cells: {results['cell_seconds'] / 60:.1f} min"
            f" (this invocation: {results['wall_seconds'] / 60:.1f} min; cells found in the output folder are reused)."
            if results.get("wall_seconds") is not None and results.get("cell_seconds") is not None
            else ""
        ),
        "",
        "## Test set (second half of the classes)",
        "",
        f"Separate: the mean over the {config['folds']} fold models ({model['embedding_size']}-d each). Concatenated: "
        f"their L2-normalised embeddings side by side ({config['folds'] * model['embedding_size']}-d). Values in %; "
        "± is the half-width of the 95% confidence interval of the mean (Student's t) across "
        + ("seeds." if len(seeds) > 1 else "folds (none for the concatenated value with one seed)."),
        "",
        "| loss | library | hyperparameters | val MAP@R | sep. P@1 | sep. R-Prec | sep. MAP@R | concat. P@1 | "
        "concat. R-Prec | concat. MAP@R | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    entries = results.get("entries", [])
    references = results.get("references")
    if references:
        untrained = references["untrained"]
        cells = ["-"] + [_pct(untrained["separate"][m]) for m in METRICS]
        cells += [_pct(untrained["concatenated"][m]) for m in METRICS]
        lines.append("| untrained network (reference) | - | no training | " + " | ".join(cells) + " | - |")
        raw = references["raw_input"]
        cells = ["-"] + [_pct({"mean": raw[m]}) for m in METRICS] + ["-"] * 3
        lines.append("| input pixels (reference) | - | no network | " + " | ".join(cells) + " | - |")
    for entry in entries:
        if entry.get("error"):
            lines.append(f"| {entry['label']} | {entry['library']} | - | failed: {entry['error'][:80]} |" + " - |" * 7)
            continue
        sep, cat = entry["separate"], entry["concatenated"]
        cells = [_pct(entry["validation"]["mean_average_precision_at_r"])]
        cells += [_pct(sep[m]) for m in METRICS] + [_pct(cat[m]) for m in METRICS]
        lines.append(
            f"| {entry['label']} | {entry['library']} | {_params_text(entry)} | "
            + " | ".join(cells)
            + f" | {entry['seconds'] / 60:.1f} min |"
        )
    lines += _control_lines(entries)
    lines += _search_lines(entries)
    lines += [
        "",
        "## Every fold",
        "",
        "| loss | seed | fold | train classes | val classes | best epoch | val MAP@R | test P@1 | test R-Prec | "
        "test MAP@R | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        for cell in entry.get("cells", []):
            if cell.get("error"):
                lines.append(
                    f"| {entry['label']} | {cell['seed']} | {cell['fold']} | failed: {cell['error'][:80]} |"
                    + " - |" * 7
                )
                continue
            test = cell.get("test") or {}
            lines.append(
                f"| {entry['label']} | {cell['seed']} | {cell['fold']} | {_classes(cell['train_classes'])} | "
                f"{_classes(cell['val_classes'])} | {cell['best_epoch']} | "
                f"{100 * cell['val']['mean_average_precision_at_r']:.2f} | "
                + " | ".join(f"{100 * test[m]:.2f}" if m in test else "-" for m in METRICS)
                + f" | {cell['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def control_pairs(entries: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """``(dmlkit entry, PML entry)`` for each recipe (loss, miner, learning rate, parameters) run in both libraries.

    Entries that failed are left out.

    Example:
        >>> a = {"library": "dmlkit", "loss": {"name": "contrastive"}, "label": "C"}
        >>> b = {"library": "pml", "loss": {"name": "contrastive"}, "label": "C (PML)"}
        >>> [(x["label"], y["label"]) for x, y in control_pairs([a, b, {**b, "loss": {"name": "ntxent"}}])]
        [('C', 'C (PML)')]
    """

    def same_recipe(entry: Mapping[str, Any]) -> str:
        return json.dumps(
            [entry.get("loss"), entry.get("miner"), entry.get("loss_lr"), entry.get("params")], sort_keys=True
        )

    ours = {same_recipe(e): e for e in entries if e.get("library") == "dmlkit" and not e.get("error")}
    return [
        (ours[same_recipe(e)], e)
        for e in entries
        if e.get("library") == "pml" and not e.get("error") and same_recipe(e) in ours
    ]


def _control_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """dmlkit against the pytorch-metric-learning control, for entries built the same way from both."""
    pairs = control_pairs(entries)
    if not pairs:
        return []
    lines = [
        "",
        "## dmlkit and the pytorch-metric-learning control",
        "",
        "The same loss, miner, hyperparameters, seeds, data order and network, with the loss and miner from each "
        "library. Differences come from the libraries' numerics and the random initialisation of loss parameters.",
        "",
        "| loss | sep. MAP@R dmlkit | sep. MAP@R PML | difference | concat. MAP@R dmlkit | concat. MAP@R PML | "
        "difference | train time dmlkit / PML |",
        "|---|---|---|---|---|---|---|---|",
    ]
    key = "mean_average_precision_at_r"
    for dm, pml in pairs:
        row = [dm["label"]]
        for part in ("separate", "concatenated"):
            a, b = dm[part][key]["mean"], pml[part][key]["mean"]
            row += [f"{100 * a:.2f}", f"{100 * b:.2f}", f"{100 * (a - b):+.2f}"]
        row.append(f"{dm['seconds']:.0f} s / {pml['seconds']:.0f} s")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _search_lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    searched = [e for e in entries if e.get("search")]
    if not searched:
        return []
    lines = [
        "",
        "## Hyperparameter searches",
        "",
        "Optuna TPE, maximising the mean validation MAP@R over the folds (first seed).",
        "",
    ]
    for entry in searched:
        search = entry["search"]
        lines += [
            f"**{entry['label']}**: {len(search['trials'])} trials, best {_best_text(search)}.",
            "",
            "| trial | " + " | ".join(entry["search"]["trials"][0]["params"]) + " | val MAP@R |",
            "|---|" + "---|" * (len(search["trials"][0]["params"]) + 1),
        ]
        for trial in search["trials"]:
            values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in trial["params"].values()]
            value = "failed" if trial["value"] is None else f"{100 * trial['value']:.2f}"
            lines.append(f"| {trial['number']} | " + " | ".join(values) + f" | {value} |")
        lines.append("")
    return lines


def _best_text(search: Mapping[str, Any]) -> str:
    if search.get("best_params") is None:
        return "none (every trial failed)"
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in search["best_params"].items())
    return f"{params} (val MAP@R {100 * search['best_value']:.2f})"
