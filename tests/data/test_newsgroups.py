from __future__ import annotations

import collections
import io
import tarfile
from pathlib import Path

import pytest

from dmlkit.data import NEWSGROUPS, load_20newsgroups, parse_post
from dmlkit.errors import CorruptFileError

from ._shared import shared_folder


def _write_archive(root: Path, posts: dict[str, bytes]) -> None:
    folder = root / "20newsgroups"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "20news-bydate.tar.gz", "w:gz") as archive:
        for name, data in posts.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_parse_post_splits_header_and_strips_reply_prefixes() -> None:
    raw = "From: x@y\nSubject: Re: re: Fwd: Engine noise\nLines: 3\n\nBody line.\n\nSecond paragraph.\n"
    subject, body = parse_post(raw)
    assert subject == "Engine noise"
    assert body == "Body line.\n\nSecond paragraph.\n"


def test_parse_post_without_subject_or_body() -> None:
    assert parse_post("From: x@y\nLines: 1") == ("", "")


def test_parse_post_removes_quotes_and_signature() -> None:
    body = "In article <1@a>, bob@b writes:\n> quoted text\n| more quoted\nMy own words here and some more text.\n"
    raw = "Subject: hi\n\n" + body + "\n-- \nBob\n"
    _, plain = parse_post(raw)
    assert "> quoted text" in plain and "Bob" in plain
    _, cleaned = parse_post(raw, remove_quotes=True, remove_signature=True)
    assert cleaned == "My own words here and some more text.\n\n"


def test_synthetic_archive_order_labels_and_latin1(tmp_path: Path) -> None:
    _write_archive(
        tmp_path,
        {
            "20news-bydate-train/sci.space/200": b"Subject: Re: Orbit\n\nB\n",
            "20news-bydate-train/sci.space/30": b"Subject: Moon\n\nA caf\xe9\n",
            "20news-bydate-train/alt.atheism/5": b"Subject: God\n\nC\n",
            "20news-bydate-test/alt.atheism/7": b"Subject: Test only\n\nD\n",
            "20news-bydate-train/not.a.group/1": b"Subject: skipped\n\nE\n",
        },
    )
    corpus = load_20newsgroups(tmp_path, "train")
    assert corpus.subjects == ["God", "Moon", "Orbit"]
    assert corpus.labels == [
        NEWSGROUPS.index("alt.atheism"),
        NEWSGROUPS.index("sci.space"),
        NEWSGROUPS.index("sci.space"),
    ]
    assert corpus.texts[1] == "A café\n"
    assert corpus.ids == ["5", "30", "200"]
    assert len(load_20newsgroups(tmp_path, "test")) == 1


def test_missing_archive_says_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"20newsgroups/20news-bydate\.tar\.gz.*DMLKIT_DATA"):
        load_20newsgroups(tmp_path)


def test_corrupt_archive(tmp_path: Path) -> None:
    (tmp_path / "20newsgroups").mkdir()
    (tmp_path / "20newsgroups" / "20news-bydate.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CorruptFileError, match="Cannot read the 20 Newsgroups archive"):
        load_20newsgroups(tmp_path)


def test_archive_without_the_split(tmp_path: Path) -> None:
    _write_archive(tmp_path, {"20news-bydate-train/sci.space/1": b"Subject: a\n\nb\n"})
    with pytest.raises(CorruptFileError, match="holds no post under 20news-bydate-test"):
        load_20newsgroups(tmp_path, "test")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`split` must be one of 'train', 'test'"):
        load_20newsgroups(tmp_path, "validation")


def test_real_archive_counts() -> None:
    folder = shared_folder("20newsgroups")
    root = folder.parent
    train = load_20newsgroups(root, "train")
    test = load_20newsgroups(root, "test")
    assert (len(train), len(test)) == (11314, 7532)
    counts = collections.Counter(train.labels)
    assert counts[NEWSGROUPS.index("alt.atheism")] == 480
    assert counts[NEWSGROUPS.index("talk.religion.misc")] == 377
    assert collections.Counter(test.labels)[NEWSGROUPS.index("comp.graphics")] == 389
    assert sum(1 for s in train.subjects if s) > 11000
    assert not any(s.lower().startswith("re:") for s in train.subjects)
