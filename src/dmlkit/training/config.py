"""The training configuration: nested dataclasses with an embedded default, JSON round-trips and overrides.

Values are addressed by dotted keys (``sampler.m``, ``loss.margin``). Components (``loss``, ``miner``,
``optimizer``) name a registered class and carry its constructor arguments, so a configuration can use any
registered loss or miner; unknown keys and names raise ``KeyError`` with close-match suggestions.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._validation import check_range, close_matches_hint, message
from ..data import DATASET_NAMES
from ..errors import CorruptFileError, MissingDependencyError
from .components import (
    FAMILIES,
    SUBCOMPONENTS,
    accepted_params,
    check_component,
    default_subcomponent,
    split_spec,
    unknown_key_error,
    unknown_param_error,
)
from .models import check_model_name

__all__ = [
    "FORMAT_VERSION",
    "ComponentConfig",
    "DataConfig",
    "ModelConfig",
    "SamplerConfig",
    "InstanceConfig",
    "EvaluationConfig",
    "ValidationConfig",
    "OutputConfig",
    "TrainConfig",
    "parse_value",
    "parse_override",
]

#: the version of the files written from a configuration (config.json, metrics.json, checkpoint.pt).
FORMAT_VERSION = 1

_OWNER = "TrainConfig"


@dataclass
class ComponentConfig:
    """A registered class, by registry key, and the keyword arguments of its constructor.

    Example:
        >>> ComponentConfig("triplet_margin", {"margin": 0.1}).to_dict()
        {'name': 'triplet_margin', 'margin': 0.1}
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.params)}


@dataclass
class DataConfig:
    """Which data set, and which of its classes are used for training, validation and testing (all disjoint).

    Data sets with an official train/test split (MNIST, Fashion-MNIST) take the training and validation
    classes from the training split and the test classes from the test split. ``val_classes`` (empty: no
    validation) are held out of training and used for early stopping and best-model selection, as in the
    class-disjoint protocol of Musgrave, Belongie and Lim, 2020, arXiv:2003.08505. ``max_per_class`` keeps
    the first that many samples of each class of each split (None: all), to fit a CPU budget.
    """

    name: str = "digits"
    root: str | None = None
    train_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    val_classes: list[int] = field(default_factory=list)
    test_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])
    max_per_class: int | None = None


@dataclass
class ModelConfig:
    """The embedding network: ``"mlp"`` (``hidden``, ``normalize``, ``batch_norm``), ``"cnn"`` (a small CNN
    for 28x28 images; ``normalize`` and ``params``: ``channels``, ``hidden``), ``"energy"`` (pooled energy
    of learned filters reduced by a PCA fitted after training, :class:`~dmlkit.training.models.EnergyCNN`;
    ``params``: ``filters``, ``kernel_size``, ``cell``, ``whitening``) or the import path of any ``nn.Module``
    class (``"package.module:Class"``, built as ``Class(**params)``)."""

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])
    embedding_size: int = 32
    normalize: bool = True
    batch_norm: bool = False
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplerConfig:
    """``MPerClassSampler``: ``m`` samples per class in every batch of ``batch_size`` (a multiple of ``m``)."""

    m: int = 16
    batch_size: int = 80


@dataclass
class InstanceConfig:
    """Instance discrimination added to the metric loss: ``weight * NTXentLoss(temperature)`` over two views.

    Each batch is seen twice, each time with Gaussian pixel noise of standard deviation ``noise``; the two
    views of a sample are a positive pair and all other samples negatives (SimCLR, Chen et al., 2020,
    arXiv:2002.05709; Exemplar CNNs, Dosovitskiy et al., 2014, arXiv:1406.6909). The metric loss is computed
    on the first view. With few training classes a supervised loss alone collapses each class and discards
    the features that separate unseen classes; this term keeps them. ``weight = 0`` turns it off, and the
    metric loss then sees the clean batch. For images ``(N, C, H, W)``, ``crop_scale`` (in ``(0, 1]``) also
    makes each view a random resized crop covering ``crop_scale`` to all of the image (Szegedy et al., 2015,
    arXiv:1409.4842), SimCLR's main augmentation; None: no crop.
    """

    weight: float = 1.0
    temperature: float = 0.1
    noise: float = 0.2
    crop_scale: float | None = None


@dataclass
class EvaluationConfig:
    """Retrieval evaluation on the test classes."""

    distance: str = "euclidean"
    batch_size: int = 1024


@dataclass
class ValidationConfig:
    """Evaluation on ``data.val_classes`` every ``every`` epochs: the best epoch by ``metric`` is kept, and
    training stops after ``patience`` evaluations without improvement (null: never early)."""

    metric: str = "mean_average_precision_at_r"
    patience: int | None = None
    every: int = 1


@dataclass
class OutputConfig:
    """What a run folder receives besides config.json, metrics.json and the checkpoints."""

    report: bool = True
    tensorboard: bool = False


def _component(family: str, default: ComponentConfig | None, optional: bool = False) -> Any:
    return field(
        default_factory=lambda: copy.deepcopy(default),
        metadata={"family": family, "optional": optional},
    )


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults are the ``dmlkit train`` demo.

    The demo trains a small MLP on the scikit-learn digits of classes 0-4 with the triplet margin loss
    (Schroff et al., 2015, FaceNet, arXiv:1503.03832) and semi-hard mining, plus an instance-discrimination
    term on two noisy views of each batch (:class:`InstanceConfig`), and measures retrieval on the unseen
    classes 5-9 (the class-disjoint protocol of Oh Song et al., 2016, arXiv:1511.06452). With only five
    training classes the triplet loss alone makes retrieval on the unseen classes worse than the untrained
    network; the instance term is what lets training help there.

    In a file or dictionary, sections and fields left out keep their defaults, while a component (``loss``,
    ``miner``, ``optimizer``) is written in full as ``{"name": ..., <argument>: <value>, ...}`` and the
    arguments it leaves out take the class's own defaults. ``miner`` may be ``null`` (no mining).
    Overrides ``key=value`` edit single values; ``loss.name=other`` switches to another class and, when the
    class changes, drops the previous class's arguments.

    Example:
        >>> config = TrainConfig().apply_overrides(["loss.margin=0.2", "epochs=3"])
        >>> config.loss.params["margin"], config.epochs
        (0.2, 3)
        >>> TrainConfig.from_dict(config.to_dict()) == config
        True
        >>> TrainConfig().apply_overrides(["loss.margn=0.2"])
        Traceback (most recent call last):
        ...
        KeyError: "Unknown config key 'loss.margn'. Did you mean 'loss.margin'? Known: ..."
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: ComponentConfig = _component("loss", ComponentConfig("triplet_margin", {"margin": 0.1}))
    miner: ComponentConfig | None = _component(
        "miner", ComponentConfig("triplet_margin", {"margin": 0.1, "type_of_triplets": "semihard"}), optional=True
    )
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    instance: InstanceConfig = field(default_factory=InstanceConfig)
    optimizer: ComponentConfig = _component("optimizer", ComponentConfig("adam", {"lr": 0.0003}))
    scheduler: ComponentConfig | None = _component("scheduler", None, optional=True)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    epochs: int = 10
    iterations_per_epoch: int | None = None
    max_grad_norm: float | None = None
    autocast: str | None = None
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs"
    run_name: str | None = None

    # Serialisation ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary holding every value, with ``"format_version"``."""
        return {"format_version": FORMAT_VERSION, **_section_to_dict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a configuration from the defaults updated by ``data`` (as written by :meth:`to_dict`).

        Raises:
            KeyError: an unknown key or component name, with suggestions.
            TypeError, ValueError: a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise TypeError(message(_OWNER, "config", "a mapping of keys to values", data))
        body = dict(data)
        version = body.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(message(_OWNER, "format_version", f"{FORMAT_VERSION}", version))
        config = cls()
        for key, value in _leaves(config, body, ""):
            config._set(key, value)
        config.validate()
        return config

    def apply_overrides(self, overrides: Iterable[str]) -> TrainConfig:
        """A copy with ``"key=value"`` overrides applied in order (values parsed by :func:`parse_value`)."""
        config = copy.deepcopy(self)
        for text in overrides:
            key, value = parse_override(text)
            config._set(key, value)
        config.validate()
        return config

    # Checks ----------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every value and component; raise ``KeyError``, ``TypeError`` or ``ValueError`` on the first problem."""
        if self.data.name not in DATASET_NAMES:
            hint = close_matches_hint(self.data.name, DATASET_NAMES)
            known = ", ".join(DATASET_NAMES)
            raise KeyError(f"Config key 'data.name': Unknown dataset {self.data.name!r}.{hint} Known: {known}.")
        data = self.data
        for key, classes in (("data.train_classes", data.train_classes), ("data.test_classes", data.test_classes)):
            if not classes:
                raise ValueError(message(_OWNER, key, "a non-empty list of classes", classes))
        overlap = sorted(set(self.data.train_classes) & set(self.data.test_classes))
        if overlap:
            rule = f"disjoint from `data.train_classes` (shared: {overlap})"
            raise ValueError(message(_OWNER, "data.test_classes", rule, self.data.test_classes))
        for size in self.model.hidden:
            check_range(_OWNER, "model.hidden", size, low=1, integer=True)
        check_range(_OWNER, "model.embedding_size", self.model.embedding_size, low=1, integer=True)
        check_range(_OWNER, "sampler.m", self.sampler.m, low=1, integer=True)
        check_range(_OWNER, "sampler.batch_size", self.sampler.batch_size, low=1, integer=True)
        if self.sampler.batch_size % self.sampler.m:
            rule = f"a multiple of `sampler.m` ({self.sampler.m})"
            raise ValueError(message(_OWNER, "sampler.batch_size", rule, self.sampler.batch_size))
        most = self.sampler.m * len(set(self.data.train_classes))
        if self.sampler.batch_size > most:
            rule = f"<= `sampler.m` * number of training classes ({most})"
            raise ValueError(message(_OWNER, "sampler.batch_size", rule, self.sampler.batch_size))
        check_range(_OWNER, "instance.weight", self.instance.weight, low=0.0)
        check_range(_OWNER, "instance.temperature", self.instance.temperature, low=0.0, low_inclusive=False)
        check_range(_OWNER, "instance.noise", self.instance.noise, low=0.0)
        if self.instance.crop_scale is not None:
            check_range(_OWNER, "instance.crop_scale", self.instance.crop_scale, low=0.0, high=1.0, low_inclusive=False)
        check_range(_OWNER, "evaluation.batch_size", self.evaluation.batch_size, low=1, integer=True)
        check_range(_OWNER, "epochs", self.epochs, low=1, integer=True)
        if self.iterations_per_epoch is not None:
            check_range(_OWNER, "iterations_per_epoch", self.iterations_per_epoch, low=1, integer=True)
        self._validate_additions()
        for section in ("loss", "miner", "optimizer", "scheduler"):
            component = getattr(self, section)
            if component is not None:
                check_component(FAMILIES[section], component.name, component.params, section)

    def _validate_additions(self) -> None:
        data = self.data
        taken = set(data.train_classes) | set(data.test_classes)
        shared = sorted(set(data.val_classes) & taken)
        if shared:
            rule = f"disjoint from the training and test classes (shared: {shared})"
            raise ValueError(message(_OWNER, "data.val_classes", rule, data.val_classes))
        if data.max_per_class is not None:
            check_range(_OWNER, "data.max_per_class", data.max_per_class, low=1, integer=True)
        check_model_name(_OWNER, self.model.name)
        if self.validation.patience is not None:
            check_range(_OWNER, "validation.patience", self.validation.patience, low=1, integer=True)
        check_range(_OWNER, "validation.every", self.validation.every, low=1, integer=True)
        if self.max_grad_norm is not None:
            check_range(_OWNER, "max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=False)
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(message(_OWNER, "autocast", 'null, "bfloat16" or "float16"', self.autocast))

    # Editing ---------------------------------------------------------------------------------------

    def _set(self, key: str, value: Any) -> None:
        parts = key.split(".")
        obj: Any = self
        for i, part in enumerate(parts):
            prefix = ".".join(parts[:i])
            fields = {f.name: f for f in dataclasses.fields(obj)}
            if part not in fields:
                raise _unknown_in(prefix, part, list(fields), parts[i + 1 :])
            here = f"{prefix}.{part}" if prefix else part
            rest = parts[i + 1 :]
            family = fields[part].metadata.get("family")
            if family is not None:
                registry = FAMILIES[family]
                if not rest:
                    setattr(obj, part, _component_from_value(value, registry, fields[part].metadata["optional"], here))
                    return
                component = getattr(obj, part)
                if component is None:
                    if rest != ["name"]:
                        raise KeyError(f"Config key {key!r}: `{here}` is null; set '{here}.name' first.")
                    component = ComponentConfig(_checked_name(registry, value, here))
                    setattr(obj, part, component)
                _set_in_component(component, registry, rest, value, here)
                return
            if not rest:
                setattr(obj, part, _coerce(value, typing.get_type_hints(type(obj))[part], here))
                return
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise KeyError(f"Unknown config key {key!r}: `{here}` is a value, not a section.")


def parse_value(text: str) -> Any:
    """Read an override's value: JSON first (``0.1``, ``true``, ``null``, ``[0, 1]``), then a Python literal
    (``True``, ``None``, ``(0, 1)``), else the text itself as a string.

    Example:
        >>> parse_value("0.1"), parse_value("true"), parse_value("[0, 1]"), parse_value("None"), parse_value("cpu")
        (0.1, True, [0, 1], None, 'cpu')
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return list(value) if isinstance(value, tuple) else value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` into the key and the parsed value.

    Example:
        >>> parse_override("sampler.m=8")
        ('sampler.m', 8)
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(message(_OWNER, "override", "of the form key=value (e.g. loss.margin=0.2)", text))
    return key, parse_value(raw.strip())


# Helpers -------------------------------------------------------------------------------------------


def _section_to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, ComponentConfig):
            out[f.name] = value.to_dict()
        elif dataclasses.is_dataclass(value):
            out[f.name] = _section_to_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


def _leaves(obj: Any, data: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, Any]]:
    """Dotted keys and values of ``data``, descending into sections but not into components."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        f = fields.get(name)
        section = getattr(obj, name) if f is not None else None
        if f is not None and f.metadata.get("family") is None and dataclasses.is_dataclass(section):
            if not isinstance(value, Mapping):
                raise TypeError(message(_OWNER, key, "a mapping (a JSON object)", value))
            yield from _leaves(section, value, f"{key}.")
        else:
            yield key, value


def _unknown_in(prefix: str, part: str, names: list[str], rest: list[str]) -> KeyError:
    tail = "." + ".".join(rest) if rest else ""
    full = [f"{prefix}.{n}" if prefix else n for n in names]
    key = f"{prefix}.{part}" if prefix else part
    close = [f"{prefix}.{n}{tail}" if prefix else f"{n}{tail}" for n in difflib.get_close_matches(part, names, 3, 0.5)]
    return unknown_key_error(key + tail, full, close)


def _checked_name(registry: Any, value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(message(_OWNER, f"{key}.name", f"a {registry.family} name (a string)", value))
    check_component(registry, value, {}, key)
    return value


def _component_from_value(value: Any, registry: Any, optional: bool, key: str) -> ComponentConfig | None:
    if value is None:
        if optional:
            return None
        raise TypeError(message(_OWNER, key, f'a {registry.family} name or {{"name": ..., ...}}', value))
    name, params = split_spec(value, key)
    check_component(registry, name, params, key)
    return ComponentConfig(name, copy.deepcopy(params))


def _set_in_component(component: ComponentConfig, registry: Any, rest: list[str], value: Any, prefix: str) -> None:
    head = rest[0]
    if head == "name" and len(rest) == 1:
        name = _checked_name(registry, value, prefix)
        if name != component.name:
            component.params = {}
        component.name = name
        return
    cls = registry[component.name]
    allowed = accepted_params(cls)
    if head not in allowed:
        raise unknown_param_error(prefix, head, ["name", *allowed])
    here = f"{prefix}.{head}"
    if len(rest) == 1:
        component.params[head] = copy.deepcopy(value)
        return
    if head not in SUBCOMPONENTS:
        raise KeyError(f"Unknown config key {here + '.' + '.'.join(rest[1:])!r}: `{here}` is a value, not a component.")
    current = component.params.get(head)
    if current is None:
        current = default_subcomponent(cls, head)
        if current is None:
            raise KeyError(f"Config key {here!r} has no registered default; set '{here}.name' first.")
    name, params = split_spec(current, here)
    sub = ComponentConfig(name, dict(params))
    _set_in_component(sub, SUBCOMPONENTS[head], rest[1:], value, here)
    component.params[head] = sub.to_dict()


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type, converting int to float and tuples to lists."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(value, inner, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(message(_OWNER, key, "true or false", value))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(message(_OWNER, key, "an integer", value))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(message(_OWNER, key, "a number", value))
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(message(_OWNER, key, "a string", value))
    if hint is dict or origin is dict:
        if isinstance(value, Mapping):
            return copy.deepcopy(dict(value))
        raise TypeError(message(_OWNER, key, "a mapping", value))
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise TypeError(message(_OWNER, key, f"a list of {item.__name__}", value))
        return [_coerce(v, item, key) for v in value]
    raise TypeError(f"{_OWNER}: no rule to check `{key}` of type {hint!r}.")  # pragma: no cover - a programming error


def read_mapping_file(path: str | os.PathLike[str], what: str = "configuration") -> dict[str, Any]:
    """The mapping held by a ``.json`` file, or a ``.yaml``/``.yml`` one when PyYAML is installed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another file extension.
        CorruptFileError: the file cannot be parsed or does not hold a mapping (``what`` names the expected kind).
        MissingDependencyError: a YAML file without PyYAML.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"{file}: a {what} file must end in .json, .yaml or .yml.")
    text = file.read_text(encoding="utf-8")
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{file}: invalid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise MissingDependencyError("pyyaml", "yaml", "Reading YAML configurations") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CorruptFileError(f"{file}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{file}: a {what} must be a mapping of keys to values.")
    return data
