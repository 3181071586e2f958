"""TuplesToWeightsSampler: weights equal the mined counts, draws follow them, eval/no-grad pass, PML parity."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dmlkit.miners import MultiSimilarityMiner, TripletMarginMiner
from dmlkit.samplers import SAMPLERS, TuplesToWeightsSampler
from dmlkit.types import Triplets
from tests.reference.samplers import draw_probabilities, mined_counts

N = 30
LABELS = torch.arange(5).repeat(6)


def indexed_dataset() -> TensorDataset:
    """Item i's input is the row [i, 0]: with an identity model and no normalisation, embeddings name items."""
    inputs = torch.stack([torch.arange(N, dtype=torch.float32), torch.zeros(N)], dim=1)
    return TensorDataset(inputs, LABELS)


class Recorder(nn.Module):
    """Identity model that records, per call, the batch size, its mode and whether gradients were enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled()))
        return x * self.scale


class FixedMiner:
    """Returns fixed tuples of subset positions and records what it saw."""

    def __init__(self, tuples: tuple[list[int], ...]) -> None:
        self.tuples = tuples
        self.seen: list[tuple[Tensor, Tensor]] = []

    def __call__(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        self.seen.append((embeddings, labels))
        return tuple(torch.tensor(part, dtype=torch.long) for part in self.tuples)


TRIPLETS = ([0, 0, 3, 7, 7, 7], [5, 10, 8, 2, 12, 2], [1, 1, 1, 1, 4, 20])
SMALL = ([0, 1], [2, 3], [4, 4])  # positions valid in any subset of 5 items or more
PAIRS = ([0, 2, 2], [5, 7, 7], [9, 9, 9, 9], [3, 4, 0, 3])


@pytest.mark.parametrize("tuples", [TRIPLETS, PAIRS], ids=["triplets", "pairs"])
def test_weights_are_the_mined_counts_over_their_maximum(tuples: tuple[list[int], ...]) -> None:
    sampler = TuplesToWeightsSampler(Recorder(), FixedMiner(tuples), indexed_dataset(), seed=0)
    list(sampler)
    counts = mined_counts(tuples, N)
    assert sampler.weights is not None and sampler.weights.dtype == torch.float32
    assert sampler.weights.tolist() == pytest.approx([c / max(counts) for c in counts], abs=1e-7)


def test_draws_follow_the_weights_chi_square() -> None:
    stats = pytest.importorskip("scipy.stats")
    sampler = TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), seed=1)
    drawn: Counter[int] = Counter()
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn.update(sampler)
    probabilities = draw_probabilities(dict(enumerate(mined_counts(TRIPLETS, N))), N)
    assert sum(drawn.values()) == 200 * N
    support = [i for i in range(N) if probabilities[i] > 0]
    assert set(drawn) == set(support)  # never an unmined item
    observed = [drawn[i] for i in support]
    expected = [probabilities[i] * 200 * N for i in support]
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_subset_is_embedded_and_only_its_items_are_drawn() -> None:
    miner = FixedMiner(SMALL)
    sampler = TuplesToWeightsSampler(Recorder(), miner, indexed_dataset(), subset_size=8, normalize_embeddings=False)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        embeddings, labels = miner.seen[-1]
        subset = embeddings[:, 0].long()
        assert len(drawn) == len(sampler) == 8
        assert len(set(subset.tolist())) == 8
        assert torch.equal(labels, LABELS[subset])
        # subset positions 0..4 were mined: weights 1, 1, 1, 1, 2 (over the maximum 2), zero elsewhere
        expected = torch.zeros(N)
        expected[subset[:5]] = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0])
        assert sampler.weights is not None and torch.equal(sampler.weights, expected)
        assert set(drawn) <= set(subset[:5].tolist())


def test_subset_larger_than_the_dataset_embeds_everything_and_draws_subset_size() -> None:
    miner = FixedMiner(([], [], []))
    sampler = TuplesToWeightsSampler(Recorder(), miner, indexed_dataset(), subset_size=50, seed=2)
    assert len(list(sampler)) == len(sampler) == 50
    assert miner.seen[-1][0].shape[0] == N


def test_no_mined_tuple_means_uniform_over_the_subset() -> None:
    sampler = TuplesToWeightsSampler(Recorder(), FixedMiner(([], [], [])), indexed_dataset(), subset_size=10, seed=3)
    drawn = list(sampler)
    assert sampler.weights is not None
    assert sorted(sampler.weights.unique().tolist()) == [0.0, 1.0] and int(sampler.weights.sum()) == 10
    assert set(drawn) <= set(torch.nonzero(sampler.weights).reshape(-1).tolist())


def test_one_mined_item_is_always_drawn() -> None:
    sampler = TuplesToWeightsSampler(Recorder(), FixedMiner(([6], [6], [6])), indexed_dataset(), seed=4)
    assert list(sampler) == [6] * N


def test_embedding_pass_runs_in_eval_mode_without_grad_in_batches_and_restores_the_mode() -> None:
    model = Recorder()
    model.train()
    sampler = TuplesToWeightsSampler(model, FixedMiner(TRIPLETS), indexed_dataset(), seed=5, batch_size=8)
    list(sampler)
    assert model.calls == [(8, False, False), (8, False, False), (8, False, False), (6, False, False)]
    assert model.training
    model.eval()
    list(sampler)
    assert not model.training


def test_embeddings_are_normalised_by_default() -> None:
    miner = FixedMiner(TRIPLETS)
    list(TuplesToWeightsSampler(Recorder(), miner, indexed_dataset(), seed=6))
    embeddings, _ = miner.seen[-1]
    inputs = indexed_dataset().tensors[0]
    torch.testing.assert_close(embeddings, F.normalize(inputs, dim=1))


def test_weights_with_a_real_miner_match_an_independent_count() -> None:
    torch.manual_seed(0)
    inputs = torch.randn(N, 6)
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5))  # dropout: eval mode matters
    miner = TripletMarginMiner(margin=0.01, type_of_triplets="semihard")
    sampler = TuplesToWeightsSampler(model, miner, TensorDataset(inputs, LABELS), seed=7, batch_size=7)
    list(sampler)
    with torch.no_grad():
        model.eval()
        mined = miner(F.normalize(model(inputs), dim=1), LABELS)
    counts = mined_counts([part.tolist() for part in mined], N)
    assert max(counts) > 0 and min(counts) == 0
    assert sampler.weights is not None
    assert sampler.weights.tolist() == pytest.approx([c / max(counts) for c in counts], abs=1e-6)


def test_determinism_per_seed_and_epoch() -> None:
    def make(seed: int | None) -> TuplesToWeightsSampler:
        miner = MultiSimilarityMiner(epsilon=0.5)
        return TuplesToWeightsSampler(Recorder(), miner, indexed_dataset(), subset_size=12, seed=seed)

    a, b = make(8), make(8)
    assert list(a) == list(b) == list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(make(9)) != first
    fresh = make(None)
    assert list(fresh) != list(fresh)


class DictDataset(Dataset[dict[str, Any]]):
    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": torch.tensor([float(index), 0.0]), "y": torch.tensor([int(LABELS[index]), index % 2])}


def test_getter_hierarchy_level_and_dtype() -> None:
    model = Recorder().double()
    miner = FixedMiner(TRIPLETS)
    sampler = TuplesToWeightsSampler(
        model,
        miner,
        DictDataset(),
        seed=10,
        data_and_label_getter=lambda batch: (batch["x"], batch["y"]),
        label_hierarchy_level=1,
        dtype=torch.float64,
        normalize_embeddings=False,
        data_device="cpu",
        dataloader_num_workers=0,
    )
    list(sampler)
    embeddings, labels = miner.seen[-1]
    assert embeddings.dtype == torch.float64
    assert torch.equal(embeddings[:, 0], torch.arange(N, dtype=torch.float64))
    assert torch.equal(labels, torch.arange(N) % 2)


def test_a_dataloader_reruns_the_mining_every_epoch() -> None:
    miner = FixedMiner(SMALL)
    dataset = indexed_dataset()
    sampler = TuplesToWeightsSampler(Recorder(), miner, dataset, subset_size=12, seed=11)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert sum(len(x) for x, _ in loader) == 12
    assert len(miner.seen) == 2


def test_len_and_weights_match_pml() -> None:
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    miners = pytest.importorskip("pytorch_metric_learning.miners")
    torch.manual_seed(1)
    dataset = TensorDataset(torch.randn(N, 6, dtype=torch.float64), LABELS)
    model = nn.Linear(6, 4).double()
    pml_miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="all")
    kwargs = {"batch_size": 7, "dataloader_num_workers": 0, "data_device": torch.device("cpu")}
    theirs = samplers.TuplesToWeightsSampler(model, pml_miner, dataset, **kwargs)
    ours = TuplesToWeightsSampler(model, pml_miner, dataset, seed=0, **kwargs)
    assert len(ours) == len(theirs) == N
    list(theirs)
    list(ours)
    assert ours.weights is not None and theirs.weights is not None
    assert (ours.weights > 0).sum() > 0
    torch.testing.assert_close(ours.weights.double(), theirs.weights.double().cpu(), rtol=0, atol=1e-6)
    for size in (5, 29):
        assert len(TuplesToWeightsSampler(model, pml_miner, dataset, size)) == len(
            samplers.TuplesToWeightsSampler(model, pml_miner, dataset, size)
        )


def test_registry() -> None:
    assert SAMPLERS["tuples_to_weights"] is TuplesToWeightsSampler
    assert SAMPLERS.name_of(TuplesToWeightsSampler) == "tuples_to_weights"


def _iterate(sampler: TuplesToWeightsSampler) -> list[int]:
    return list(sampler)


def _nan_model() -> nn.Module:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    return model


def _miner_returning(value: Any) -> Callable[[Tensor, Tensor], Any]:
    return lambda embeddings, labels: value


OPTIONS = (
    "'batch_size', 'normalize_embeddings', 'data_device', 'dtype', 'data_and_label_getter', "
    "'dataloader_num_workers', 'label_hierarchy_level'"
)
OWNER = "TuplesToWeightsSampler"
MINER_RULE = (
    "a function returning a 3-tuple (anchors, positives, negatives) or a 4-tuple "
    "(anchors_pos, positives, anchors_neg, negatives) of 1-D integer tensors"
)
ERROR_CASES = [
    (
        lambda: TuplesToWeightsSampler(lambda x: x, FixedMiner(TRIPLETS), indexed_dataset()),  # type: ignore[arg-type]
        TypeError,
        f"{OWNER}: `model` must be a torch.nn.Module, got function.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), 3, indexed_dataset()),
        TypeError,
        f"{OWNER}: `miner` must be callable as miner(embeddings, labels), got 'int'.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), iter([1, 2])),  # type: ignore[arg-type]
        TypeError,
        f"{OWNER}: `dataset` must be a map-style dataset (with __len__ and __getitem__), got 'list_iterator'.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), TensorDataset(torch.zeros(0, 2))),
        ValueError,
        f"{OWNER}: `dataset` must be non-empty, got an empty dataset.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), 0),
        ValueError,
        f"{OWNER}: `subset_size` must be an integer >= 1, got 0.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), batchsize=8),
        TypeError,
        f"{OWNER}: `tester_kwargs` must be among {OPTIONS}, got 'batchsize'. Did you mean 'batch_size'?",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), pca=2),
        TypeError,
        f"{OWNER}: `tester_kwargs` must be among {OPTIONS}, got 'pca'.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), batch_size=0),
        ValueError,
        f"{OWNER}: `batch_size` must be an integer >= 1, got 0.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), dtype=torch.int64),
        TypeError,
        f"{OWNER}: `dtype` must be a floating-point torch.dtype or None, got torch.int64.",
    ),
    (
        lambda: TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), seed=-3),
        ValueError,
        f"{OWNER}: `seed` must be an integer >= 0, got -3.",
    ),
    (
        lambda: _iterate(TuplesToWeightsSampler(Recorder(), _miner_returning(None), indexed_dataset())),
        TypeError,
        f"{OWNER}: `miner` must be {MINER_RULE}, got a result of type NoneType.",
    ),
    (
        lambda: _iterate(TuplesToWeightsSampler(Recorder(), _miner_returning(([0.5], [1], [2])), indexed_dataset())),
        TypeError,
        f"{OWNER}: `miner` must be {MINER_RULE}, got a tuple holding list.",
    ),
    (
        lambda: _iterate(
            TuplesToWeightsSampler(
                Recorder(), _miner_returning(Triplets(*torch.tensor([[0], [1], [N]]))), indexed_dataset()
            )
        ),
        ValueError,
        f"{OWNER}: `miner` must be a function returning indices in [0, {N}) for {N} embeddings, got index {N}.",
    ),
    (
        lambda: _iterate(TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), TensorDataset(torch.zeros(N, 2)))),
        TypeError,
        f"{OWNER}: `dataset` must be a dataset of (input, label) items, or given with a `data_and_label_getter`, "
        "got a batch of type list.",
    ),
    (
        lambda: _iterate(
            TuplesToWeightsSampler(Recorder(), FixedMiner(TRIPLETS), indexed_dataset(), label_hierarchy_level=1)
        ),
        ValueError,
        f"{OWNER}: `labels` must be 1-D class labels, or 2-D with more than `label_hierarchy_level` (1) columns, "
        "got shape (30,).",
    ),
    (
        lambda: _iterate(
            TuplesToWeightsSampler(
                _nan_model(),
                FixedMiner(TRIPLETS),
                indexed_dataset(),
            )
        ),
        ValueError,
        f"{OWNER}: `model output` must be finite (no NaN or Inf); check the model's outputs and learning rate, "
        f"got {N} row(s) containing NaN or Inf.",
    ),
]


@pytest.mark.parametrize(("call", "error", "text"), ERROR_CASES)
def test_errors(call: Callable[[], object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="^" + re.escape(text) + "$"):
        call()


def test_numpy_and_dataset_lengths() -> None:
    sampler = TuplesToWeightsSampler(Recorder(), FixedMiner(SMALL), indexed_dataset(), np.int64(7))
    assert len(sampler) == 7 and len(list(sampler)) == 7
