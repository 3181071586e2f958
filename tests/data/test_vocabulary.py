"""Vocabulary: tokenisation, building, encoding, JSON files; pad_items / pad_labeled_items as collate functions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from dmlkit.data import PAD_ID, UNK_ID, PaddedItems, Vocabulary, pad_items, pad_labeled_items
from dmlkit.data.vocabulary import tokenize
from dmlkit.errors import CorruptFileError

ITEMS = ["Fast cars", "fast bikes!", "Slow cars", "cars, cars"]


# ------------------------------------------------------------------------------------------------ tokenize


def test_tokenize_splits_strings_into_words_and_keeps_tags_whole() -> None:
    assert tokenize("Re: SCSI-2 vs. IDE (again)?") == ["re", "scsi", "2", "vs", "ide", "again"]
    assert tokenize("Über Café", lowercase=True) == ["über", "café"]
    assert tokenize("MiXed Case", lowercase=False) == ["MiXed", "Case"]
    assert tokenize(["New York", "C++"]) == ["new york", "c++"]
    assert tokenize(("A", "b"), lowercase=False) == ["A", "b"]
    assert tokenize("") == [] and tokenize("?! ...") == [] and tokenize([]) == []


@pytest.mark.parametrize(
    ("item", "match"),
    [
        (3, r"tokenize: `item` must be a string or a sequence of string tags, got int\."),
        (b"bytes", r"tokenize: `item` must be a string or a sequence of string tags, got bytes\."),
        (["ok", 5], r"tokenize: `item\[1\]` must be a string tag, got int\."),
    ],
)
def test_tokenize_rejects_other_types(item: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        tokenize(item)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------- build


def test_build_orders_by_count_then_alphabetically_after_the_reserved_ids() -> None:
    vocabulary = Vocabulary.build(ITEMS)
    # cars 4, fast 2, bikes 1, slow 1
    assert vocabulary.tokens == ["<pad>", "<unk>", "cars", "fast", "bikes", "slow"]
    assert len(vocabulary) == 6 and PAD_ID == 0 and UNK_ID == 1
    assert "cars" in vocabulary and "<pad>" not in vocabulary and "boats" not in vocabulary


def test_build_does_not_depend_on_the_order_of_the_items() -> None:
    assert Vocabulary.build(ITEMS) == Vocabulary.build(list(reversed(ITEMS)))


def test_build_min_count_and_max_size() -> None:
    assert Vocabulary.build(ITEMS, min_count=2).tokens == ["<pad>", "<unk>", "cars", "fast"]
    assert Vocabulary.build(ITEMS, max_size=3).tokens == ["<pad>", "<unk>", "cars"]
    assert Vocabulary.build(ITEMS, max_size=2).tokens == ["<pad>", "<unk>"]
    assert len(Vocabulary.build(ITEMS, max_size=100)) == 6


def test_build_without_lowercase_keeps_case_and_tags_are_tokens() -> None:
    vocabulary = Vocabulary.build(["Apple apple", ["Green Apple", "apple"]], lowercase=False)
    assert vocabulary.tokens == ["<pad>", "<unk>", "apple", "Apple", "Green Apple"]
    assert vocabulary.encode("APPLE apple") == [UNK_ID, 2]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_count": 0}, ValueError, r"Vocabulary.build: `min_count` must be an integer >= 1, got 0\."),
        ({"max_size": 1}, ValueError, r"Vocabulary.build: `max_size` must be an integer >= 2, got 1\."),
        ({"min_count": 1.5}, TypeError, r"Vocabulary.build: `min_count` must be an integer, got 1.5\."),
        ({"lowercase": "yes"}, TypeError, r"Vocabulary.build: `lowercase` must be a bool, got str\."),
    ],
)
def test_build_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Vocabulary.build(ITEMS, **kwargs)  # type: ignore[arg-type]


def test_constructor_rejects_repeated_and_non_string_tokens() -> None:
    with pytest.raises(ValueError, match=r"Vocabulary: `tokens` must be distinct, got repeated tokens \['a'\]\."):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(TypeError, match=r"Vocabulary: `tokens\[1\]` must be a string, got int\."):
        Vocabulary(["a", 1])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------------- encode


def test_encode_known_unknown_and_empty_items() -> None:
    vocabulary = Vocabulary.build(ITEMS)
    assert vocabulary.encode("slow fast CARS") == [5, 3, 2]
    assert vocabulary.encode("boats and planes") == [UNK_ID, UNK_ID, UNK_ID]
    assert vocabulary.encode(["cars", "boats"]) == [2, UNK_ID]
    assert vocabulary.encode("") == [] and vocabulary.encode("!?") == []
    assert vocabulary.encode_many(["cars", "bikes"]) == [[2], [4]]


def test_decode_inverts_encode_for_known_tokens() -> None:
    vocabulary = Vocabulary.build(ITEMS)
    ids = vocabulary.encode("slow cars and fast bikes")
    assert vocabulary.decode(ids) == ["slow", "cars", "<unk>", "fast", "bikes"]
    assert vocabulary.decode(torch.tensor(ids)) == vocabulary.decode(ids)
    with pytest.raises(IndexError, match=r"Vocabulary.decode: `ids` must be integers in \[0, 6\), got 6\."):
        vocabulary.decode([6])


# -------------------------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocabulary = Vocabulary.build(["Café crème", ["Tag One", "ünïcode"], "x y z x"], lowercase=False, min_count=1)
    file = vocabulary.save(tmp_path / "vocabulary.json")
    loaded = Vocabulary.load(file)
    assert loaded == vocabulary
    assert loaded.tokens == vocabulary.tokens and loaded.lowercase is False
    assert loaded.encode("Café x Tag") == vocabulary.encode("Café x Tag")
    assert os.listdir(tmp_path) == ["vocabulary.json"]  # no temporary file left behind
    assert json.loads(file.read_text(encoding="utf-8"))["format_version"] == 1


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    file = tmp_path / "v.json"
    Vocabulary(["a"]).save(file)
    Vocabulary(["b", "c"]).save(file)
    assert Vocabulary.load(file).tokens == ["<pad>", "<unk>", "b", "c"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", r"not a readable JSON vocabulary"),
        (b"\xff\xfe", r"not a readable JSON vocabulary"),
        (b'{"tokens": ["a"]}', r"not a dmlkit vocabulary"),
        (b'{"format": "dmlkit.vocabulary", "format_version": 99, "tokens": [], "lowercase": true}', r"version 99"),
        (b'{"format": "dmlkit.vocabulary", "format_version": 1, "tokens": [1], "lowercase": true}', r"corrupt"),
        (b'{"format": "dmlkit.vocabulary", "format_version": 1, "tokens": ["a", "a"], "lowercase": true}', "distinct"),
        (b'{"format": "dmlkit.vocabulary", "format_version": 1, "tokens": ["a"]}', r"'lowercase' a bool"),
    ],
)
def test_load_rejects_corrupt_files(tmp_path: Path, content: bytes, match: str) -> None:
    file = tmp_path / "bad.json"
    file.write_bytes(content)
    with pytest.raises(CorruptFileError, match=match):
        Vocabulary.load(file)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Vocabulary.load: the file .*missing.json' does not exist\."):
        Vocabulary.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ padding


def test_pad_items_pads_with_zero_and_masks_the_real_tokens() -> None:
    token_ids, mask = pad_items([[5, 2, 7], [3], [4, 4]])
    assert token_ids.dtype == torch.long and mask.dtype == torch.bool
    assert token_ids.tolist() == [[5, 2, 7], [3, 0, 0], [4, 4, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert isinstance(pad_items([[1]]), PaddedItems)


def test_pad_items_accepts_tensors_and_keeps_a_real_zero_id_masked_in() -> None:
    padded = pad_items([torch.tensor([3, 0]), torch.tensor([9])])
    assert padded.token_ids.tolist() == [[3, 0], [9, 0]]
    assert padded.mask.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ([], ValueError, r"pad_items: `batch` must be at least one item, got an empty batch\."),
        ([[3], [], [4]], ValueError, r"pad_items: `batch\[1\]` must be a non-empty item .*\[1\].*, got \[\]\."),
        ([[3], [-2]], ValueError, r"pad_items: `batch` must be token ids >= 0, got -2\."),
        ([[3.5]], TypeError, r"pad_items: `batch` must be lists of integer token ids, got torch.float32 values\."),
    ],
)
def test_pad_items_rejects_bad_batches(batch: list[list[float]], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        pad_items(batch)


def test_pad_labeled_items_as_a_dataloader_collate_fn() -> None:
    data = [([2, 3], 0), ([4], 1), ([5, 6, 7], 1), ([3], 0), ([2, 2], 2)]
    loader = DataLoader(data, batch_size=3, shuffle=False, collate_fn=pad_labeled_items)
    batches = list(loader)
    assert len(batches) == 2
    (inputs, labels), (last_inputs, last_labels) = batches
    assert inputs.token_ids.tolist() == [[2, 3, 0], [4, 0, 0], [5, 6, 7]]
    assert inputs.mask.sum(1).tolist() == [2, 1, 3]
    assert labels.tolist() == [0, 1, 1] and labels.dtype == torch.long
    assert last_inputs.token_ids.tolist() == [[3, 0], [2, 2]] and last_labels.tolist() == [0, 2]
    unlabeled = list(DataLoader([d[0] for d in data], batch_size=5, collate_fn=pad_items))
    assert torch.equal(unlabeled[0].token_ids[:3, :3], inputs.token_ids)


def test_pad_labeled_items_rejects_bad_pairs_and_labels() -> None:
    with pytest.raises(TypeError, match=r"pad_labeled_items: `batch\[1\]` must be an \(item, label\) pair, got int\."):
        pad_labeled_items([([2], 0), 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"pad_labeled_items: `labels` must be integers, got torch.float32 values\."):
        pad_labeled_items([([2], 0.5)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"`batch\[0\]` must be a non-empty item"):
        pad_labeled_items([([], 0)])
