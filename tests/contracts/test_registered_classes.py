"""Contracts every registered class honours, parametrised over the family registries found at collection time.

A class added to a registry later is covered without touching this file.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch
from torch import nn

from dmlkit.types import Pairs, Triplets

# package -> (registry name, base class path, class-name suffixes dropped from the registry key)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "distances": ("DISTANCES", "BaseDistance", ("Distance", "Similarity")),
    "reducers": ("REDUCERS", "BaseReducer", ("Reducers", "Reducer")),
    "regularizers": ("REGULARIZERS", "BaseRegularizer", ("Regularizer",)),
    "losses": ("LOSSES", "BaseMetricLossFunction", ("Losses", "Loss")),
    "miners": ("MINERS", "BaseMiner", ("Miner",)),
}

BATCH, DIM, CLASSES = 24, 8, 4

# classes whose every argument has a default, yet that need one of them set (as in pytorch-metric-learning)
NEEDS_AN_ARGUMENT: dict[str, str] = {
    "ThresholdReducer": "needs `low` or `high`",
}


def _entries() -> list[Any]:
    params = []
    for package, (registry_name, _, _) in FAMILIES.items():
        module = importlib.import_module(f"dmlkit.{package}")
        for key, cls in getattr(module, registry_name).items():
            params.append(pytest.param(package, key, cls, id=f"{package}:{key}"))
    return params


ENTRIES = _entries()
ALL = pytest.mark.parametrize("package,key,cls", ENTRIES)


def _of(family: str) -> Any:
    return pytest.mark.parametrize("package,key,cls", [p for p in ENTRIES if p.values[0] == family])


def _required_args(cls: type) -> list[str]:
    return [
        name
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
        and param.default is inspect.Parameter.empty
        and param.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


# values for required constructor arguments that mean the same in every class that has them
REQUIRED_VALUES: dict[str, Any] = {"num_classes": CLASSES, "embedding_size": DIM, "margin": 0.4, "Tn": 10}


def _construct(cls: type) -> Any:
    required = _required_args(cls)
    unknown = [name for name in required if name not in REQUIRED_VALUES]
    if unknown:
        pytest.skip(f"{cls.__name__} has required constructor arguments: {', '.join(unknown)}")
    if cls.__name__ in NEEDS_AN_ARGUMENT:
        pytest.skip(f"{cls.__name__} {NEEDS_AN_ARGUMENT[cls.__name__]}")
    # the class sizes are passed by name wherever they are accepted (some classes also take PML's spellings)
    sized = [name for name in ("num_classes", "embedding_size") if name in inspect.signature(cls.__init__).parameters]
    return cls(**{name: REQUIRED_VALUES[name] for name in {*required, *sized}})


def key_matches(key: str, stem: str) -> bool:
    """Whether ``key`` is a snake_case spelling of the CamelCase ``stem``.

    Word boundaries (lower -> upper case) need an underscore; inside acronyms and around digits
    (``NTXent``, ``P2SGrad``) an underscore is allowed but not required.
    """
    if key.replace("_", "") != stem.lower() or key.startswith("_") or key.endswith("_") or "__" in key:
        return False
    cuts, position = set(), 0
    for char in key:
        if char == "_":
            cuts.add(position)
        else:
            position += 1
    required = {i for i in range(1, len(stem)) if stem[i - 1].islower() and stem[i].isupper()}
    allowed = required | {
        i for i in range(1, len(stem)) if stem[i].isupper() or stem[i].isdigit() != stem[i - 1].isdigit()
    }
    return required <= cuts <= allowed


@pytest.mark.parametrize(
    "key,stem,ok",
    [
        ("triplet_margin", "TripletMargin", True),
        ("avg_non_zero", "AvgNonZero", True),
        ("lp", "Lp", True),
        ("nt_xent", "NTXent", True),
        ("ntxent", "NTXent", True),
        ("p2s_grad", "P2SGrad", True),
        ("tripletmargin", "TripletMargin", False),
        ("triplet_mar_gin", "TripletMargin", False),
        ("triplet", "TripletMargin", False),
        ("_lp", "Lp", False),
    ],
)
def test_key_rule(key: str, stem: str, ok: bool) -> None:
    assert key_matches(key, stem) is ok


def test_every_family_has_entries() -> None:
    for package in FAMILIES:
        assert any(p.values[0] == package for p in ENTRIES), package


@ALL
def test_subclass_of_family_base(package: str, key: str, cls: type) -> None:
    base = getattr(importlib.import_module(f"dmlkit.{package}"), FAMILIES[package][1])
    assert issubclass(cls, base) and issubclass(cls, nn.Module)


@ALL
def test_exported_in_package_all(package: str, key: str, cls: type) -> None:
    module = importlib.import_module(f"dmlkit.{package}")
    assert cls.__name__ in module.__all__
    assert getattr(module, cls.__name__) is cls


@ALL
def test_docstring_with_example(package: str, key: str, cls: type) -> None:
    doc = cls.__dict__.get("__doc__") or ""
    assert doc.strip(), f"{cls.__name__} has no docstring of its own"
    assert "Example" in doc and ">>>" in doc, f"{cls.__name__}'s docstring has no runnable Example"


@ALL
def test_registry_key_is_snake_case_name(package: str, key: str, cls: type) -> None:
    stem = cls.__name__
    for suffix in FAMILIES[package][2]:
        if stem.endswith(suffix) and stem != suffix:
            stem = stem[: -len(suffix)]
            break
    assert key_matches(key, stem), f"registry key {key!r} does not spell {cls.__name__} minus its family suffix"


@ALL
def test_default_construction(package: str, key: str, cls: type) -> None:
    assert isinstance(_construct(cls), cls)


def _assert_accepts_pml_arguments(cls: type, theirs: type) -> None:
    """Every named constructor argument of pytorch-metric-learning's class is accepted, with the same default."""
    ours = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values())
    for name, param in inspect.signature(theirs.__init__).parameters.items():
        if name == "self" or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if name not in ours:
            assert takes_kwargs, f"{cls.__name__} lacks pytorch-metric-learning's argument {name!r}"
            continue
        mine, default = ours[name].default, param.default
        if default is inspect.Parameter.empty and mine is None:
            # required there; optional here because the size can also be given under its consistent name
            continue
        if inspect.isfunction(default):
            # a default function object (e.g. an aggregation) cannot be compared; None stands for it
            assert mine is None or callable(mine), f"{cls.__name__}({name}=...) defaults to {mine!r}"
            continue
        assert mine == default, (
            f"{cls.__name__}({name}=...) defaults to {mine!r}, pytorch-metric-learning to {default!r}"
        )


@ALL
def test_constructor_matches_pml(package: str, key: str, cls: type) -> None:
    pml_module = pytest.importorskip(f"pytorch_metric_learning.{package}")
    theirs = getattr(pml_module, cls.__name__, None)
    if theirs is None:
        pytest.skip(f"pytorch-metric-learning has no {package}.{cls.__name__}")
    _assert_accepts_pml_arguments(cls, theirs)


@pytest.mark.parametrize("package", list(FAMILIES))
def test_family_base_matches_pml(package: str) -> None:
    pml_module = pytest.importorskip(f"pytorch_metric_learning.{package}")
    base = FAMILIES[package][1]
    _assert_accepts_pml_arguments(
        getattr(importlib.import_module(f"dmlkit.{package}"), base), getattr(pml_module, base)
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(BATCH, DIM, generator=g)
    labels = torch.arange(CLASSES).repeat(BATCH // CLASSES)
    return emb, labels


@_of("distances")
def test_distance_gives_query_by_reference_matrix(package: str, key: str, cls: type) -> None:
    distance = _construct(cls)
    emb, _ = _batch()
    mat = distance(emb[:5], emb)
    assert mat.shape == (5, BATCH) and bool(torch.isfinite(mat).all())
    assert distance(emb).shape == (BATCH, BATCH)


@_of("regularizers")
def test_regularizer_gives_finite_scalar(package: str, key: str, cls: type) -> None:
    regularizer = _construct(cls)
    emb, _ = _batch()
    emb.requires_grad_()
    out = regularizer(emb)
    assert out.ndim == 0 and bool(torch.isfinite(out))


@_of("losses")
def test_loss_gives_finite_scalar_with_gradient(package: str, key: str, cls: type) -> None:
    loss_fn = _construct(cls)
    emb, labels = _batch()
    emb.requires_grad_()
    if cls.requires_labels:
        out = loss_fn(emb, labels)
    elif cls.supports_ref_emb:
        out = loss_fn(emb, ref_emb=_batch()[0].flip(0))
    else:
        out = loss_fn(emb)
    assert isinstance(out, torch.Tensor) and out.ndim == 0
    assert bool(torch.isfinite(out))
    assert out.requires_grad
    out.backward()
    assert emb.grad is not None and bool(torch.isfinite(emb.grad).all())


@_of("losses")
def test_loss_of_an_empty_batch_is_a_connected_zero(package: str, key: str, cls: type) -> None:
    loss_fn = _construct(cls)
    emb = torch.zeros(0, DIM, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    if hasattr(cls, "batch_rule"):  # batch statistics (VICReg, Barlow Twins): two rows at least, a clear error
        with pytest.raises(ValueError, match="at least 2 rows"):
            loss_fn(emb, ref_emb=torch.zeros(0, DIM))
        return
    if cls.requires_labels:
        out = loss_fn(emb, labels)
    elif cls.supports_ref_emb:
        out = loss_fn(emb, ref_emb=torch.zeros(0, DIM))
    else:
        out = loss_fn(emb)
    assert out.ndim == 0 and out.item() == 0.0 and out.requires_grad
    out.backward()
    assert emb.grad is not None and emb.grad.shape == (0, DIM)
    assert all(p.grad is not None and not bool(p.grad.any()) for p in loss_fn.parameters())


@_of("miners")
def test_miner_gives_valid_indices(package: str, key: str, cls: type) -> None:
    miner = _construct(cls)
    emb, labels = _batch()
    out = miner(emb, labels)
    assert isinstance(out, (Pairs, Triplets))
    for t in out:
        assert t.dtype == torch.long and t.ndim == 1
        assert t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < BATCH)
    if isinstance(out, Triplets):
        assert out.anchors.numel() == out.positives.numel() == out.negatives.numel()
    else:
        assert out.anchors_pos.numel() == out.positives.numel()
        assert out.anchors_neg.numel() == out.negatives.numel()
