"""DistributedMPerClassSampler: the invariants of each process's batches, and the global batches of one process.

The sampler is driven here with explicit ``num_replicas``/``rank`` (no process group); its defaults from a
process group and the shared entropy of ``seed=None`` are checked by the 2-process run in
tests/training/test_distributed_training.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dmlkit.samplers import SAMPLERS, DistributedMPerClassSampler, MPerClassSampler

#: 7 classes of 3 to 9 samples (class 6 has fewer than m = 4: drawn with replacement)
LABELS = torch.tensor([c for c, size in enumerate([5, 9, 4, 6, 8, 7, 3]) for _ in range(size)])


def _ranks(world: int, **kwargs: object) -> list[DistributedMPerClassSampler]:
    args = {"m": 2, "batch_size": 4, "length_before_new_iter": 40, "seed": 3, **kwargs}
    return [DistributedMPerClassSampler(LABELS, num_replicas=world, rank=r, **args) for r in range(world)]  # type: ignore[arg-type]


def _batches(sampler: DistributedMPerClassSampler) -> list[list[int]]:
    order = list(sampler)
    size = sampler.batch_size
    assert len(order) == len(sampler) and len(order) % size == 0
    return [order[i : i + size] for i in range(0, len(order), size)]


@pytest.mark.parametrize("world,m,batch_size", [(2, 2, 4), (3, 2, 4), (2, 4, 4), (3, 1, 2)])
def test_each_step_gives_every_process_its_own_samples_and_classes_m_per_class(
    world: int, m: int, batch_size: int
) -> None:
    samplers = _ranks(world, m=m, batch_size=batch_size)
    per_rank = [_batches(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    for step in zip(*per_rank, strict=True):
        classes_seen: set[int] = set()
        for batch in step:
            counts = Counter(LABELS[batch].tolist())
            assert set(counts.values()) == {m}, counts
            assert len(counts) == batch_size // m
            assert classes_seen.isdisjoint(counts)
            classes_seen |= set(counts)
        for r, batch in enumerate(step):
            # no sample on two processes in one step
            assert all(set(batch).isdisjoint(other) for other in step[r + 1 :])
            # within a batch, a class's samples are distinct unless the class has fewer than m (with replacement)
            for c in set(LABELS[batch].tolist()):
                if LABELS.tolist().count(c) >= m:
                    assert len({i for i in batch if int(LABELS[i]) == c}) == m


def test_global_batches_are_those_of_mperclasssampler_with_the_global_batch_size() -> None:
    for epoch in (0, 5):
        samplers = _ranks(3, length_before_new_iter=13)
        single = MPerClassSampler(LABELS, 2, batch_size=12, length_before_new_iter=39, seed=3)
        for s in [*samplers, single]:
            s.set_epoch(epoch)
        per_rank = [_batches(s) for s in samplers]
        glued = [i for step in zip(*per_rank, strict=True) for batch in step for i in batch]
        assert glued == list(single)
        assert len(samplers[0]) == 12 and len(single) == 36


def test_one_process_equals_mperclasssampler() -> None:
    (only,) = _ranks(1)
    assert list(only) == list(MPerClassSampler(LABELS, 2, batch_size=4, length_before_new_iter=40, seed=3))


def test_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = _ranks(2)[1], _ranks(2)[1]
    first = list(a)
    assert list(a) == list(b) == first
    a.set_epoch(np.int64(2))
    b.set_epoch(2)
    assert list(a) == list(b) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(_ranks(2, seed=4)[1]) != first


def test_seed_none_with_one_process_gives_a_new_order_every_iteration() -> None:
    (sampler,) = _ranks(1, seed=None)
    assert list(sampler) != list(sampler)


def test_loader_batches_are_the_blocks() -> None:
    sampler = _ranks(2)[1]
    loader = DataLoader(TensorDataset(torch.arange(len(LABELS)), LABELS), batch_size=4, sampler=sampler)
    assert [x.tolist() for x, _ in loader] == _batches(sampler)
    assert len(loader) == len(sampler) // 4 == 10


def test_attributes_and_registry() -> None:
    sampler = _ranks(2)[1]
    assert (sampler.num_replicas, sampler.rank, sampler.batch_size, sampler.m_per_class) == (2, 1, 4, 2)
    assert sampler.labels == list(range(7))
    assert sorted(sampler.labels_to_indices[6].tolist()) == list(range(39, 42))
    assert SAMPLERS["distributed_m_per_class"] is DistributedMPerClassSampler
    assert SAMPLERS.name_of(DistributedMPerClassSampler) == "distributed_m_per_class"
    # without a process group the defaults are one process of rank 0
    default = DistributedMPerClassSampler(LABELS, 2, 4, 40, seed=0)
    assert (default.num_replicas, default.rank) == (1, 0)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"batch_size": 5}, ValueError, r"`batch_size` must be a multiple of `m` \(2\), got 5\."),
        (
            {"batch_size": 8},
            ValueError,
            r"`batch_size` must be <= m \* number of classes / num_replicas \(2 \* 7 / 2\): each step draws distinct "
            r"classes for all processes, got 8\.",
        ),
        ({"length_before_new_iter": 3}, ValueError, r"`length_before_new_iter` must be >= `batch_size` \(4\), got 3"),
        ({"rank": 2}, ValueError, r"`rank` must be an integer >= 0 and < 2, got 2\."),
        ({"num_replicas": 0, "rank": 0}, ValueError, r"`num_replicas` must be an integer >= 1, got 0\."),
        ({"rank": 1.0}, TypeError, r"`rank` must be an integer, got 1\.0\."),
        (
            {"seed": None},
            ValueError,
            r"`seed` must be an integer shared by every process when there is no process group of `num_replicas` "
            r"processes to agree on fresh entropy, got None\.",
        ),
    ],
)
def test_errors(kwargs: dict[str, object], error: type[Exception], pattern: str) -> None:
    args: dict[str, object] = {"m": 2, "batch_size": 4, "length_before_new_iter": 40, "num_replicas": 2, "rank": 0}
    args["seed"] = 0
    args.update(kwargs)
    with pytest.raises(error, match="DistributedMPerClassSampler: " + pattern):
        DistributedMPerClassSampler(LABELS, **args)  # type: ignore[arg-type]
