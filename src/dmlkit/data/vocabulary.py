"""Vocabularies for short items (subject lines, titles, tag lists) and the padding that batches them.

A :class:`Vocabulary` turns an item into a list of token ids: a string is split into words (runs of letters,
digits and underscores, lower-cased by default); a list of tags is taken as it is, one token per tag. Id 0 is
reserved for padding and id 1 for unknown tokens, so every known token has an id ``>= 2``. :func:`pad_items`
and :func:`pad_labeled_items` batch items of different lengths as a ``DataLoader`` ``collate_fn``, returning
the padded ids with a mask of the real tokens, the input of :class:`~dmlkit.training.SetEncoder`.

Example:
    >>> vocabulary = Vocabulary.build(["Fast cars", "fast bikes", "Slow cars"])
    >>> vocabulary.tokens
    ['<pad>', '<unk>', 'cars', 'fast', 'bikes', 'slow']
    >>> vocabulary.encode("fast boats"), vocabulary.encode(["cars", "tags"])
    ([3, 1], [2, 1])
    >>> token_ids, mask = pad_items([[3, 1], [5]])
    >>> token_ids.tolist(), mask.tolist()
    ([[3, 1], [5, 0]], [[True, True], [True, False]])
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._atomic import atomic_write
from .._validation import Described, check_range, check_type, message
from ..errors import CorruptFileError

__all__ = [
    "PAD_ID",
    "UNK_ID",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "Item",
    "PaddedItems",
    "Vocabulary",
    "tokenize",
    "pad_items",
    "pad_labeled_items",
]

#: the id of the padding token (never produced by :meth:`Vocabulary.encode`)
PAD_ID = 0
#: the id every token outside the vocabulary is encoded as
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

#: a short text, or a list of tags
Item = str | Sequence[str]

_KIND = "dmlkit.vocabulary"
_FORMAT_VERSION = 1
_WORD = re.compile(r"\w+")


def tokenize(item: Item, lowercase: bool = True) -> list[str]:
    """The tokens of one item: the words of a string, or the tags of a list of strings (taken whole).

    Words are maximal runs of word characters (letters, digits, underscore; Unicode aware), so punctuation
    separates them and is dropped. ``lowercase`` lower-cases words and tags alike.

    Example:
        >>> tokenize("Re-using C++ (again)?"), tokenize(["New York", "NYC"])
        (['re', 'using', 'c', 'again'], ['new york', 'nyc'])
    """
    if isinstance(item, str):
        return _WORD.findall(item.lower() if lowercase else item)
    if isinstance(item, (bytes, bytearray)) or not isinstance(item, Sequence):
        rule = "a string or a sequence of string tags"
        raise TypeError(message("tokenize", "item", rule, Described(type(item).__name__)))
    tags = list(item)
    for i, tag in enumerate(tags):
        check_type("tokenize", f"item[{i}]", tag, str, "a string tag")
    return [tag.lower() for tag in tags] if lowercase else tags


class Vocabulary:
    """A mapping from tokens to ids, with id 0 for padding and id 1 for unknown tokens.

    Build one from training items with :meth:`build` (tokens ordered by decreasing count, ties
    alphabetically, so the ids do not depend on the order of the items), or give the known tokens directly.

    Args:
        tokens: the known tokens in id order; the first gets id 2. Distinct strings.
        lowercase: whether :meth:`tokenize` lower-cases items (use the value the tokens were built with).

    Example:
        >>> vocabulary = Vocabulary(["red", "blue"])
        >>> len(vocabulary), vocabulary.encode("Blue or red"), vocabulary.decode([3, 1, 2])
        (4, [3, 1, 2], ['blue', '<unk>', 'red'])
    """

    def __init__(self, tokens: Iterable[str], *, lowercase: bool = True) -> None:
        check_type("Vocabulary", "lowercase", lowercase, bool, "a bool")
        known = list(tokens)
        for i, token in enumerate(known):
            check_type("Vocabulary", f"tokens[{i}]", token, str, "a string")
        self._ids = {token: i for i, token in enumerate(known, start=2)}
        if len(self._ids) != len(known):
            repeated = sorted(t for t, c in collections.Counter(known).items() if c > 1)[:5]
            raise ValueError(message("Vocabulary", "tokens", "distinct", Described(f"repeated tokens {repeated}")))
        self._tokens = [PAD_TOKEN, UNK_TOKEN, *known]
        self.lowercase = lowercase

    @classmethod
    def build(
        cls,
        items: Iterable[Item],
        min_count: int = 1,
        lowercase: bool = True,
        max_size: int | None = None,
    ) -> Vocabulary:
        """The vocabulary of the tokens of ``items`` seen at least ``min_count`` times.

        Args:
            items: strings (split into words) or lists of tags.
            min_count: the fewest occurrences a token needs, ``>= 1``.
            lowercase: lower-case words and tags.
            max_size: the largest ``len(vocabulary)``, reserved ids included (``>= 2``); the most frequent
                tokens are kept. None keeps every token.
        """
        check_range("Vocabulary.build", "min_count", min_count, low=1, integer=True)
        check_type("Vocabulary.build", "lowercase", lowercase, bool, "a bool")
        if max_size is not None:
            check_range("Vocabulary.build", "max_size", max_size, low=2, integer=True)
        counts = collections.Counter(itertools.chain.from_iterable(tokenize(item, lowercase) for item in items))
        ranked = sorted((token for token, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        return cls(ranked, lowercase=lowercase)

    @property
    def tokens(self) -> list[str]:
        """Every token in id order, the reserved ``"<pad>"`` and ``"<unk>"`` first (a copy)."""
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._tokens == other._tokens and self.lowercase == other.lowercase

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, lowercase={self.lowercase})"

    def tokenize(self, item: Item) -> list[str]:
        """The tokens of ``item`` (see :func:`tokenize`), with this vocabulary's ``lowercase``."""
        return tokenize(item, self.lowercase)

    def encode(self, item: Item) -> list[int]:
        """The ids of the tokens of ``item``, in order, :data:`UNK_ID` for unknown ones.

        An item without any token (``""``, ``"?!"``, ``[]``) encodes to ``[]``; :func:`pad_items` and
        :class:`~dmlkit.training.SetEncoder` reject such an item, so drop it or give it ``[UNK_ID]``.
        """
        ids = self._ids
        return [ids.get(token, UNK_ID) for token in self.tokenize(item)]

    def encode_many(self, items: Iterable[Item]) -> list[list[int]]:
        """:meth:`encode` of each item."""
        return [self.encode(item) for item in items]

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """The tokens of these ids (IndexError for an id outside ``[0, len(self))``)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self._tokens):
                raise IndexError(message("Vocabulary.decode", "ids", f"integers in [0, {len(self)})", value))
        return [self._tokens[i] for i in values]

    # ---------------------------------------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (format name and version, ``lowercase``, the known tokens)."""
        return {
            "format": _KIND,
            "format_version": _FORMAT_VERSION,
            "lowercase": self.lowercase,
            "tokens": self._tokens[2:],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "the vocabulary") -> Vocabulary:
        """The vocabulary described by :meth:`to_dict`'s output.

        Raises:
            CorruptFileError: not such a description, or another format version (the message names ``source``).
        """
        if not isinstance(data, dict) or data.get("format") != _KIND:
            raise CorruptFileError(f"{source}: not a dmlkit vocabulary (no 'format': {_KIND!r} field).")
        if data.get("format_version") != _FORMAT_VERSION:
            raise CorruptFileError(
                f"{source}: vocabulary format version {data.get('format_version')!r} is not supported "
                f"(this dmlkit reads version {_FORMAT_VERSION})."
            )
        tokens, lowercase = data.get("tokens"), data.get("lowercase")
        if (
            not isinstance(tokens, list)
            or not all(isinstance(t, str) for t in tokens)
            or not isinstance(lowercase, bool)
        ):
            raise CorruptFileError(
                f"{source}: corrupt vocabulary ('tokens' must be a list of strings, 'lowercase' a bool)."
            )
        try:
            return cls(tokens, lowercase=lowercase)
        except ValueError as exc:
            raise CorruptFileError(f"{source}: corrupt vocabulary ({exc})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary to a JSON file, atomically; return the path."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=0)
        return atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            CorruptFileError: not valid JSON, not a vocabulary, or another format version.

        Example:
            >>> import tempfile, os
            >>> file = os.path.join(tempfile.mkdtemp(), "vocabulary.json")
            >>> _ = Vocabulary(["red", "blue"]).save(file)
            >>> Vocabulary.load(file).tokens
            ['<pad>', '<unk>', 'red', 'blue']
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"Vocabulary.load: the file {str(file)!r} does not exist.")
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{file}: not a readable JSON vocabulary ({exc}).") from None
        return cls.from_dict(data, str(file))


class PaddedItems(NamedTuple):
    """A batch of items padded to one length: ``token_ids`` (B, L) int64, :data:`PAD_ID` after each item's
    end, and ``mask`` (B, L) bool, True on the real tokens."""

    token_ids: Tensor
    mask: Tensor


def pad_items(batch: Sequence[Sequence[int] | Tensor]) -> PaddedItems:
    """Pad a batch of token-id lists to the longest one: ``PaddedItems(token_ids, mask)``.

    Usable as a ``DataLoader`` ``collate_fn`` over a data set of encoded items.

    Raises:
        ValueError: an empty batch, an empty item (naming its position), or a negative id.
        TypeError: ids that are not integers.

    Example:
        >>> pad_items([[4, 2, 7], [3]]).token_ids.tolist()
        [[4, 2, 7], [3, 0, 0]]
    """
    if len(batch) == 0:
        raise ValueError(message("pad_items", "batch", "at least one item", Described("an empty batch")))
    rows = [row.tolist() if isinstance(row, Tensor) else row for row in batch]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    if bool((lengths == 0).any()):
        first = int(torch.nonzero(lengths == 0)[0, 0])
        rule = f"a non-empty item (encode an item with no known token as [{UNK_ID}], the unknown id, or drop it)"
        raise ValueError(message("pad_items", f"batch[{first}]", rule, rows[first]))
    flat = torch.tensor(list(itertools.chain.from_iterable(rows)))
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise TypeError(message("pad_items", "batch", "lists of integer token ids", Described(f"{flat.dtype} values")))
    if bool((flat < 0).any()):
        raise ValueError(message("pad_items", "batch", "token ids >= 0", int(flat.min())))
    mask = torch.arange(int(lengths.max())) < lengths[:, None]
    token_ids = torch.full(mask.shape, PAD_ID, dtype=torch.long)
    # the mask's True cells in row-major order are the items' tokens in batch order
    token_ids[mask] = flat.long()
    return PaddedItems(token_ids, mask)


def pad_labeled_items(batch: Sequence[tuple[Sequence[int] | Tensor, int | Tensor]]) -> tuple[PaddedItems, Tensor]:
    """Pad a batch of ``(token_ids, label)`` pairs: ``(PaddedItems(token_ids, mask), labels)``.

    The ``collate_fn`` for a data set of labelled encoded items; ``model(inputs)`` of a
    :class:`~dmlkit.training.SetEncoder` takes the first part as it is.

    Example:
        >>> inputs, labels = pad_labeled_items([([4, 2], 0), ([3], 1)])
        >>> inputs.token_ids.tolist(), labels.tolist()
        ([[4, 2], [3, 0]], [0, 1])
    """
    for i, pair in enumerate(batch):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            rule = "an (item, label) pair"
            raise TypeError(message("pad_labeled_items", f"batch[{i}]", rule, Described(type(pair).__name__)))
    inputs = pad_items([item for item, _ in batch])
    labels = torch.tensor([label.item() if isinstance(label, Tensor) else label for _, label in batch])
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(message("pad_labeled_items", "labels", "integers", Described(f"{labels.dtype} values")))
    return inputs, labels.long()
