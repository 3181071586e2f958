"""dmlkit.registry.Registry: read-only name -> class tables with close-match errors."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from dmlkit.registry import Registry


class TripletMarginLoss:
    pass


class ContrastiveLoss:
    pass


class Unregistered:
    pass


@pytest.fixture()
def registry() -> Registry:
    return Registry("loss", {"triplet_margin": TripletMarginLoss, "contrastive": ContrastiveLoss})


def test_lookup(registry: Registry) -> None:
    assert registry["triplet_margin"] is TripletMarginLoss
    assert registry["contrastive"] is ContrastiveLoss
    assert registry.get("missing") is None
    assert registry.family == "loss"


def test_is_a_read_only_mapping(registry: Registry) -> None:
    assert isinstance(registry, Mapping)
    assert len(registry) == 2
    assert list(registry) == ["triplet_margin", "contrastive"]
    assert "contrastive" in registry and "Contrastive" not in registry
    assert dict(registry.items()) == {"triplet_margin": TripletMarginLoss, "contrastive": ContrastiveLoss}
    with pytest.raises(TypeError):
        registry["new"] = Unregistered  # type: ignore[index]


def test_entries_are_copied() -> None:
    entries = {"a": TripletMarginLoss}
    registry = Registry("loss", entries)
    entries["b"] = ContrastiveLoss
    assert list(registry) == ["a"]


def test_unknown_name_suggests_close_matches(registry: Registry) -> None:
    with pytest.raises(
        KeyError,
        match=re.escape(
            "Unknown loss 'triplet_margn'. Did you mean 'triplet_margin'? Known: contrastive, triplet_margin."
        ),
    ):
        registry["triplet_margn"]


def test_unknown_name_without_close_match(registry: Registry) -> None:
    with pytest.raises(KeyError, match=re.escape("Unknown loss 'xyz'. Known: contrastive, triplet_margin.")):
        registry["xyz"]


def test_name_of(registry: Registry) -> None:
    assert registry.name_of(ContrastiveLoss) == "contrastive"
    with pytest.raises(KeyError, match=re.escape("Unregistered is not a registered loss.")):
        registry.name_of(Unregistered)


def test_family_registries_are_registries() -> None:
    from dmlkit.distances import DISTANCES
    from dmlkit.losses import LOSSES
    from dmlkit.miners import MINERS
    from dmlkit.reducers import REDUCERS
    from dmlkit.regularizers import REGULARIZERS

    for registry, family in [
        (DISTANCES, "distance"),
        (REDUCERS, "reducer"),
        (REGULARIZERS, "regularizer"),
        (LOSSES, "loss"),
        (MINERS, "miner"),
    ]:
        assert isinstance(registry, Registry) and registry.family == family and len(registry) > 0
    assert LOSSES["triplet_margin"].__name__ == "TripletMarginLoss"
    assert DISTANCES["lp"].__name__ == "LpDistance"
    assert REDUCERS["mean"].__name__ == "MeanReducer"
