"""Sentence pairs with a similarity score, such as the STS Benchmark, and their grouping into labelled sentences.

The STS Benchmark (Cer, Diab, Agirre, Lopez-Gazpio and Specia, 2017, "SemEval-2017 Task 1: Semantic Textual
Similarity", arXiv:1708.00055) pairs English sentences with a human similarity score from 0 to 5. Pair data
feeds a regression or contrastive objective directly; metric-learning losses that take class labels need
groups instead, which :meth:`TextPairDataset.labelled_groups` builds: sentences joined by a pair scoring at
least a threshold share a label, transitively.
"""

from __future__ import annotations

import csv
import enum
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._validation import check_choice, check_range, message
from .root import DATA_ENV_VAR, resolve_data_root

__all__ = ["TextPair", "TextPairDataset", "read_text_pairs", "load_sts_benchmark"]


class TextPair(NamedTuple):
    """Two texts and their score (similarity, or a numeric label).

    Example:
        >>> TextPair("a dog runs", "a dog is running", 4.8).score
        4.8
    """

    text_a: str
    text_b: str
    score: float


class TextPairDataset(Dataset[TextPair]):
    """A list of :class:`TextPair` items, with their scores as a tensor.

    A ``DataLoader`` batch is a ``TextPair`` of two sequences of texts and a tensor of scores.

    Args:
        pairs: ``(text_a, text_b, score)`` triples; scores finite numbers.
        tags: an optional string per pair (the genre of an STS pair, say).

    Attributes:
        pairs: the :class:`TextPair` items.
        scores: ``float32`` tensor of the scores.
        tags: the tags given, or None.

    Example:
        >>> data = TextPairDataset([("a cat", "a kitten", 4.5), ("a cat", "a car", 0.5), ("a kitten", "a kitty", 4.8)])
        >>> data[1].text_b, data.scores.tolist()
        ('a car', [4.5, 0.5, 4.800000190734863])
        >>> texts, labels = data.labelled_groups(threshold=4.0)
        >>> texts, labels.tolist()
        (['a cat', 'a kitten', 'a car', 'a kitty'], [0, 0, 1, 0])
    """

    def __init__(self, pairs: Iterable[tuple[str, str, float]], tags: Sequence[str] | None = None) -> None:
        owner = "TextPairDataset"
        self.pairs: list[TextPair] = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple) and len(pair) == 3):
                raise TypeError(message(owner, f"pairs[{i}]", "a (text_a, text_b, score) triple", pair))
            text_a, text_b, score = pair
            if not isinstance(text_a, str) or not isinstance(text_b, str):
                raise TypeError(message(owner, f"pairs[{i}]", "a pair of strings and a score", pair))
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(message(owner, f"pairs[{i}]", "a triple with a finite numeric score", pair))
            self.pairs.append(TextPair(text_a, text_b, float(score)))
        if tags is not None and len(tags) != len(self.pairs):
            raise ValueError(message(owner, "tags", f"one per pair ({len(self.pairs)})", f"{len(tags)} tags"))
        self.tags = None if tags is None else list(tags)
        self.scores = torch.tensor([p.score for p in self.pairs], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TextPair:
        return self.pairs[index]

    def __repr__(self) -> str:
        return f"TextPairDataset({len(self)} pairs)"

    def labelled_groups(self, threshold: float, min_size: int = 1) -> tuple[list[str], Tensor]:
        """The distinct texts and a label per text: texts linked by a pair with ``score >= threshold`` share one.

        Labels are the connected components of the graph whose nodes are the distinct texts (compared
        exactly) and whose edges are the pairs scoring at least ``threshold``; a text linked to no other is a
        group of its own. Components are found by vectorised label propagation with pointer jumping.

        Args:
            threshold: the smallest score that joins two texts.
            min_size: drop the groups with fewer texts (2 keeps only texts that have a positive partner).

        Returns:
            ``(texts, labels)``: the kept texts in order of first appearance in the pairs, and ``int64``
            labels ``0 .. K-1`` numbered in the same order.

        Raises:
            ValueError: a threshold that is not a finite number, or ``min_size < 1``.
        """
        owner = "TextPairDataset.labelled_groups"
        check_range(owner, "threshold", threshold)
        if not math.isfinite(threshold):
            raise ValueError(message(owner, "threshold", "finite", threshold))
        check_range(owner, "min_size", min_size, low=1, integer=True)
        index: dict[str, int] = {}
        ends = [index.setdefault(text, len(index)) for pair in self.pairs for text in (pair.text_a, pair.text_b)]
        texts = list(index)
        ends_tensor = torch.tensor(ends, dtype=torch.int64).view(-1, 2)
        linked = ends_tensor[self.scores >= threshold]
        component = _connected_components(len(texts), linked[:, 0], linked[:, 1])
        _, labels, sizes = torch.unique(component, return_inverse=True, return_counts=True)
        keep = sizes[labels] >= min_size
        _, labels = torch.unique(labels[keep], return_inverse=True)
        kept = torch.nonzero(keep).flatten().tolist()
        return [texts[i] for i in kept], labels


def _connected_components(n: int, a: Tensor, b: Tensor) -> Tensor:
    """For each of ``n`` nodes, the smallest node index of its component, given the edges ``(a[i], b[i])``.

    Each round, every edge pulls both its ends down to the smaller of their current values, then every node
    jumps to its value's value (pointer jumping), until nothing changes.
    """
    parent = torch.arange(n, dtype=torch.int64)
    while True:
        low = torch.minimum(parent[a], parent[b])
        updated = parent.scatter_reduce(0, a, low, reduce="amin").scatter_reduce(0, b, low, reduce="amin")
        updated = updated[updated]
        if torch.equal(updated, parent):
            return parent
        parent = updated


def _column(owner: str, arg: str, column: int | str, names: list[str]) -> int:
    if isinstance(column, int):
        return column
    if column not in names:
        raise ValueError(message(owner, arg, f"a column of the header ({', '.join(names)})", column))
    return names.index(column)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_text_pairs(
    path: str | os.PathLike[str],
    text_a_column: int | str = 0,
    text_b_column: int | str = 1,
    score_column: int | str = 2,
    *,
    delimiter: str | None = None,
    header: bool | None = None,
    quoting: bool = True,
    tag_column: int | str | None = None,
) -> TextPairDataset:
    """Read ``(text_a, text_b, score)`` rows from a CSV or TSV file.

    Columns are chosen by index or, with a header row, by name. Header detection (``header=None``): a header
    is assumed when a column is given by name, and otherwise when the first row's score cell is not a number.
    Texts are stripped of surrounding white space; blank lines are skipped; rows may carry extra fields.

    Args:
        path: the file (UTF-8; a byte-order mark is ignored).
        text_a_column, text_b_column, score_column: indices or header names.
        delimiter: the field separator; None for a tab when the file name ends in ``.tsv``, else a comma.
        header: True, False, or None to detect.
        quoting: whether ``"`` quotes fields (CSV rules); False splits on the delimiter only, for files whose
            texts contain unbalanced quotes (such as the STS Benchmark).
        tag_column: an optional column kept as :attr:`TextPairDataset.tags`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no data row, a short row, an empty text or a score that is not a finite number (the message
            gives the line), or an unknown column name.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "pairs.tsv")
        >>> with open(path, "w") as f:
        ...     _ = f.write('a\\tb\\tscore\\nHe said "hi\\tShe said hi\\t3.5\\n')
        >>> read_text_pairs(path, "a", "b", "score", quoting=False)[0]
        TextPair(text_a='He said "hi', text_b='She said hi', score=3.5)
    """
    owner = "read_text_pairs"
    file_path = Path(path)
    columns: dict[str, Any] = {
        "text_a_column": text_a_column,
        "text_b_column": text_b_column,
        "score_column": score_column,
    }
    if tag_column is not None:
        columns["tag_column"] = tag_column
    for arg, column in columns.items():
        if isinstance(column, bool) or not isinstance(column, (int, str)) or (isinstance(column, int) and column < 0):
            raise ValueError(message(owner, arg, "a column index >= 0 or a header name", column))
    by_name = any(isinstance(column, str) for column in columns.values())
    if header is False and by_name:
        raise ValueError(message(owner, "header", "True or None when a column is given by name", header))
    sep = delimiter if delimiter is not None else ("\t" if file_path.name.lower().endswith(".tsv") else ",")
    if not isinstance(sep, str) or len(sep) != 1:
        raise ValueError(message(owner, "delimiter", "a single character", delimiter))
    if not file_path.is_file():
        raise FileNotFoundError(
            f"{owner}: the file {file_path} does not exist. Pass another path, or set the environment variable "
            f"{DATA_ENV_VAR} for the default data folder."
        )
    with open(file_path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        rows = []
        line = 1
        for row in reader:
            if row and any(cell.strip() for cell in row):
                rows.append((line, row))
            line = reader.line_num + 1
    if not rows:
        raise ValueError(f"{owner}: the file {file_path} holds no data row.")
    if header is None:
        first = rows[0][1]
        numeric = isinstance(score_column, int) and score_column < len(first) and _is_number(first[score_column])
        header = by_name or not numeric
    names: list[str] = []
    if header:
        names = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{owner}: the file {file_path} holds no data row.")
    ia, ib, isc = (
        _column(owner, arg, columns[arg], names) for arg in ("text_a_column", "text_b_column", "score_column")
    )
    it = None if tag_column is None else _column(owner, "tag_column", tag_column, names)
    needed = max(ia, ib, isc, -1 if it is None else it) + 1
    pairs: list[tuple[str, str, float]] = []
    tags: list[str] = []
    for line, row in rows:
        if len(row) < needed:
            raise ValueError(f"{owner}: line {line} of {file_path} has {len(row)} field(s); {needed} are needed.")
        text_a, text_b, score_text = row[ia].strip(), row[ib].strip(), row[isc].strip()
        if not text_a or not text_b:
            raise ValueError(f"{owner}: line {line} of {file_path} has an empty text.")
        if not _is_number(score_text):
            raise ValueError(f"{owner}: line {line} of {file_path} has the score {score_text!r}, not a finite number.")
        pairs.append((text_a, text_b, float(score_text)))
        if it is not None:
            tags.append(row[it].strip())
    return TextPairDataset(pairs, tags if it is not None else None)


class _StsSplit(str, enum.Enum):
    TRAIN = "train"
    DEV = "dev"
    TEST = "test"


# Fields of an STS Benchmark line: genre, file, year, id, score, sentence 1, sentence 2 (then optional licence
# fields).
_STS_GENRE, _STS_SCORE, _STS_FIRST, _STS_SECOND = 0, 4, 5, 6


def load_sts_benchmark(root: str | os.PathLike[str] | None = None, split: str = "train") -> TextPairDataset:
    """Load a split of the STS Benchmark (Cer et al., 2017, arXiv:1708.00055) as sentence pairs scored 0-5.

    The files ``sts-{train,dev,test}.csv`` are tab-separated without a header: genre, file name, year, id,
    score, sentence 1, sentence 2, sometimes followed by two licence fields. They are not CSV: sentences
    contain unbalanced ``"`` characters, so fields are split on tabs only. Sentences are stripped of
    surrounding white space (some training sentences end in spaces). The genre of each pair is kept in
    ``tags`` (``main-captions``, ``main-news``, and ``main-forum`` in train but ``main-forums`` in dev/test,
    as in the files).

    Args:
        root: the folder holding the files, or their ``stsbenchmark`` folder; None for the default data folder
            (see :func:`~dmlkit.data.resolve_data_root`).
        split: ``"train"`` (5,749 pairs), ``"dev"`` (1,500) or ``"test"`` (1,379).

    Raises:
        FileNotFoundError: the file is in neither folder.
        ValueError: an unknown split, or a malformed line (the message gives the line).

    Example:
        >>> pairs = load_sts_benchmark(split="dev")  # doctest: +SKIP
        >>> len(pairs), pairs[0].score  # doctest: +SKIP
        (1500, 5.0)
    """
    owner = "load_sts_benchmark"
    part = check_choice(owner, "split", split, _StsSplit)
    base = resolve_data_root(root)
    name = f"sts-{part.value}.csv"
    candidates = [base / name, base / "stsbenchmark" / name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"{owner}: no file {name} found; tried {', '.join(map(str, candidates))}. Pass `root` or set the "
            f"environment variable {DATA_ENV_VAR} to the folder holding stsbenchmark/."
        )
    return read_text_pairs(
        found,
        _STS_FIRST,
        _STS_SECOND,
        _STS_SCORE,
        delimiter="\t",
        header=False,
        quoting=False,
        tag_column=_STS_GENRE,
    )
