"""Build losses, miners, distances, reducers, regularizers and optimizers from names and parameters.

A component is written in a configuration as ``{"name": <registry key>, <constructor argument>: <value>, ...}``.
Arguments that are themselves components (``distance``, ``reducer``, ``embedding_regularizer``) take a
registry key (``"cosine"``) or such a dictionary (``{"name": "lp", "p": 1}``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .._validation import close_matches_hint, message
from ..distances import DISTANCES
from ..losses import LOSSES
from ..miners import MINERS
from ..reducers import REDUCERS
from ..registry import Registry
from ..regularizers import REGULARIZERS

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "SUBCOMPONENTS",
    "accepted_params",
    "build_component",
    "check_component",
    "default_subcomponent",
    "split_spec",
    "unknown_key_error",
    "unknown_param_error",
    "FAMILIES",
]

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry(
    "optimizer",
    {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
    },
)

#: learning-rate schedulers; stepped once per epoch (``plateau``: on the validation metric, maximised).
SCHEDULERS: Registry[Any] = Registry(
    "scheduler",
    {
        "step": torch.optim.lr_scheduler.StepLR,
        "multi_step": torch.optim.lr_scheduler.MultiStepLR,
        "exponential": torch.optim.lr_scheduler.ExponentialLR,
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
        "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
    },
)

#: constructor arguments that are components themselves, and the registry their names come from.
SUBCOMPONENTS: Mapping[str, Registry[Any]] = {
    "distance": DISTANCES,
    "reducer": REDUCERS,
    "embedding_regularizer": REGULARIZERS,
}

#: the tables a top-level component name may come from, by configuration section.
FAMILIES: Mapping[str, Registry[Any]] = {
    "loss": LOSSES,
    "miner": MINERS,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
}

#: constructor arguments that cannot come from a text configuration (random generators, parameter lists).
_NOT_CONFIGURABLE = frozenset({"generator", "params", "self", "optimizer"})


def accepted_params(cls: type) -> list[str]:
    """Constructor argument names of ``cls``, following ``**kwargs`` up the class hierarchy.

    Example:
        >>> from dmlkit.losses import TripletMarginLoss
        >>> "margin" in accepted_params(TripletMarginLoss), "distance" in accepted_params(TripletMarginLoss)
        (True, True)
    """
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        forwards_kwargs = False
        for param in inspect.signature(init).parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                forwards_kwargs = True
            elif (
                param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and param.name not in _NOT_CONFIGURABLE
                and param.name not in names
            ):
                names.append(param.name)
        if not forwards_kwargs:
            break
    return names


def unknown_key_error(key: str, known: Iterable[str], close: Iterable[str] | None = None) -> KeyError:
    """``KeyError`` for an unknown configuration key, suggesting close matches among ``close`` (or ``known``)."""
    known = list(known)
    hint = close_matches_hint(key, known if close is None else list(close))
    return KeyError(f"Unknown config key {key!r}.{hint} Known: {', '.join(known)}.")


def unknown_param_error(prefix: str, param: str, allowed: Iterable[str]) -> KeyError:
    """``KeyError`` for an unknown argument of the component at ``prefix``."""
    names = list(allowed)
    # Matching bare argument names keeps the shared prefix from making every key look alike.
    close = difflib.get_close_matches(param, names, n=3, cutoff=0.5)
    return unknown_key_error(f"{prefix}.{param}", [f"{prefix}.{n}" for n in names], [f"{prefix}.{n}" for n in close])


def default_subcomponent(owner_cls: type, param: str) -> str | None:
    """The registry key of the class ``owner_cls`` uses for ``param`` by default, when it is a registered class."""
    factory = getattr(owner_cls, f"default_{param}", None)
    if not isinstance(factory, type):
        return None
    try:
        return SUBCOMPONENTS[param].name_of(factory)
    except KeyError:
        return None


def split_spec(spec: str | Mapping[str, Any], key: str) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` of a component written as a registry key or a ``{"name": ..., ...}`` dictionary."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return spec["name"], {k: v for k, v in spec.items() if k != "name"}
    raise TypeError(message("TrainConfig", key, 'a registry key or a {"name": ..., ...} dictionary', spec))


def check_component(registry: Registry[Any], name: str, params: Mapping[str, Any], key: str) -> None:
    """Check that ``name`` is registered and every parameter (recursively) is a constructor argument.

    Raises:
        KeyError: an unknown name or argument, with close-match suggestions.
    """
    cls = _lookup(registry, name, key)
    allowed = accepted_params(cls)
    for param, value in params.items():
        if param not in allowed:
            raise unknown_param_error(key, param, allowed)
        if param in SUBCOMPONENTS and value is not None:
            sub_name, sub_params = split_spec(value, f"{key}.{param}")
            check_component(SUBCOMPONENTS[param], sub_name, sub_params, f"{key}.{param}")


def build_component(registry: Registry[Any], name: str, params: Mapping[str, Any], key: str, /, **extra: Any) -> Any:
    """Instantiate ``registry[name](**params, **extra)``, building sub-components from their specs first."""
    check_component(registry, name, params, key)
    cls = registry[name]
    kwargs: dict[str, Any] = {}
    for param, value in params.items():
        if param in SUBCOMPONENTS and value is not None:
            sub_name, sub_params = split_spec(value, f"{key}.{param}")
            kwargs[param] = build_component(SUBCOMPONENTS[param], sub_name, sub_params, f"{key}.{param}")
        else:
            kwargs[param] = value
    return cls(**extra, **kwargs)


def _lookup(registry: Registry[Any], name: str, key: str) -> type:
    if not isinstance(name, str):
        raise TypeError(message("TrainConfig", f"{key}.name", f"a {registry.family} name (a string)", name))
    try:
        return registry[name]
    except KeyError as exc:
        raise KeyError(f"Config key '{key}.name': {exc.args[0]}") from None
