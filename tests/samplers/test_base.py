"""The contract of every registered sampler: order a function of (seed, epoch) only, no global random state."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dmlkit.miners import TripletMarginMiner
from dmlkit.samplers import SAMPLERS, BaseSampler

LABELS = torch.arange(6).repeat_interleave(torch.tensor([2, 3, 4, 5, 6, 7]))
HIERARCHY = torch.stack([LABELS, LABELS // 2], dim=1)
DATA = TensorDataset(torch.randn(len(LABELS), 3, generator=torch.Generator().manual_seed(0)), LABELS)
MODEL = nn.Linear(3, 2)

FACTORIES: dict[str, Callable[[int | None], Any]] = {
    "m_per_class": lambda seed: SAMPLERS["m_per_class"](LABELS, 2, 6, 60, seed=seed),
    "m_per_class_batch": lambda seed: SAMPLERS["m_per_class_batch"](LABELS, 2, 6, 60, seed=seed),
    "distributed_m_per_class": lambda seed: SAMPLERS["distributed_m_per_class"](
        LABELS, 2, 6, 60, num_replicas=1, rank=0, seed=seed
    ),
    "hierarchical": lambda seed: SAMPLERS["hierarchical"](HIERARCHY, 4, 2, seed=seed),
    "tuples_to_weights": lambda seed: SAMPLERS["tuples_to_weights"](
        MODEL, TripletMarginMiner(margin=0.5), DATA, subset_size=20, seed=seed
    ),
    "fixed_set_of_triplets": lambda seed: SAMPLERS["fixed_set_of_triplets"](LABELS, 20, seed=seed),
}


def test_every_registered_sampler_is_covered() -> None:
    assert set(FACTORIES) == set(SAMPLERS)


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_order_is_a_function_of_seed_and_epoch(key: str) -> None:
    a, b = FACTORIES[key](3), FACTORIES[key](3)
    assert isinstance(a, BaseSampler)
    epoch0 = list(a)
    assert list(a) == list(b) == epoch0
    a.set_epoch(np.int64(4))
    b.set_epoch(4)
    epoch4 = list(a)
    assert list(b) == epoch4 != epoch0
    a.set_epoch(0)
    assert list(a) == epoch0
    assert list(FACTORIES[key](5)) != epoch0
    assert len(epoch0) == len(a)


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_seed_none_gives_a_new_order_every_iteration(key: str) -> None:
    sampler = FACTORIES[key](None)
    assert sampler.seed is None
    assert list(sampler) != list(sampler)


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_global_random_state_is_neither_read_nor_changed(key: str) -> None:
    random_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    sampler = FACTORIES[key](6)
    first = list(sampler)
    assert random.getstate() == random_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    # reseeding the global generators changes nothing
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    assert list(FACTORIES[key](6)) == first


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_epoch_must_be_a_non_negative_integer(key: str) -> None:
    sampler = FACTORIES[key](0)
    owner = type(sampler).__name__
    with pytest.raises(ValueError, match="^" + re.escape(f"{owner}: `epoch` must be an integer >= 0, got -1.") + "$"):
        sampler.set_epoch(-1)
    with pytest.raises(TypeError, match="^" + re.escape(f"{owner}: `epoch` must be an integer, got 1.5.") + "$"):
        sampler.set_epoch(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^" + re.escape(f"{owner}: `seed` must be an integer, got '1'.") + "$"):
        FACTORIES[key]("1")  # type: ignore[arg-type]
