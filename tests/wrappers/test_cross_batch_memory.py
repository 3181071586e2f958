"""CrossBatchMemory against a naive FIFO-queue oracle (tests/reference/wrappers.py), autograd, state, errors, PML."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from dmlkit.indices import convert_to_pairs
from dmlkit.losses import BaseMetricLossFunction, TripletMarginLoss
from dmlkit.miners import BaseMiner, TripletMarginMiner
from dmlkit.reducers import MeanReducer
from dmlkit.types import LabelPairs, Pairs, TermKind, Terms, Triplets
from dmlkit.wrappers import CrossBatchMemory
from tests.reference import triplet as tref
from tests.reference import wrappers as ref

DIM = 4
CLASSES = 3
#: batch sizes of a sequence: with a memory of 13 the queue fills exactly after the third batch, wraps around
#: twice, and one batch has one row.
SIZES = [5, 5, 3, 1, 5, 3, 5, 2]
#: the same without the batch of one (PML keeps a single row's self-pair, see the test documenting it).
PML_SIZES = [5, 5, 3, 2, 5, 3, 5, 2]


def _batch(g: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
    return torch.randn(n, DIM, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (n,), generator=g)


def _stored(xbm: CrossBatchMemory) -> tuple[Tensor, Tensor]:
    """The memory's rows from oldest to newest."""
    if xbm.has_been_filled:
        order = list(range(xbm.queue_idx, xbm.memory_size)) + list(range(xbm.queue_idx))
    else:
        order = list(range(xbm.queue_idx))
    index = torch.tensor(order, dtype=torch.long)
    return xbm.embedding_memory[index], xbm.label_memory[index]


def _contrastive_cls() -> type[BaseMetricLossFunction]:
    module = pytest.importorskip("dmlkit.losses.contrastive", reason="ContrastiveLoss is not available")
    return module.ContrastiveLoss


def _ntxent_cls() -> type[BaseMetricLossFunction]:
    module = pytest.importorskip("dmlkit.losses.ntxent", reason="NTXentLoss is not available")
    return module.NTXentLoss


def _mask(g: torch.Generator, n: int, step: int) -> Tensor:
    if step == 0:
        return torch.zeros(n, dtype=torch.bool)  # nothing enqueued into an empty memory: no reference yet
    if step == 3:
        return torch.ones(n, dtype=torch.bool)  # everything enqueued: no query
    return torch.rand(n, generator=g) < 0.5


# --------------------------------------------------------------------------------------------- oracle


OracleLoss = Callable[[list[list[float]], list[int], list[int | None], ref.NaiveMemory], Callable]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _triplet_oracle(margin: float, smooth: bool = False, reduce: Callable = tref.avg_non_zero) -> OracleLoss:
    def build(query: list, labels: list[int], uids: list[int | None], memory: ref.NaiveMemory) -> Callable:
        triplets = ref.memory_triplets(labels, uids, memory)
        mem = memory.embeddings
        return lambda rows: reduce(tref.triplet_values(rows, triplets, margin, smooth=smooth, ref_emb=mem))

    return build


def _contrastive_oracle(pos_margin: float, neg_margin: float) -> OracleLoss:
    def build(query: list, labels: list[int], uids: list[int | None], memory: ref.NaiveMemory) -> Callable:
        positive, negative = ref.memory_pairs(labels, uids, memory)
        mem = memory.embeddings
        return lambda rows: ref.contrastive_loss(rows, mem, positive, negative, pos_margin, neg_margin)

    return build


def _mined_triplet_oracle(
    loss_margin: float, miner_margin: float, kind: str, reduce: Callable = tref.avg_non_zero
) -> OracleLoss:
    def build(query: list, labels: list[int], uids: list[int | None], memory: ref.NaiveMemory) -> Callable:
        if not query or not memory.entries:
            return lambda rows: 0.0
        mined = tref.mine_triplets(
            query, labels, miner_margin, kind, ref_emb=memory.embeddings, ref_labels=memory.labels
        )
        triplets = ref.without_own_copies(mined, uids, memory)
        mem = memory.embeddings
        return lambda rows: reduce(tref.triplet_values(rows, triplets, loss_margin, ref_emb=mem))

    return build


def _make(kind: str) -> tuple[CrossBatchMemory, OracleLoss]:
    if kind == "triplet":
        return CrossBatchMemory(TripletMarginLoss(margin=0.2), DIM, 13), _triplet_oracle(0.2)
    if kind == "triplet_mean":
        # a mean over every triplet counts the zero-loss ones too, so a self-pair would change the value
        loss = TripletMarginLoss(margin=0.2, reducer=MeanReducer())
        return CrossBatchMemory(loss, DIM, 13), _triplet_oracle(0.2, reduce=_mean)
    if kind == "triplet_smooth":
        return CrossBatchMemory(TripletMarginLoss(margin=0.2, smooth_loss=True), DIM, 13), _triplet_oracle(0.2, True)
    if kind == "contrastive":
        loss = _contrastive_cls()(pos_margin=0.05, neg_margin=0.9)
        return CrossBatchMemory(loss, DIM, 13), _contrastive_oracle(0.05, 0.9)
    if kind == "contrastive_tiled":  # the loss forms the memory's pairs tile by tile from a LabelPairs
        loss = _contrastive_cls()(pos_margin=0.05, neg_margin=0.9, chunk_size=3)
        return CrossBatchMemory(loss, DIM, 13), _contrastive_oracle(0.05, 0.9)
    if kind == "triplet_mined":
        miner = TripletMarginMiner(margin=0.3, type_of_triplets="semihard")
        return CrossBatchMemory(TripletMarginLoss(margin=0.1), DIM, 13, miner=miner), _mined_triplet_oracle(
            0.1, 0.3, "semihard"
        )
    if kind == "triplet_mined_mean":
        # normalised distances are at most 2, so this miner keeps every triplet the memory offers
        miner = TripletMarginMiner(margin=2.5, type_of_triplets="all")
        loss = TripletMarginLoss(margin=0.1, reducer=MeanReducer())
        return CrossBatchMemory(loss, DIM, 13, miner=miner), _mined_triplet_oracle(0.1, 2.5, "all", _mean)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["triplet", "triplet_mean", "triplet_smooth", "contrastive", "contrastive_tiled", "triplet_mined",
     "triplet_mined_mean"],
)
@pytest.mark.parametrize("masked", [False, True], ids=["enqueue_all", "enqueue_mask"])
def test_matches_naive_queue_over_a_sequence_of_batches(kind: str, masked: bool) -> None:
    xbm, oracle = _make(kind)
    memory = ref.NaiveMemory(13)
    g = torch.Generator().manual_seed(7)
    for step, n in enumerate(SIZES):
        emb, labels = _batch(g, n + 2 if masked else n)
        mask = _mask(g, emb.shape[0], step) if masked else None
        x = emb.clone().requires_grad_()
        value = xbm(x, labels, enqueue_mask=mask)
        value.backward()

        query, query_labels, uids = ref.enqueue_batch(memory, emb, labels, mask)
        f = oracle(query, query_labels, uids, memory)
        assert value.item() == pytest.approx(f(query), abs=1e-10), f"step {step}"
        expected_grad = torch.zeros_like(emb)
        if query:
            rows = torch.tensor(ref.numeric_gradient(f, query), dtype=torch.float64)
            expected_grad[~mask if mask is not None else slice(None)] = rows
        torch.testing.assert_close(x.grad, expected_grad, atol=1e-6, rtol=0, msg=f"step {step}")

        stored_emb, stored_labels = _stored(xbm)
        assert stored_emb.tolist() == memory.embeddings
        assert stored_labels.tolist() == memory.labels
        assert xbm.num_stored == len(memory.entries)


def test_label_pairs_reach_only_losses_that_accept_them() -> None:
    seen: list[object] = []

    class Recording(BaseMetricLossFunction):
        def compute_terms(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):  # type: ignore[no-untyped-def]
            seen.append(indices_tuple)
            return {"loss": Terms(embeddings.sum(dim=1) * 0, torch.arange(len(embeddings)), TermKind.ELEMENT)}

    class Accepting(Recording):
        accepts_label_pairs = True

    g = torch.Generator().manual_seed(1)
    emb, labels = _batch(g, 6)
    CrossBatchMemory(Recording(), DIM, 13)(emb, labels)
    CrossBatchMemory(Accepting(), DIM, 13)(emb, labels)
    listed, described = seen
    assert isinstance(listed, tuple) and len(listed) == 4  # listed pairs, own copies left out
    assert isinstance(described, LabelPairs) and described.excluded_ref.tolist() == list(range(6))
    a1, p = listed[0].tolist(), listed[1].tolist()
    assert all(a != q for a, q in zip(a1, p, strict=True)) and len(a1) == sum(
        int((labels == labels[i]).sum()) - 1 for i in range(6)
    )


def test_memory_ring_buffer_positions() -> None:
    xbm = CrossBatchMemory(TripletMarginLoss(), 2, memory_size=5)
    seen = []
    start = 0
    for size in [3, 3, 3, 1, 5]:
        emb = torch.arange(start, start + size, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
        start += size
        xbm(emb, torch.zeros(size, dtype=torch.long))
        seen.append((xbm.queue_idx, xbm.has_been_filled, xbm.embedding_memory[:, 0].tolist()))
    assert seen == [
        (3, False, [0.0, 1.0, 2.0, 0.0, 0.0]),
        (1, True, [5.0, 1.0, 2.0, 3.0, 4.0]),
        (4, True, [5.0, 6.0, 7.0, 8.0, 4.0]),
        (0, True, [5.0, 6.0, 7.0, 8.0, 9.0]),
        (0, True, [10.0, 11.0, 12.0, 13.0, 14.0]),
    ]
    exact = CrossBatchMemory(TripletMarginLoss(), 2, memory_size=4)
    exact(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    assert (exact.queue_idx, exact.has_been_filled, exact.num_stored) == (0, True, 4)


def test_batch_as_large_as_memory_equals_the_plain_loss() -> None:
    g = torch.Generator().manual_seed(3)
    inner = TripletMarginLoss(margin=0.3)
    miner = TripletMarginMiner(margin=0.3)
    for _ in range(3):
        emb, labels = _batch(g, 9)
        # a fresh memory holds exactly this batch, and the batch is never paired with itself
        assert CrossBatchMemory(inner, DIM, 9)(emb, labels).item() == pytest.approx(
            inner(emb, labels).item(), abs=1e-12
        )
        with_miner = CrossBatchMemory(inner, DIM, 9, miner=miner)(emb, labels)
        assert with_miner.item() == pytest.approx(inner(emb, labels, miner(emb, labels)).item(), abs=1e-12)


def test_own_copy_excluded_but_older_copies_kept() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    xbm = CrossBatchMemory(TripletMarginLoss(margin=0.1), 2, 8)
    # first pass: each query's only positive would be its own copy, so there is no triplet
    assert xbm(emb, labels).item() == 0.0
    # second pass: the copies from the first pass are valid positives at distance 0, negatives at sqrt(2)
    x = emb.clone().requires_grad_()
    assert xbm(x, labels).item() == 0.0
    # with a margin larger than sqrt(2), each (query, old copy, negative) triplet costs margin - sqrt(2)
    xbm.loss.margin = 2.0
    x = emb.clone().requires_grad_()
    value = xbm(x, labels)
    assert value.item() == pytest.approx(2.0 - 2**0.5, abs=1e-12)


# --------------------------------------------------------------------------------------------- autograd


def test_gradcheck_queries_against_a_fixed_memory() -> None:
    g = torch.Generator().manual_seed(11)
    xbm = CrossBatchMemory(TripletMarginLoss(margin=0.5, smooth_loss=True), 3, 8)
    warm, warm_labels = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    xbm(warm, warm_labels)
    fixed = torch.randn(2, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0])
    mask = torch.tensor([False, False, False, True, True])
    state = copy.deepcopy(xbm.state_dict())

    def f(query: Tensor) -> Tensor:
        xbm.load_state_dict(state)
        return xbm(torch.cat([query, fixed]), labels, enqueue_mask=mask)

    query = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (query,))


def test_memory_carries_no_gradient_and_enqueued_rows_get_none() -> None:
    g = torch.Generator().manual_seed(5)
    xbm = CrossBatchMemory(TripletMarginLoss(margin=1.0), DIM, 16)
    emb, labels = _batch(g, 8)
    xbm(emb, labels)
    x = torch.randn(6, DIM, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, True, True, False, False, False])
    xbm(x, torch.tensor([0, 1, 2, 0, 1, 2]), enqueue_mask=mask).backward()
    assert not xbm.embedding_memory.requires_grad
    assert x.grad is not None
    assert torch.all(x.grad[:3] == 0)
    assert torch.any(x.grad[3:] != 0)


def test_no_query_or_no_reference_gives_connected_zero() -> None:
    xbm = CrossBatchMemory(TripletMarginLoss(), DIM, 10)
    x = torch.randn(4, DIM, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    # nothing enqueued into an empty memory: nothing to compare with, and the memory stays empty
    value = xbm(x, labels, enqueue_mask=torch.zeros(4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.all(x.grad == 0)
    assert (xbm.queue_idx, xbm.has_been_filled, xbm.num_stored) == (0, False, 0)
    # everything enqueued: no query
    x.grad = None
    value = xbm(x, labels, enqueue_mask=torch.ones(4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.all(x.grad == 0)
    assert xbm.num_stored == 4


# --------------------------------------------------------------------------------------------- indices_tuple


def _slots_of_batch(xbm: CrossBatchMemory, batch_size: int) -> Tensor:
    """The slots the last batch of ``batch_size`` rows was written to."""
    return (xbm.queue_idx - batch_size + torch.arange(batch_size)) % xbm.memory_size


@pytest.mark.parametrize("given_kind", ["triplets", "pairs"])
@pytest.mark.parametrize("with_miner", [False, True])
def test_given_indices_tuple_is_mapped_to_the_batch_slots(given_kind: str, with_miner: bool) -> None:
    g = torch.Generator().manual_seed(13)
    inner = TripletMarginLoss(margin=0.4)
    miner = TripletMarginMiner(margin=0.5) if with_miner else None
    xbm = CrossBatchMemory(inner, DIM, 11, miner=miner)
    batch_miner = TripletMarginMiner(margin=1.0)
    for step in range(4):  # the second batch starts at slot 6, the third wraps around
        emb, labels = _batch(g, 6)
        given = batch_miner(emb, labels)
        if given_kind == "pairs":
            given = convert_to_pairs(given, labels)
        value = xbm(emb, labels, given)

        slots = _slots_of_batch(xbm, 6)
        ref_emb, ref_labels = xbm.embedding_memory[: xbm.num_stored], xbm.label_memory[: xbm.num_stored]
        if with_miner:
            a, p, n = miner(emb, labels, ref_emb, ref_labels)
            keep = p != slots[a]
            own: Pairs | Triplets = Triplets(a[keep], p[keep], n[keep])
            if given_kind == "pairs":
                ga, gp, gn = _pairs_to_triplets_list(given)
                extra: Pairs | Triplets = Triplets(ga, slots[gp], slots[gn])
            else:
                extra = Triplets(given[0], slots[given[1]], slots[given[2]])
        else:
            pos = (labels.unsqueeze(1) == ref_labels.unsqueeze(0)).clone()
            neg = ~pos
            pos[torch.arange(6), slots] = False
            a1, p = pos.nonzero(as_tuple=True)
            a2, n = neg.nonzero(as_tuple=True)
            own = Pairs(a1, p, a2, n)
            ga1, gp, ga2, gn = convert_to_pairs(given, labels)
            extra = Pairs(ga1, slots[gp], ga2, slots[gn])
        combined = tuple(torch.cat([x, y]) for x, y in zip(own, extra, strict=True))
        expected = inner(emb, labels, combined, ref_emb, ref_labels)
        assert value.item() == pytest.approx(expected.item(), abs=1e-12), f"step {step}"


def _pairs_to_triplets_list(pairs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Every (a, p, n) from a positive pair and a negative pair sharing the anchor, by brute force."""
    a1, p, a2, n = (t.tolist() for t in pairs)
    out = [(a, pp, nn) for a, pp in zip(a1, p, strict=True) for b, nn in zip(a2, n, strict=True) if a == b]
    if not out:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty, empty
    return tuple(torch.tensor(col) for col in zip(*out, strict=True))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- state


def test_reset_queue() -> None:
    g = torch.Generator().manual_seed(17)
    xbm = CrossBatchMemory(TripletMarginLoss(margin=0.3), DIM, 7)
    for _ in range(3):
        xbm(*_batch(g, 4))
    assert xbm.has_been_filled
    xbm.reset_queue()
    assert (xbm.queue_idx, xbm.has_been_filled, xbm.num_stored) == (0, False, 0)
    assert torch.all(xbm.embedding_memory == 0) and torch.all(xbm.label_memory == 0)
    assert xbm.embedding_memory.dtype == torch.float64  # keeps the dtype it followed
    emb, labels = _batch(g, 5)
    fresh = CrossBatchMemory(TripletMarginLoss(margin=0.3), DIM, 7)
    assert xbm(emb, labels).item() == fresh(emb, labels).item()


def test_state_dict_round_trip_resumes_the_queue() -> None:
    g = torch.Generator().manual_seed(19)
    a = CrossBatchMemory(TripletMarginLoss(margin=0.3), DIM, 9)
    for _ in range(3):
        a(*_batch(g, 4))
    state = a.state_dict()
    assert {"embedding_memory", "label_memory"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    b = CrossBatchMemory(TripletMarginLoss(margin=0.3), DIM, 9)
    b.load_state_dict(torch.load(buffer))
    assert (b.queue_idx, b.has_been_filled) == (a.queue_idx, a.has_been_filled) == (3, True)
    for _ in range(2):
        emb, labels = _batch(g, 4)
        assert a(emb, labels).item() == b(emb, labels).item()
        assert torch.equal(a.embedding_memory, b.embedding_memory) and torch.equal(a.label_memory, b.label_memory)
        assert a.queue_idx == b.queue_idx


def test_buffers_follow_to_and_the_incoming_dtype() -> None:
    xbm = CrossBatchMemory(TripletMarginLoss(), DIM, 6)
    assert xbm.embedding_memory.dtype == torch.float32 and xbm.label_memory.dtype == torch.long
    xbm.to(torch.float64)
    assert xbm.embedding_memory.dtype == torch.float64 and xbm.label_memory.dtype == torch.long
    xbm(torch.randn(3, DIM), torch.tensor([0, 1, 0], dtype=torch.int32))
    assert xbm.embedding_memory.dtype == torch.float32 and xbm.label_memory.dtype == torch.int32
    assert [name for name, _ in xbm.named_buffers()] == ["embedding_memory", "label_memory"]


class _FailingMiner(BaseMiner):
    def mine(self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor) -> tuple[Tensor, ...]:
        raise RuntimeError("miner failed")


class _FailingLoss(BaseMetricLossFunction):
    def compute_terms(self, *args: Any) -> dict[str, Terms]:
        raise RuntimeError("loss failed")


@pytest.mark.parametrize("failing", ["miner", "loss"])
def test_a_failing_miner_or_loss_leaves_the_memory_unchanged(failing: str) -> None:
    g = torch.Generator().manual_seed(23)
    xbm = CrossBatchMemory(TripletMarginLoss(), DIM, 7)
    for _ in range(2):
        xbm(*_batch(g, 5))
    if failing == "miner":
        xbm.miner = _FailingMiner()
    else:
        xbm.loss = _FailingLoss()
    before = copy.deepcopy(xbm.state_dict())
    with pytest.raises(RuntimeError, match=f"{failing} failed"):
        xbm(*_batch(g, 5))
    after = xbm.state_dict()
    assert torch.equal(before["embedding_memory"], after["embedding_memory"])
    assert torch.equal(before["label_memory"], after["label_memory"])
    assert (xbm.queue_idx, xbm.has_been_filled) == (3, True)


# --------------------------------------------------------------------------------------------- errors


class _NoReferenceLoss(BaseMetricLossFunction):
    supports_ref_emb = False

    def compute_terms(self, embeddings: Tensor, *args: Any) -> dict[str, Terms]:
        return {"loss": Terms(embeddings.sum(1), torch.arange(embeddings.shape[0]), TermKind.ELEMENT)}


def test_constructor_errors() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "CrossBatchMemory: `loss` must be a dmlkit metric loss (e.g. TripletMarginLoss()), got Linear."
        ),
    ):
        CrossBatchMemory(torch.nn.Linear(2, 2), 2)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CrossBatchMemory: `loss` must be a loss that accepts a reference set (`supports_ref_emb` is True), "
            "got _NoReferenceLoss."
        ),
    ):
        CrossBatchMemory(_NoReferenceLoss(), 2)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "CrossBatchMemory: `miner` must be None or a dmlkit miner (e.g. TripletMarginMiner()), got str."
        ),
    ):
        CrossBatchMemory(TripletMarginLoss(), 2, miner="semihard")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=re.escape("CrossBatchMemory: `embedding_size` must be an integer >= 1, got 0.")
    ):
        CrossBatchMemory(TripletMarginLoss(), 0)
    with pytest.raises(TypeError, match=re.escape("CrossBatchMemory: `embedding_size` must be an integer, got 2.5.")):
        CrossBatchMemory(TripletMarginLoss(), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("CrossBatchMemory: `memory_size` must be an integer >= 1, got -3.")):
        CrossBatchMemory(TripletMarginLoss(), 2, memory_size=-3)
    with pytest.raises(TypeError, match=re.escape("CrossBatchMemory: `memory_size` must be an integer, got True.")):
        CrossBatchMemory(TripletMarginLoss(), 2, memory_size=True)


def test_forward_errors_leave_the_memory_untouched() -> None:
    xbm = CrossBatchMemory(TripletMarginLoss(), 3, memory_size=4)
    labels = torch.tensor([0, 1, 0])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CrossBatchMemory: `embeddings` must be of embedding size 3 (the `embedding_size` given to the "
            "constructor), got embedding size 5."
        ),
    ):
        xbm(torch.randn(3, 5), labels)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CrossBatchMemory: `embeddings` must be at most `memory_size` (4) rows, got 5 rows to enqueue."
        ),
    ):
        xbm(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CrossBatchMemory: `enqueue_mask` must be at most `memory_size` (4) true values, got 5 rows to enqueue."
        ),
    ):
        xbm(torch.randn(6, 3), torch.zeros(6, dtype=torch.long), enqueue_mask=torch.arange(6) < 5)
    with pytest.raises(
        ValueError,
        match=re.escape("CrossBatchMemory: `indices_tuple` must be None when `enqueue_mask` is given, got a tuple."),
    ):
        triplets = (torch.tensor([0]), torch.tensor([2]), torch.tensor([1]))
        xbm(torch.randn(3, 3), labels, triplets, enqueue_mask=torch.tensor([True, False, False]))
    with pytest.raises(
        TypeError,
        match=re.escape(
            "CrossBatchMemory: `enqueue_mask` must be None or a boolean tensor, got tensor of dtype torch.int64."
        ),
    ):
        xbm(torch.randn(3, 3), labels, enqueue_mask=torch.tensor([1, 0, 0]))
    with pytest.raises(
        TypeError, match=re.escape("CrossBatchMemory: `enqueue_mask` must be None or a boolean tensor, got list.")
    ):
        xbm(torch.randn(3, 3), labels, enqueue_mask=[True, False, False])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CrossBatchMemory: `enqueue_mask` must be of shape (3,), one value per embedding, got shape (2,)."
        ),
    ):
        xbm(torch.randn(3, 3), labels, enqueue_mask=torch.tensor([True, False]))
    with pytest.raises(
        ValueError,
        match=re.escape("CrossBatchMemory: `labels` must be of the same length as `embeddings` (3), got length 2."),
    ):
        xbm(torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=re.escape("CrossBatchMemory: `labels` must be a torch.Tensor, got NoneType.")):
        xbm(torch.randn(3, 3), None)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=re.escape("CrossBatchMemory: `indices_tuple[1]` must be indices in [0, 3), got 'values from 5 to 5'."),
    ):
        xbm(torch.randn(3, 3), labels, (torch.tensor([0]), torch.tensor([5]), torch.tensor([1])))
    assert (xbm.queue_idx, xbm.has_been_filled) == (0, False)
    assert torch.all(xbm.embedding_memory == 0)


def test_bad_state_dict() -> None:
    xbm = CrossBatchMemory(TripletMarginLoss(), 3, memory_size=4)
    state = xbm.state_dict()
    state["_extra_state"] = {"queue_idx": 4, "has_been_filled": True}
    with pytest.raises(
        ValueError,
        match=re.escape("CrossBatchMemory: `state_dict` must be saved by a CrossBatchMemory of memory_size 4"),
    ):
        xbm.load_state_dict(state)


# --------------------------------------------------------------------------------------------- PML parity


def _pml_pair(kind: str, miner: bool) -> tuple[CrossBatchMemory, Any]:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    if kind == "triplet":
        ours_loss, their_loss = TripletMarginLoss(margin=0.2), pml_losses.TripletMarginLoss(margin=0.2)
    elif kind == "triplet_mean":
        pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
        ours_loss = TripletMarginLoss(margin=0.2, reducer=MeanReducer())
        their_loss = pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_reducers.MeanReducer())
    elif kind == "contrastive":
        ours_loss = _contrastive_cls()(pos_margin=0.05, neg_margin=0.9)
        their_loss = pml_losses.ContrastiveLoss(pos_margin=0.05, neg_margin=0.9)
    elif kind == "ntxent":
        ours_loss, their_loss = _ntxent_cls()(temperature=0.2), pml_losses.NTXentLoss(temperature=0.2)
    elif kind == "ntxent_tiled":  # the memory's pairs formed tile by tile from a LabelPairs description
        ours_loss = _ntxent_cls()(temperature=0.2, chunk_size=3)
        their_loss = pml_losses.NTXentLoss(temperature=0.2)
    else:
        raise AssertionError(kind)
    # the mean variant mines every triplet, so that self-pairs, if any, would show in the value
    margin, kind_of_triplets = (2.5, "all") if kind == "triplet_mean" else (0.3, "semihard")
    our_miner = TripletMarginMiner(margin=margin, type_of_triplets=kind_of_triplets) if miner else None
    their_miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind_of_triplets) if miner else None
    ours = CrossBatchMemory(ours_loss, DIM, 13, miner=our_miner)
    theirs = pml_losses.CrossBatchMemory(their_loss, DIM, 13, miner=their_miner)
    return ours, theirs


@pytest.mark.parametrize("kind", ["triplet", "triplet_mean", "contrastive", "ntxent", "ntxent_tiled"])
@pytest.mark.parametrize("miner", [False, True], ids=["all_pairs", "miner"])
@pytest.mark.parametrize("masked", [False, True], ids=["enqueue_all", "enqueue_mask"])
def test_pml_parity_over_a_sequence_of_batches(kind: str, miner: bool, masked: bool) -> None:
    ours, theirs = _pml_pair(kind, miner)
    g = torch.Generator().manual_seed(29)
    for step, n in enumerate(PML_SIZES):
        emb, labels = _batch(g, n + 2 if masked else n)
        mask = None
        if masked:
            # PML marks an empty memory as full when nothing is enqueued, so every mask enqueues something
            mask = torch.rand(emb.shape[0], generator=g) < 0.5
            mask[0], mask[-1] = True, False
        x_ours = emb.clone().requires_grad_()
        x_theirs = emb.clone().requires_grad_()
        value_ours = ours(x_ours, labels, enqueue_mask=mask)
        value_theirs = theirs(x_theirs, labels, enqueue_mask=mask)
        assert value_ours.item() == pytest.approx(value_theirs.item(), abs=1e-6), f"step {step}"
        value_ours.backward()
        if value_theirs.requires_grad:
            value_theirs.backward()
            torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-6, rtol=0, msg=f"step {step}")
        else:
            assert torch.all(x_ours.grad == 0)
        assert (ours.queue_idx, ours.has_been_filled) == (theirs.queue_idx, theirs.has_been_filled)
        torch.testing.assert_close(ours.embedding_memory, theirs.embedding_memory, atol=0, rtol=0)
        assert torch.equal(ours.label_memory, theirs.label_memory)


def test_pml_parity_with_indices_tuple_on_the_first_batch() -> None:
    ours, theirs = _pml_pair("triplet", miner=False)
    g = torch.Generator().manual_seed(31)
    emb, labels = _batch(g, 7)
    given = TripletMarginMiner(margin=1.0)(emb, labels)
    # on the first batch the queue starts at slot 0, so batch indices and memory slots coincide
    assert ours(emb, labels, given).item() == pytest.approx(theirs(emb, labels, tuple(given)).item(), abs=1e-6)


def test_pml_difference_indices_tuple_after_the_queue_moved() -> None:
    """PML 2.9.0 uses the batch indices of a given indices_tuple as memory slots; they point at other rows
    once the queue no longer starts at slot 0. dmlkit maps them to the slots the batch was written to."""
    ours, theirs = _pml_pair("triplet", miner=False)
    g = torch.Generator().manual_seed(37)
    first = _batch(g, 5)
    ours(*first)
    theirs(*first)
    emb, labels = _batch(g, 5)
    given = TripletMarginMiner(margin=1.0)(emb, labels)
    assert given.anchors.numel() > 0
    value_ours = ours(emb, labels, given)
    value_theirs = theirs(emb, labels, tuple(given))
    # PML's value: the given pairs are read as memory slots 0..4, i.e. the first batch
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    mem, mem_labels = theirs.embedding_memory[:10], theirs.label_memory[:10]
    pos = labels.unsqueeze(1) == mem_labels.unsqueeze(0)
    pos[torch.arange(5), torch.arange(5, 10)] = False
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = (labels.unsqueeze(1) != mem_labels.unsqueeze(0)).nonzero(as_tuple=True)
    ga1, gp, ga2, gn = convert_to_pairs(given, labels)
    raw = (torch.cat([a1, ga1]), torch.cat([p, gp]), torch.cat([a2, ga2]), torch.cat([n, gn]))
    expected_pml = pml_losses.TripletMarginLoss(margin=0.2)(emb, labels, raw, mem, mem_labels)
    assert value_theirs.item() == pytest.approx(expected_pml.item(), abs=1e-12)
    assert value_ours.item() != pytest.approx(value_theirs.item(), abs=1e-6)


def test_pml_difference_batch_of_one_keeps_its_self_pair() -> None:
    """PML 2.9.0 does not recognise a one-row batch's own copy (its start and end slot coincide), so the row
    is paired with itself at distance 0; dmlkit excludes it like for any other batch size. A mean over all
    triplets (not only the non-zero ones) shows the extra, zero-loss triplet."""
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")
    ours = CrossBatchMemory(TripletMarginLoss(margin=0.2, reducer=MeanReducer()), DIM, 13)
    theirs = pml_losses.CrossBatchMemory(
        pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_reducers.MeanReducer()), DIM, 13
    )
    warm = (torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64), torch.tensor([0, 1]))
    ours(*warm)
    theirs(*warm)
    emb, labels = torch.tensor([[0.0, 0, 1.0, 0]], dtype=torch.float64), torch.tensor([0])
    memory = ref.NaiveMemory(13)
    ref.enqueue_batch(memory, *warm)
    query, query_labels, uids = ref.enqueue_batch(memory, emb, labels)
    triplets = ref.memory_triplets(query_labels, uids, memory)
    with_self = ref.memory_triplets(query_labels, [None], memory)
    assert len(with_self) == len(triplets) + 1
    mem = memory.embeddings
    values = tref.triplet_values(query, triplets, 0.2, ref_emb=mem)
    values_with_self = tref.triplet_values(query, with_self, 0.2, ref_emb=mem)
    assert ours(emb, labels).item() == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert theirs(emb, labels).item() == pytest.approx(sum(values_with_self) / len(values_with_self), abs=1e-12)
    assert sum(values) / len(values) == pytest.approx(0.2, abs=1e-12)
    assert sum(values_with_self) / len(values_with_self) == pytest.approx(0.1, abs=1e-12)


def test_pml_difference_empty_enqueue_on_an_empty_memory() -> None:
    """PML 2.9.0 marks the memory full when a call enqueues nothing, then compares against zero rows."""
    ours, theirs = _pml_pair("triplet", miner=False)
    emb, labels = torch.randn(4, DIM, dtype=torch.float64), torch.tensor([0, 0, 1, 1])
    mask = torch.zeros(4, dtype=torch.bool)
    assert ours(emb, labels, enqueue_mask=mask).item() == 0.0
    theirs(emb, labels, enqueue_mask=mask)
    assert (ours.has_been_filled, ours.num_stored) == (False, 0)
    assert theirs.has_been_filled
