"""Cross-batch memory: compare each batch against a queue of embeddings from recent iterations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import Described, check_embeddings, check_labels, check_range, message
from ..indices import check_indices_tuple, convert_to_pairs, list_label_pairs, pairs_to_triplets
from ..losses.base import BaseMetricLossFunction
from ..miners.base import BaseMiner
from ..reducers.base import zero_loss
from ..types import LabelPairs, Pairs, Triplets

__all__ = ["CrossBatchMemory"]

_NAME = "CrossBatchMemory"


class CrossBatchMemory(nn.Module):
    """Cross-batch memory (Wang, Zhang, Huang and Scott, 2020, "Cross-Batch Memory for Embedding Learning",
    CVPR, arXiv:1912.06798).

    Embeddings drift slowly once training has warmed up, so the embeddings of the last few iterations are
    still informative references. The wrapper keeps the most recent ``memory_size`` embeddings (detached)
    and their labels in a ring buffer and scores every embedding of the current batch against the whole
    memory with the wrapped ``loss``: the batch is the query set (gradients flow into it), the memory is the
    reference set (no gradients). This multiplies the number of pairs a small batch sees.

    Each call first writes the batch into the memory, then compares:

    * without ``enqueue_mask``: every row is enqueued and every row is a query; a query is never paired with
      its own copy in the memory (older copies of the same sample, from earlier batches, are kept);
    * with ``enqueue_mask``: the rows where the mask is true are enqueued and the others are the queries
      (useful when one view of each sample feeds the memory and another is the query).

    The memory is updated in place, as in pytorch-metric-learning: call ``backward()`` on one loss before the
    next call (a graph that still needs an overwritten memory row makes autograd raise, never silently
    produce wrong gradients). If the miner or the loss raises, the memory is left as it was.

    Differences from pytorch-metric-learning 2.9.0, which are bug fixes:

    * a batch of one is also never paired with its own copy (PML keeps that self-pair);
    * an ``indices_tuple`` passed to :meth:`forward` indexes the batch, and its positives/negatives are mapped
      to the memory slots where those rows were just written (PML uses the batch indices as memory slots,
      which points at other samples unless the queue started at slot 0);
    * an ``enqueue_mask`` that enqueues nothing leaves the memory as it was (PML then marks the memory
      full and compares against never-written zero rows), and enqueueing more rows than ``memory_size``
      is a ``ValueError`` (PML writes several rows to one slot);
    * ``queue_idx`` and ``has_been_filled`` are saved in ``state_dict()``, so a restored memory resumes
      where it left off.

    Args:
        loss: the metric loss to apply; it must accept a reference set (``loss.supports_ref_emb``).
        embedding_size: the size of each embedding, a positive integer.
        memory_size: how many embeddings the memory holds, a positive integer.
        miner: an optional miner, run between the batch and the memory; its pairs/triplets are the ones
            scored (without a miner: every positive and negative pair but the own copies; a loss whose
            ``accepts_label_pairs`` is True, such as ContrastiveLoss, receives these as a
            :class:`~dmlkit.types.LabelPairs` description and forms them by tiles, any other loss as lists).

    Attributes:
        embedding_memory: ``(memory_size, embedding_size)`` buffer of stored embeddings; it follows
            ``.to()``, ``state_dict()`` and the dtype and device of the embeddings it receives.
        label_memory: ``(memory_size,)`` buffer of their labels.
        queue_idx: the slot the next enqueued row will be written to.
        has_been_filled: whether every slot has been written at least once.

    Example:
        >>> from dmlkit.losses import TripletMarginLoss
        >>> xbm = CrossBatchMemory(TripletMarginLoss(margin=0.1), embedding_size=16, memory_size=32)
        >>> for _ in range(3):
        ...     loss = xbm(torch.randn(8, 16), torch.arange(4).repeat(2))
        >>> loss.ndim, xbm.queue_idx, xbm.has_been_filled
        (0, 24, False)
    """

    embedding_memory: Tensor
    label_memory: Tensor

    def __init__(
        self,
        loss: BaseMetricLossFunction,
        embedding_size: int,
        memory_size: int = 1024,
        miner: BaseMiner | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(loss, BaseMetricLossFunction):
            raise TypeError(
                message(
                    _NAME, "loss", "a dmlkit metric loss (e.g. TripletMarginLoss())", Described(type(loss).__name__)
                )
            )
        if not loss.supports_ref_emb:
            raise ValueError(
                message(
                    _NAME,
                    "loss",
                    "a loss that accepts a reference set (`supports_ref_emb` is True)",
                    Described(type(loss).__name__),
                )
            )
        if miner is not None and not isinstance(miner, BaseMiner):
            raise TypeError(
                message(
                    _NAME,
                    "miner",
                    "None or a dmlkit miner (e.g. TripletMarginMiner())",
                    Described(type(miner).__name__),
                )
            )
        check_range(_NAME, "embedding_size", embedding_size, low=1, integer=True)
        check_range(_NAME, "memory_size", memory_size, low=1, integer=True)
        self.loss = loss
        self.miner = miner
        self.embedding_size = embedding_size
        self.memory_size = memory_size
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_size))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.queue_idx = 0
        self.has_been_filled = False

    def reset_queue(self) -> None:
        """Empty the memory (the buffers keep their device and dtype)."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx = 0
        self.has_been_filled = False

    @property
    def num_stored(self) -> int:
        """How many slots hold an embedding."""
        return self.memory_size if self.has_been_filled else self.queue_idx

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: Sequence[Tensor] | None = None,
        enqueue_mask: Tensor | None = None,
    ) -> Tensor:
        """Enqueue the batch (or its ``enqueue_mask`` rows) and return the loss of the queries against the memory.

        Args:
            embeddings: ``(batch_size, embedding_size)``.
            labels: ``(batch_size,)`` integer labels.
            indices_tuple: optional extra pairs or triplets within the batch (e.g. from a miner run on the
                batch alone), scored in addition to those formed with the memory. Not with ``enqueue_mask``.
            enqueue_mask: optional ``(batch_size,)`` boolean mask: true rows are enqueued, false rows are
                the queries.

        Returns:
            The scalar loss; a graph-connected 0 when there is no query or the memory is empty.
        """
        check_embeddings(_NAME, embeddings)
        batch_size, dim = embeddings.shape
        if dim != self.embedding_size:
            raise ValueError(
                message(
                    _NAME,
                    "embeddings",
                    f"of embedding size {self.embedding_size} (the `embedding_size` given to the constructor)",
                    Described(f"embedding size {dim}"),
                )
            )
        check_labels(_NAME, labels, batch_size)
        device = embeddings.device
        labels = labels.to(device)
        if indices_tuple is not None and enqueue_mask is not None:
            raise ValueError(message(_NAME, "indices_tuple", "None when `enqueue_mask` is given", Described("a tuple")))
        given = check_indices_tuple(_NAME, indices_tuple, batch_size, batch_size, device)
        if enqueue_mask is not None:
            enqueue_mask = self._checked_mask(enqueue_mask, batch_size).to(device)
            num_new = int(enqueue_mask.sum())
            rule = f"at most `memory_size` ({self.memory_size}) true values"
        else:
            num_new = batch_size
            rule = f"at most `memory_size` ({self.memory_size}) rows"
        if num_new > self.memory_size:
            arg = "enqueue_mask" if enqueue_mask is not None else "embeddings"
            raise ValueError(message(_NAME, arg, rule, Described(f"{num_new} rows to enqueue")))

        if enqueue_mask is None:
            new_emb, new_labels, query, query_labels = embeddings, labels, embeddings, labels
        else:
            new_emb, new_labels = embeddings[enqueue_mask], labels[enqueue_mask]
            query, query_labels = embeddings[~enqueue_mask], labels[~enqueue_mask]

        self._follow(embeddings, labels)
        slots = (self.queue_idx + torch.arange(num_new, device=device)) % self.memory_size
        overwritten = (self.embedding_memory[slots], self.label_memory[slots])
        self.embedding_memory.index_copy_(0, slots, new_emb.detach())
        self.label_memory.index_copy_(0, slots, new_labels)
        filled = self.has_been_filled or self.queue_idx + num_new >= self.memory_size
        num_ref = self.memory_size if filled else self.queue_idx + num_new
        try:
            if query.shape[0] == 0 or num_ref == 0:
                value = zero_loss(embeddings)
            else:
                ref_emb, ref_labels = self.embedding_memory[:num_ref], self.label_memory[:num_ref]
                own_slots = slots if enqueue_mask is None else None
                chosen = self._indices(query, query_labels, ref_emb, ref_labels, own_slots, given)
                value = self.loss(query, query_labels, chosen, ref_emb, ref_labels)
        except BaseException:
            self.embedding_memory.index_copy_(0, slots, overwritten[0])
            self.label_memory.index_copy_(0, slots, overwritten[1])
            raise
        self.queue_idx = (self.queue_idx + num_new) % self.memory_size
        self.has_been_filled = filled
        return value

    def _checked_mask(self, enqueue_mask: Any, batch_size: int) -> Tensor:
        if not isinstance(enqueue_mask, Tensor) or enqueue_mask.dtype != torch.bool:
            desc = (
                f"tensor of dtype {enqueue_mask.dtype}"
                if isinstance(enqueue_mask, Tensor)
                else type(enqueue_mask).__name__
            )
            raise TypeError(message(_NAME, "enqueue_mask", "None or a boolean tensor", Described(desc)))
        if enqueue_mask.shape != (batch_size,):
            raise ValueError(
                message(
                    _NAME,
                    "enqueue_mask",
                    f"of shape ({batch_size},), one value per embedding",
                    Described(f"shape {tuple(enqueue_mask.shape)}"),
                )
            )
        return enqueue_mask

    def _follow(self, embeddings: Tensor, labels: Tensor) -> None:
        """Keep the memory on the device and in the dtypes of the incoming batch."""
        memory = self.embedding_memory
        if memory.device != embeddings.device or memory.dtype != embeddings.dtype:
            self.embedding_memory = memory.to(device=embeddings.device, dtype=embeddings.dtype)
        memory_labels = self.label_memory
        if memory_labels.device != labels.device or memory_labels.dtype != labels.dtype:
            self.label_memory = memory_labels.to(device=labels.device, dtype=labels.dtype)

    def _indices(
        self,
        query: Tensor,
        query_labels: Tensor,
        ref_emb: Tensor,
        ref_labels: Tensor,
        own_slots: Tensor | None,
        given: tuple[Tensor, ...] | None,
    ) -> Pairs | Triplets | LabelPairs | None:
        """The pairs or triplets (query index, memory slot) to score, without any query-own-copy pair.

        ``own_slots[i]`` is the slot where query ``i`` was just written (``None`` when the queries are not
        in the memory); ``given`` holds extra pairs or triplets that index the batch.
        """
        chosen: Pairs | Triplets
        if self.miner is not None:
            chosen = self.miner(query, query_labels, ref_emb, ref_labels)
            if own_slots is not None:
                chosen = _without_own_copies(chosen, own_slots)
        elif own_slots is None:
            # Nothing to exclude: the loss forms every pair itself, often without listing them.
            return None
        elif given is None and getattr(self.loss, "accepts_label_pairs", False):
            # every pair but each query's own copy, described: the loss forms them by tiles, unlisted
            return LabelPairs(own_slots)
        else:
            chosen = list_label_pairs(query_labels, ref_labels, LabelPairs(own_slots))
        if given is None:
            return chosen
        assert own_slots is not None  # `indices_tuple` and `enqueue_mask` are exclusive
        if isinstance(chosen, Triplets):
            a, p, n = pairs_to_triplets(given, num_anchors=query.shape[0]) if len(given) == 4 else given
            extra: Pairs | Triplets = Triplets(a, own_slots[p], own_slots[n])
        else:
            a1, p, a2, n = convert_to_pairs(given, query_labels)
            extra = Pairs(a1, own_slots[p], a2, own_slots[n])
        return type(chosen)(*(torch.cat([mine, more]) for mine, more in zip(chosen, extra, strict=True)))

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # The memory follows the dtype of the embeddings it stores, so restore it in the saved dtype rather
        # than casting it into the current one (a float64 memory would lose precision in a float32 buffer).
        for name in ("embedding_memory", "label_memory"):
            saved, current = state_dict.get(prefix + name), getattr(self, name)
            if isinstance(saved, Tensor) and saved.dtype != current.dtype and saved.shape == current.shape:
                setattr(self, name, current.to(saved.dtype))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def get_extra_state(self) -> dict[str, Any]:
        return {"queue_idx": self.queue_idx, "has_been_filled": self.has_been_filled}

    def set_extra_state(self, state: Any) -> None:
        valid = (
            isinstance(state, Mapping)
            and isinstance(state.get("queue_idx"), int)
            and not isinstance(state.get("queue_idx"), bool)
            and 0 <= state["queue_idx"] < self.memory_size
            and isinstance(state.get("has_been_filled"), bool)
        )
        if not valid:
            raise ValueError(
                message(
                    _NAME,
                    "state_dict",
                    f"saved by a CrossBatchMemory of memory_size {self.memory_size} "
                    "(queue_idx in range, has_been_filled a bool)",
                    state,
                )
            )
        self.queue_idx = state["queue_idx"]
        self.has_been_filled = state["has_been_filled"]

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, memory_size={self.memory_size}"


def _without_own_copies(chosen: Pairs | Triplets, own_slots: Tensor) -> Pairs | Triplets:
    """Drop the positive pairs (and triplets) whose positive is the anchor's own copy in the memory.

    A negative is never an own copy: it has another label than its anchor.
    """
    if isinstance(chosen, Triplets):
        keep = chosen.positives != own_slots[chosen.anchors]
        return Triplets(*(t[keep] for t in chosen))
    keep = chosen.positives != own_slots[chosen.anchors_pos]
    return Pairs(chosen.anchors_pos[keep], chosen.positives[keep], chosen.anchors_neg, chosen.negatives)
