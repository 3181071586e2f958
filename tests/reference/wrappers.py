"""Naive oracles for the loss wrappers, written with plain Python lists and loops (no torch).

Cross-batch memory (Wang, Zhang, Huang and Scott, 2020, arXiv:1912.06798): a first-in first-out queue of the
most recent embeddings and labels. Each batch is first pushed into the queue; then every query of the batch is
compared with every entry of the queue, except the entry that is the query's own copy (same sample, same
iteration). Entries carry a unique id so that "own copy" is decided by identity, not by position arithmetic.

Contrastive loss (Hadsell, Chopra and LeCun, 2006): ``relu(d(a, p) - pos_margin)`` for positive pairs and
``relu(neg_margin - d(a, n))`` for negative pairs, each group averaged over its non-zero values, then summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.reference.triplet import LP, DistanceSpec, avg_non_zero, distance_matrix, to_lists

__all__ = [
    "Entry",
    "NaiveMemory",
    "enqueue_batch",
    "memory_pairs",
    "memory_triplets",
    "without_own_copies",
    "contrastive_loss",
    "numeric_gradient",
]

Row = list[float]


@dataclass
class Entry:
    embedding: Row
    label: int
    uid: int


@dataclass
class NaiveMemory:
    """A FIFO queue of at most ``size`` entries."""

    size: int
    entries: list[Entry] = field(default_factory=list)
    next_uid: int = 0

    def push(self, rows: Sequence[Row], labels: Sequence[int]) -> list[int]:
        """Append rows (oldest entries fall out) and return their ids."""
        uids = []
        for row, label in zip(rows, labels, strict=True):
            self.entries.append(Entry([float(x) for x in row], int(label), self.next_uid))
            uids.append(self.next_uid)
            self.next_uid += 1
        while len(self.entries) > self.size:
            self.entries.pop(0)
        return uids

    @property
    def embeddings(self) -> list[Row]:
        return [e.embedding for e in self.entries]

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    @property
    def uids(self) -> list[int]:
        return [e.uid for e in self.entries]


def enqueue_batch(
    memory: NaiveMemory, embeddings: object, labels: object, enqueue_mask: object | None = None
) -> tuple[list[Row], list[int], list[int | None]]:
    """Push a batch and return the queries: ``(rows, labels, uid of each query's own copy or None)``.

    Without a mask every row is pushed and is a query; with a mask, true rows are pushed and false rows are
    the queries (they have no copy in the memory).
    """
    rows, labs = to_lists(embeddings), [int(x) for x in to_lists(labels)]
    if enqueue_mask is None:
        uids: list[int | None] = list(memory.push(rows, labs))
        return rows, labs, uids
    mask = [bool(m) for m in to_lists(enqueue_mask)]
    memory.push([r for r, m in zip(rows, mask, strict=True) if m], [x for x, m in zip(labs, mask, strict=True) if m])
    query = [r for r, m in zip(rows, mask, strict=True) if not m]
    query_labels = [x for x, m in zip(labs, mask, strict=True) if not m]
    return query, query_labels, [None] * len(query)


def memory_pairs(
    query_labels: Sequence[int], query_uids: Sequence[int | None], memory: NaiveMemory
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Positive and negative (query, memory position) pairs; a query is never paired with its own copy."""
    positive, negative = [], []
    for i, (label, uid) in enumerate(zip(query_labels, query_uids, strict=True)):
        for j, entry in enumerate(memory.entries):
            if entry.label == label and entry.uid != uid:
                positive.append((i, j))
            elif entry.label != label:
                negative.append((i, j))
    return positive, negative


def memory_triplets(
    query_labels: Sequence[int], query_uids: Sequence[int | None], memory: NaiveMemory
) -> list[tuple[int, int, int]]:
    """Every (query, positive position, negative position) against the memory, without own copies."""
    positive, negative = memory_pairs(query_labels, query_uids, memory)
    return [(a, p, n) for a, p in positive for a2, n in negative if a2 == a]


def without_own_copies(
    triplets: Sequence[tuple[int, int, int]], query_uids: Sequence[int | None], memory: NaiveMemory
) -> list[tuple[int, int, int]]:
    """Drop the triplets whose positive is the anchor's own copy in the memory."""
    return [(a, p, n) for a, p, n in triplets if memory.entries[p].uid != query_uids[a]]


def contrastive_loss(
    query: Sequence[Row],
    ref: Sequence[Row],
    positive: Sequence[tuple[int, int]],
    negative: Sequence[tuple[int, int]],
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    spec: DistanceSpec = LP,
) -> float:
    """Hinged contrastive loss of the given pairs, each group averaged over its non-zero values."""
    mat = distance_matrix(query, ref, spec)
    if spec.is_similarity:
        pos = [max(pos_margin - mat[a][p], 0.0) for a, p in positive]
        neg = [max(mat[a][n] - neg_margin, 0.0) for a, n in negative]
    else:
        pos = [max(mat[a][p] - pos_margin, 0.0) for a, p in positive]
        neg = [max(neg_margin - mat[a][n], 0.0) for a, n in negative]
    return avg_non_zero(pos) + avg_non_zero(neg)


def numeric_gradient(f: Callable[[list[Row]], float], rows: Sequence[Row], h: float = 1e-6) -> list[Row]:
    """Central-difference gradient of ``f`` with respect to every coordinate of ``rows``."""
    base = [[float(x) for x in row] for row in rows]
    grad = []
    for i, row in enumerate(base):
        grad_row = []
        for k in range(len(row)):
            plus = [list(r) for r in base]
            minus = [list(r) for r in base]
            plus[i][k] += h
            minus[i][k] -= h
            grad_row.append((f(plus) - f(minus)) / (2 * h))
        grad.append(grad_row)
    return grad
