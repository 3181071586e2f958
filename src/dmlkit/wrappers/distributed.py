"""Losses and miners over every process of a ``torch.distributed`` job (DDP, ``torchrun``).

With data-parallel training each process embeds its own shard of the global batch, so an unwrapped metric loss
only compares samples of the same process. :class:`DistributedLossWrapper` and :class:`DistributedMinerWrapper`
(pytorch-metric-learning's names and arguments) gather the embeddings and labels of every process, so the loss
sees the global batch: on every process it returns the loss of the global batch computed in one process.

Gradients: the gather is autograd-correct (its backward sums the gradients of every process and hands each
process the rows it contributed), so on every process the gradient with respect to its own embeddings is
``world_size`` times the single-process gradient; ``DistributedDataParallel`` (or any averaging of the
parameter gradients over processes) divides that back, and the model receives the single-process gradient.

The gradient convention, for readers checking the arithmetic: each process ``r`` computes an objective
``O_r``; the backward of the gather hands process ``r`` the gradient of ``O_0 + ... + O_{W-1}`` with respect to
its rows, and ``O_0 + ... + O_{W-1} = W * L`` with ``L`` the single-process loss. Averaging over the ``W``
processes then gives the gradient of ``L``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validation import Described, check_embeddings, check_labels, message
from ..indices import check_indices_tuple, convert_to_pairs, list_label_pairs, pairs_to_triplets
from ..losses.base import BaseMetricLossFunction
from ..miners.base import BaseMiner
from ..miners.embeddings_already_packaged_as_triplets import EmbeddingsAlreadyPackagedAsTriplets
from ..reducers import AvgNonZeroReducer, DivisorReducer, MeanReducer, SumReducer, ThresholdReducer
from ..reducers.base import BaseReducer, zero_loss
from ..types import LabelPairs, Pairs, TermKind, Terms, Triplets
from .cross_batch_memory import CrossBatchMemory

__all__ = [
    "DistributedLossWrapper",
    "DistributedMinerWrapper",
    "is_distributed",
    "rank_and_world_size",
    "all_gather",
    "broadcast_from_rank_0",
]

_LOSS = "DistributedLossWrapper"
_MINER = "DistributedMinerWrapper"
_KIND_CODES = {kind: code for code, kind in enumerate(TermKind)}
_KINDS = list(TermKind)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (even one of a single process).

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` outside a distributed job.

    Example:
        >>> rank_and_world_size()
        (0, 1)
    """
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_gather(tensor: Tensor) -> Tensor:
    """The rows of ``tensor`` from every process, concatenated along dimension 0 in rank order.

    Processes may contribute different numbers of rows (the other dimensions must agree). The gather is
    autograd-correct: the gradient each process receives for its ``tensor`` is the sum, over every process, of
    the gradient with respect to its rows of the concatenation. Every process must call it, in the same order
    as the other collectives. Outside a distributed job (or with one process) it returns ``tensor`` itself.

    Example:
        >>> all_gather(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    rank, world = rank_and_world_size()
    if world == 1:
        return tensor
    sizes = _gather_sizes(tensor.shape[0], tensor.device, world)
    return _gather_rows(tensor, sizes, rank, world)


def _gather_sizes(rows: int, device: torch.device, world: int) -> list[int]:
    mine = torch.tensor([rows], dtype=torch.long, device=device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return [int(part) for part in parts]


def _gather_rows(tensor: Tensor, sizes: Sequence[int], rank: int, world: int) -> Tensor:
    """Gather knowing every process's row count (``sizes``): pad to the largest, gather, drop the padding."""
    most = max(sizes)
    if most == 0:
        return tensor
    is_bool = tensor.dtype == torch.bool
    x = tensor.to(torch.uint8) if is_bool else tensor
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    if x.requires_grad and torch.is_grad_enabled():
        gathered = _AllGather.apply(x, rank, world)
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        gathered = torch.cat(parts)
    if any(size != most for size in sizes):
        keep = torch.cat([torch.arange(size, device=x.device) + i * most for i, size in enumerate(sizes)])
        gathered = gathered[keep]
    return gathered.bool() if is_bool else gathered


class _AllGather(torch.autograd.Function):
    """Gather equal-sized rows; backward: sum the gradients of every process, keep this process's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rank: int, world: int) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = ctx.rank * ctx.rows
        return total[start : start + ctx.rows], None, None


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes; backward: the sum over processes of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class _AverageGradients(torch.autograd.Function):
    """Identity on parameters; backward: the gradient averaged over processes (one all-reduce per tensor)."""

    @staticmethod
    def forward(ctx: Any, world: int, *tensors: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.world = world
        return tuple(t.clone() for t in tensors)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        out = []
        for grad in grads:
            total = grad.contiguous().clone()
            dist.all_reduce(total)
            out.append(total / ctx.world)
        return (None, *out)


def broadcast_from_rank_0(tensors: Iterable[Tensor], device: torch.device | None = None) -> None:
    """Overwrite ``tensors`` (in place, e.g. parameters and buffers) with rank 0's values on every process.

    With NCCL, tensors off the GPU travel through ``device`` (the GPU the process computes on). Every process
    must pass the same tensors in the same order.

    Example:
        >>> weights = torch.ones(2)
        >>> broadcast_from_rank_0([weights])  # one process: nothing to copy
        >>> weights
        tensor([1., 1.])
    """
    if rank_and_world_size()[1] == 1:
        return
    staged = dist.get_backend() == "nccl"
    with torch.no_grad():
        for tensor in tensors:
            if staged and tensor.device.type != "cuda" and device is not None:
                copy = tensor.data.to(device)
                dist.broadcast(copy, src=0)
                tensor.data.copy_(copy)
            else:
                dist.broadcast(tensor.data, src=0)


def _call_with_averaged_gradients(loss: nn.Module, world: int, *args: Any) -> Any:
    """``loss(*args)`` with the gradients of its trainable parameters averaged over processes in backward."""
    named = [(name, p) for name, p in loss.named_parameters() if p.requires_grad]
    if not named or not torch.is_grad_enabled():
        return loss(*args)
    synced = _AverageGradients.apply(world, *(p for _, p in named))
    return torch.func.functional_call(loss, {name: t for (name, _), t in zip(named, synced, strict=True)}, args)


# Reducers whose result needs only a sum and a count (or divisor) per group: exact types, as a subclass may
# reduce differently.
_BY_SUMS = (MeanReducer, SumReducer, ThresholdReducer, AvgNonZeroReducer, DivisorReducer)


class _GlobalReducer(BaseReducer):
    """Reduces the terms of every process as one group: the loss of the union of the processes' queries.

    Each process passes the terms of its own queries; the result, the same on every process, is what the
    wrapped reducer gives for the terms of all queries (anchors renumbered into the concatenated query batch).
    Mean, sum, threshold, non-zero-mean and divisor reducers exchange one sum and one count per group; other
    reducers receive the gathered terms. Already-reduced values (a loss-level penalty) are averaged.
    """

    def __init__(self, inner: BaseReducer, rank: int, world: int) -> None:
        super().__init__()
        self.inner = inner
        self.rank = rank
        self.world = world

    def forward(  # type: ignore[override]
        self, terms: Terms | Mapping[str, Terms], embeddings: Tensor, labels: Tensor | None = None
    ) -> Any:
        single = isinstance(terms, Terms)
        groups: dict[str, Terms] = {"loss": terms} if isinstance(terms, Terms) else dict(terms)
        table = self._descriptors(groups, embeddings.device)
        if type(self.inner) in _BY_SUMS:
            return self._reduce_by_sums(groups, table, embeddings)
        gathered = self._gather_groups(groups, table, embeddings)
        all_embeddings = all_gather(embeddings)
        all_labels = None if labels is None else all_gather(labels)
        return self.inner(gathered["loss"] if single else gathered, all_embeddings, all_labels)

    def _descriptors(self, groups: dict[str, Terms], device: torch.device) -> Tensor:
        """``(world, groups, 4)``: kind code, number of values, divisor given, values counted by the reducer."""
        counts = _gather_sizes(len(groups), device, self.world)
        if len(set(counts)) != 1:
            raise RuntimeError(
                f"{_LOSS}: the processes' losses returned different numbers of term groups {counts}; "
                "use efficient=False for this loss."
            )
        rows = [
            [_KIND_CODES[g.kind], g.values.numel(), int(g.divisor is not None), self._counted(g)]
            for g in groups.values()
        ]
        mine = torch.tensor(rows, dtype=torch.long, device=device).reshape(len(groups), 4)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        table = torch.stack(parts).cpu()
        for position, name in enumerate(groups):
            kinds = table[:, position, 0]
            non_empty = table[:, position, 1] > 0
            reduced = kinds == _KIND_CODES[TermKind.ALREADY_REDUCED]
            if bool(reduced.any()) and not bool(reduced.all()):
                raise RuntimeError(
                    f"{_LOSS}: the loss reduced its {name!r} terms on some processes only; "
                    "use efficient=False for this loss."
                )
            if len(set(kinds[non_empty].tolist())) > 1:
                raise RuntimeError(f"{_LOSS}: the processes' {name!r} terms are of different kinds.")
        return table

    def _counted(self, group: Terms) -> int:
        """How many of a group's values the wrapped reducer divides by (threshold reducers keep some only)."""
        if group.kind is TermKind.ALREADY_REDUCED:
            return 0
        if isinstance(self.inner, ThresholdReducer) and type(self.inner) in _BY_SUMS:
            return int(self._kept(group.values).sum())
        return group.values.numel()

    def _kept(self, values: Tensor) -> Tensor:
        assert isinstance(self.inner, ThresholdReducer)
        keep = torch.ones_like(values, dtype=torch.bool)
        if self.inner.low is not None:
            keep &= values > self.inner.low
        if self.inner.high is not None:
            keep &= values < self.inner.high
        return keep

    def _divisor_totals(self, groups: dict[str, Terms], table: Tensor, device: torch.device) -> list[float]:
        """The sum over processes of each group's divisor (None, on a process without values, counts as 0)."""
        if not bool(table[:, :, 2].any()):
            return [0.0] * len(groups)
        mine = torch.tensor(
            [float(g.divisor) if g.divisor is not None else 0.0 for g in groups.values()],
            dtype=torch.float64,
            device=device,
        )
        dist.all_reduce(mine)
        return mine.tolist()

    def _reduce_by_sums(self, groups: dict[str, Terms], table: Tensor, embeddings: Tensor) -> Tensor:
        divisors = self._divisor_totals(groups, table, embeddings.device)
        sums = []
        for group in groups.values():
            if group.kind is TermKind.ALREADY_REDUCED:
                sums.append(group.values.reshape(()) / self.world)
            elif isinstance(self.inner, ThresholdReducer):
                keep = self._kept(group.values)
                sums.append(torch.where(keep, group.values, group.values.new_zeros(())).sum())
            else:
                sums.append(group.values.sum())
        if not sums:
            return zero_loss(embeddings)
        dtype = embeddings.dtype
        for value in sums:
            dtype = torch.promote_types(dtype, value.dtype)
        totals = _AllReduceSum.apply(torch.stack([value.to(dtype) for value in sums]))
        out: Tensor | None = None
        for position, group in enumerate(groups.values()):
            value = self._group_value(position, group, table, divisors, totals, embeddings)
            out = value if out is None else out + value
        return out if out is not None else zero_loss(embeddings)

    def _group_value(
        self, position: int, group: Terms, table: Tensor, divisors: list[float], totals: Tensor, embeddings: Tensor
    ) -> Tensor:
        total = totals[position]
        if group.kind is TermKind.ALREADY_REDUCED:
            return total
        num_values = int(table[:, position, 1].sum())
        if num_values == 0:
            return zero_loss(embeddings)
        if isinstance(self.inner, SumReducer):
            return total
        if isinstance(self.inner, DivisorReducer):
            given = table[:, position, 2].bool() | (table[:, position, 1] == 0)
            if not bool(given.all()):
                raise ValueError(message("DivisorReducer", "divisor", "set by the loss for this group of terms", None))
            return zero_loss(embeddings) if divisors[position] == 0 else total / divisors[position]
        count = int(table[:, position, 3].sum())
        return zero_loss(embeddings) if count == 0 else total / count

    def _gather_groups(self, groups: dict[str, Terms], table: Tensor, embeddings: Tensor) -> dict[str, Terms]:
        query_counts = _gather_sizes(embeddings.shape[0], embeddings.device, self.world)
        offset = sum(query_counts[: self.rank])
        divisors = self._divisor_totals(groups, table, embeddings.device)
        out: dict[str, Terms] = {}
        for position, (name, group) in enumerate(groups.items()):
            if group.kind is TermKind.ALREADY_REDUCED:
                out[name] = Terms.reduced(_AllReduceSum.apply(group.values.reshape(()) / self.world))
                continue
            sizes = table[:, position, 1].tolist()
            non_empty = table[:, position, 1] > 0
            kind = _KINDS[int(table[:, position, 0][non_empty][0])] if bool(non_empty.any()) else group.kind
            assert group.anchors is not None
            values = _gather_rows(group.values, sizes, self.rank, self.world)
            anchors = _gather_rows(group.anchors + offset, sizes, self.rank, self.world)
            divisor = divisors[position] if bool(table[:, position, 2].any()) else None
            out[name] = Terms(values, anchors, kind, divisor)
        return out


@contextmanager
def _reduced_over_processes(loss: BaseMetricLossFunction, rank: int, world: int) -> Iterator[None]:
    """Within the block, ``loss`` reduces its terms together with the other processes' (see _GlobalReducer)."""
    original = loss.reducer
    loss.reducer = _GlobalReducer(original, rank, world)
    try:
        yield
    finally:
        loss.reducer = original


def _pairs_without_self(labels: Tensor, ref_labels: Tensor, offset: int) -> Pairs:
    """Every (query, reference) pair of a local query batch against the gathered batch, minus each query's own
    row (``offset + i``): what the loss forms when the batch is its own reference set."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    rows = torch.arange(labels.shape[0], device=labels.device)
    same[rows, rows + offset] = False
    a1, p = torch.nonzero(same, as_tuple=True)
    a2, n = torch.nonzero(labels.unsqueeze(1) != ref_labels.unsqueeze(0), as_tuple=True)
    return Pairs(a1, p, a2, n)


def _without_self(tuples: Pairs | Triplets, offset: int) -> Pairs | Triplets:
    """Drop the pairs and triplets that pair a query with its own row (``offset + query``) of the gathered batch."""
    if isinstance(tuples, Triplets):
        keep = (tuples.positives != tuples.anchors + offset) & (tuples.negatives != tuples.anchors + offset)
        return Triplets(*(t[keep] for t in tuples))
    a1, p, a2, n = tuples
    pos, neg = p != a1 + offset, n != a2 + offset
    return Pairs(a1[pos], p[pos], a2[neg], n[neg])


class DistributedLossWrapper(nn.Module):
    """A metric loss over the global batch of a ``torch.distributed`` job: the loss of the concatenation of every
    process's batch (the data parallelism of Li et al., 2020, "PyTorch Distributed", arXiv:2006.15704).

    Every process gets the same value: the loss that one process computes on the concatenated batch (rank
    order). The gradient with respect to each process's own embeddings is ``world_size`` times the
    single-process gradient, so that ``DistributedDataParallel``'s averaging of the parameter gradients
    yields the single-process gradient. The gradients of the loss's own parameters (proxies) are the
    single-process ones on every process (with ``efficient=True`` each process computes a part, and the parts
    are combined over processes in backward); those parameters are copied from rank 0 at the first call.

    * ``efficient=False``: every process computes the loss of the whole gathered batch (every pair).
    * ``efficient=True``: each process computes the terms of its own embeddings (queries) against the
      gathered batch (references), and the terms of every process are reduced together: the same value for
      losses whose terms are one per query, pair or triplet (not for losses built on whole-batch statistics:
      histograms, ranks over the batch, batch covariance, per-proxy aggregates). ``indices_tuple`` then holds
      local anchors and references into the gathered batch (as :class:`DistributedMinerWrapper` with
      ``efficient=True`` returns them). A loss without reference-set support computes its local terms.
    * A :class:`~dmlkit.wrappers.CrossBatchMemory` is supported in both modes: every process enqueues the
      gathered batch (the memories stay identical); with ``efficient=True`` only the local rows are queries.

    Outside a distributed job the wrapped loss is called as is, with a warning.

    Differences from pytorch-metric-learning 2.9.0:

    * the value is the single-process loss, not ``world_size`` times it, and the scaling lives in the
      gather's backward, so the gradients of loss parameters are not ``world_size`` times too large;
    * the gathered batch is in rank order on every process (PML puts the local rows first), so
      ``indices_tuple`` from a non-efficient miner means the same rows on every process;
    * ``efficient=True`` gives the single-process value and gradients (PML's references from other
      processes carry no gradient and its mean is per process), and works with ``CrossBatchMemory``;
    * outside a distributed job ``enqueue_mask`` reaches the ``CrossBatchMemory``.

    Args:
        loss: a dmlkit metric loss, or a :class:`~dmlkit.wrappers.CrossBatchMemory`.
        efficient: compute only the local queries' terms (see above).

    Example:
        >>> from dmlkit.losses import ContrastiveLoss
        >>> wrapped = DistributedLossWrapper(ContrastiveLoss())
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     wrapped(torch.randn(8, 4), torch.arange(4).repeat(2)).ndim
        0
    """

    def __init__(self, loss: BaseMetricLossFunction | CrossBatchMemory, efficient: bool = False) -> None:
        super().__init__()
        if not isinstance(loss, (BaseMetricLossFunction, CrossBatchMemory)):
            rule = "a dmlkit metric loss (e.g. TripletMarginLoss()) or a CrossBatchMemory"
            raise TypeError(message(_LOSS, "loss", rule, Described(type(loss).__name__)))
        if not isinstance(efficient, bool):
            raise TypeError(message(_LOSS, "efficient", "a bool", efficient))
        self.loss = loss
        self.efficient = efficient
        self._synced = False

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Sequence[Tensor] | None = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
        enqueue_mask: Tensor | None = None,
    ) -> Any:
        """The wrapped loss of the global batch; ``enqueue_mask`` only for a ``CrossBatchMemory``."""
        memory = isinstance(self.loss, CrossBatchMemory)
        if memory and (ref_emb is not None or ref_labels is not None):
            raise ValueError(
                message(
                    _LOSS,
                    "ref_emb",
                    "None with a CrossBatchMemory (the memory is the reference)",
                    Described("a tensor"),
                )
            )
        if not memory and enqueue_mask is not None:
            raise ValueError(
                message(_LOSS, "enqueue_mask", "None unless the loss is a CrossBatchMemory", Described("a tensor"))
            )
        rank, world = rank_and_world_size()
        if world == 1:
            if not is_distributed():
                warnings.warn(f"{_LOSS}: no torch.distributed process group; the loss is computed as is.", stacklevel=2)
            if isinstance(self.loss, CrossBatchMemory):
                assert labels is not None
                return self.loss(embeddings, labels, indices_tuple, enqueue_mask)
            return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if not self._synced:
            broadcast_from_rank_0([*self.loss.parameters(), *self.loss.buffers()], embeddings.device)
            self._synced = True
        if isinstance(self.loss, CrossBatchMemory):
            if labels is None:
                raise ValueError(message("CrossBatchMemory", "labels", "given", None))
            if self.efficient:
                return self._memory_efficient(embeddings, labels, indices_tuple, enqueue_mask, rank, world)
            mask = None if enqueue_mask is None else all_gather(enqueue_mask.to(embeddings.device))
            return self.loss(all_gather(embeddings), all_gather(labels.to(embeddings.device)), indices_tuple, mask)
        if self.efficient:
            return self._efficient(embeddings, labels, indices_tuple, ref_emb, ref_labels, rank, world)
        return self.loss(
            all_gather(embeddings),
            None if labels is None else all_gather(labels.to(embeddings.device)),
            indices_tuple,
            None if ref_emb is None else all_gather(ref_emb),
            None if ref_labels is None else all_gather(ref_labels.to(embeddings.device)),
        )

    def _efficient(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices_tuple: Sequence[Tensor] | None,
        ref_emb: Tensor | None,
        ref_labels: Tensor | None,
        rank: int,
        world: int,
    ) -> Any:
        loss = self.loss
        assert isinstance(loss, BaseMetricLossFunction)
        device = embeddings.device
        labels = None if labels is None else labels.to(device)
        gathered_ref: Tensor | None = None
        gathered_ref_labels: Tensor | None = None
        if ref_emb is not None:
            if labels is None and indices_tuple is None:
                rule = "given with `ref_emb` when efficient=True (rows of `ref_emb` paired with rows of `embeddings` "
                rule += "cannot be matched across processes; use efficient=False)"
                raise ValueError(message(_LOSS, "labels", rule, None))
            gathered_ref = all_gather(ref_emb)
            gathered_ref_labels = None if ref_labels is None else all_gather(ref_labels.to(device))
        elif loss.supports_ref_emb and labels is not None:
            sizes = _gather_sizes(embeddings.shape[0], device, world)
            gathered_ref = _gather_rows(embeddings, sizes, rank, world)
            gathered_ref_labels = _gather_rows(labels, sizes, rank, world)
            if indices_tuple is None:
                indices_tuple = _pairs_without_self(labels, gathered_ref_labels, sum(sizes[:rank]))
        with _reduced_over_processes(loss, rank, world):
            return _call_with_averaged_gradients(
                loss, world, embeddings, labels, indices_tuple, gathered_ref, gathered_ref_labels
            )

    def _memory_efficient(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: Sequence[Tensor] | None,
        enqueue_mask: Tensor | None,
        rank: int,
        world: int,
    ) -> Tensor:
        """CrossBatchMemory with local queries: enqueue the gathered batch, score the local rows against it."""
        xbm = self.loss
        assert isinstance(xbm, CrossBatchMemory)
        name = "CrossBatchMemory"
        check_embeddings(name, embeddings)
        if embeddings.shape[1] != xbm.embedding_size:
            rule = f"of embedding size {xbm.embedding_size} (the `embedding_size` given to the constructor)"
            raise ValueError(message(name, "embeddings", rule, Described(f"embedding size {embeddings.shape[1]}")))
        check_labels(name, labels, embeddings.shape[0])
        device = embeddings.device
        labels = labels.to(device)
        if indices_tuple is not None and enqueue_mask is not None:
            raise ValueError(message(name, "indices_tuple", "None when `enqueue_mask` is given", Described("a tuple")))
        if enqueue_mask is not None:
            enqueue_mask = xbm._checked_mask(enqueue_mask, embeddings.shape[0]).to(device)
        sizes = _gather_sizes(embeddings.shape[0], device, world)
        offset, total = sum(sizes[:rank]), sum(sizes)
        given = check_indices_tuple(name, indices_tuple, embeddings.shape[0], total, device)
        with torch.no_grad():
            all_emb = _gather_rows(embeddings.detach(), sizes, rank, world)
        all_labels = _gather_rows(labels, sizes, rank, world)
        if enqueue_mask is None:
            new_emb, new_labels, query, query_labels = all_emb, all_labels, embeddings, labels
        else:
            all_mask = _gather_rows(enqueue_mask, sizes, rank, world)
            new_emb, new_labels = all_emb[all_mask], all_labels[all_mask]
            query, query_labels = embeddings[~enqueue_mask], labels[~enqueue_mask]
        num_new = new_emb.shape[0]
        if num_new > xbm.memory_size:
            arg = "enqueue_mask" if enqueue_mask is not None else "embeddings"
            rule = f"at most `memory_size` ({xbm.memory_size}) rows over all processes"
            raise ValueError(message(name, arg, rule, Described(f"{num_new} rows to enqueue")))
        xbm._follow(embeddings, labels)
        slots = (xbm.queue_idx + torch.arange(num_new, device=device)) % xbm.memory_size
        overwritten = (xbm.embedding_memory[slots], xbm.label_memory[slots])
        xbm.embedding_memory.index_copy_(0, slots, new_emb)
        xbm.label_memory.index_copy_(0, slots, new_labels)
        filled = xbm.has_been_filled or xbm.queue_idx + num_new >= xbm.memory_size
        num_ref = xbm.memory_size if filled else xbm.queue_idx + num_new
        try:
            if num_ref == 0:
                value = zero_loss(embeddings)
            else:
                ref_emb, ref_labels = xbm.embedding_memory[:num_ref], xbm.label_memory[:num_ref]
                own = slots[offset : offset + embeddings.shape[0]] if enqueue_mask is None else None
                chosen = xbm._indices(query, query_labels, ref_emb, ref_labels, own, None)
                if given is not None:
                    assert chosen is not None  # `given` excludes `enqueue_mask`, so the own copies were excluded
                    if isinstance(chosen, LabelPairs):  # listed, to add the given ones
                        chosen = list_label_pairs(query_labels, ref_labels, chosen)
                    chosen = _with_given(chosen, given, query_labels, slots)
                with _reduced_over_processes(xbm.loss, rank, world):
                    value = _call_with_averaged_gradients(
                        xbm.loss, world, query, query_labels, chosen, ref_emb, ref_labels
                    )
        except BaseException:
            xbm.embedding_memory.index_copy_(0, slots, overwritten[0])
            xbm.label_memory.index_copy_(0, slots, overwritten[1])
            raise
        xbm.queue_idx = (xbm.queue_idx + num_new) % xbm.memory_size
        xbm.has_been_filled = filled
        return value

    def extra_repr(self) -> str:
        return f"efficient={self.efficient}"


def _with_given(
    chosen: Pairs | Triplets, given: tuple[Tensor, ...], query_labels: Tensor, slots: Tensor
) -> Pairs | Triplets:
    """Add pairs or triplets given as (local anchor, row of the gathered batch), the rows mapped to the memory
    slots they were just written to."""
    extra: Pairs | Triplets
    if isinstance(chosen, Triplets):
        a, p, n = pairs_to_triplets(given, num_anchors=query_labels.shape[0]) if len(given) == 4 else given
        extra = Triplets(a, slots[p], slots[n])
    else:
        a1, p, a2, n = convert_to_pairs(given, query_labels)
        extra = Pairs(a1, slots[p], a2, slots[n])
    return type(chosen)(*(torch.cat([mine, more]) for mine, more in zip(chosen, extra, strict=True)))


class DistributedMinerWrapper(nn.Module):
    """A miner over the global batch of a ``torch.distributed`` job.

    The embeddings and labels of every process are gathered (rank order, without gradient: mining only
    selects indices).

    * ``efficient=False``: the miner runs on the whole gathered batch on every process; the indices point
      into the gathered batch, as :class:`DistributedLossWrapper` with ``efficient=False`` expects them.
    * ``efficient=True``: the local embeddings are the anchors and the gathered batch the reference set;
      pairs and triplets of a query with its own row are dropped. Anchors are local indices and the others
      indices into the gathered batch, as :class:`DistributedLossWrapper` with ``efficient=True`` expects
      (an :class:`~dmlkit.miners.EmbeddingsAlreadyPackagedAsTriplets` packs its triplets from local rows).
      Miners that decide per anchor give the single-process tuples; miners that choose a positive closest to
      the anchor, or use statistics of the whole batch, do not.

    Outside a distributed job the miner is called as is, with a warning (pytorch-metric-learning 2.9.0
    raises there).

    Args:
        miner: a dmlkit miner.
        efficient: mine only with the local embeddings as anchors (see above).

    Example:
        >>> from dmlkit.miners import TripletMarginMiner
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     a, p, n = DistributedMinerWrapper(TripletMarginMiner(margin=0.2))(torch.randn(8, 4),
        ...                                                                      torch.arange(4).repeat(2))
        >>> a.dtype
        torch.int64
    """

    def __init__(self, miner: BaseMiner, efficient: bool = False) -> None:
        super().__init__()
        if not isinstance(miner, BaseMiner):
            raise TypeError(
                message(_MINER, "miner", "a dmlkit miner (e.g. TripletMarginMiner())", Described(type(miner).__name__))
            )
        if not isinstance(efficient, bool):
            raise TypeError(message(_MINER, "efficient", "a bool", efficient))
        self.miner = miner
        self.efficient = efficient

    def forward(
        self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor | None = None, ref_labels: Tensor | None = None
    ) -> Pairs | Triplets:
        """The mined pairs or triplets of the global batch (see the class docstring for the indices)."""
        rank, world = rank_and_world_size()
        if world == 1:
            if not is_distributed():
                warnings.warn(f"{_MINER}: no torch.distributed process group; the miner is called as is.", stacklevel=2)
            return self.miner(embeddings, labels, ref_emb, ref_labels)
        device = embeddings.device
        labels = labels.to(device)
        with torch.no_grad():
            sizes = _gather_sizes(embeddings.shape[0], device, world)
            all_emb = _gather_rows(embeddings.detach(), sizes, rank, world)
            all_labels = _gather_rows(labels, sizes, rank, world)
            all_ref = None if ref_emb is None else all_gather(ref_emb.detach())
            all_ref_labels = None if ref_labels is None else all_gather(ref_labels.to(device))
        if not self.efficient:
            return self.miner(all_emb, all_labels, all_ref, all_ref_labels)
        if all_ref is not None:
            return self.miner(embeddings, labels, all_ref, all_ref_labels)
        offset = sum(sizes[:rank])
        if isinstance(self.miner, EmbeddingsAlreadyPackagedAsTriplets):
            # triplets are consecutive local rows: their positives and negatives are local rows too
            a, p, n = self.miner(embeddings, labels)
            return Triplets(a, p + offset, n + offset)
        return _without_self(self.miner(embeddings, labels, all_emb, all_labels), offset)

    def extra_repr(self) -> str:
        return f"efficient={self.efficient}"
