"""20 Newsgroups, "bydate" version, read from its archive: posts, newsgroup labels and subject lines.

The archive ``20news-bydate.tar.gz`` holds ``20news-bydate-train/<group>/<id>`` and
``20news-bydate-test/<group>/<id>``: 11,314 training and 7,532 test posts from 20 newsgroups, split by date
(Lang, 1995, "NewsWeeder: learning to filter netnews"; the "bydate" split by Rennie). Each post is an e-mail-like
message: header lines (``From:``, ``Subject:`` ...), a blank line, then the body. Bytes are decoded as latin-1,
which never fails.

Labels are the index of the newsgroup in :data:`NEWSGROUPS` (alphabetical order), the same in both splits.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tarfile
import zlib
from pathlib import Path

from .._validation import check_choice
from ..errors import CorruptFileError
from .idx import Split
from .root import DATA_ENV_VAR, resolve_data_root

__all__ = ["NEWSGROUPS", "NEWSGROUPS_ARCHIVE", "NewsgroupsCorpus", "load_20newsgroups", "parse_post"]

#: the 20 newsgroups, in label order.
NEWSGROUPS: tuple[str, ...] = (
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
)

#: the archive's path under the data folder.
NEWSGROUPS_ARCHIVE = Path("20newsgroups") / "20news-bydate.tar.gz"

_SPLIT_FOLDERS = {Split.TRAIN: "20news-bydate-train", Split.TEST: "20news-bydate-test"}
_REPLY_PREFIX = re.compile(r"^\s*((re|fwd?)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_QUOTE_LINE = re.compile(r"(^\s*[>|:])|(\b(writes|wrote|says|said)\s*:\s*$)|(^in article\b)", re.IGNORECASE)
_SIGNATURE = re.compile(r"\n--\s*\n")


@dataclasses.dataclass(frozen=True)
class NewsgroupsCorpus:
    """One split of 20 Newsgroups: parallel lists of posts.

    Attributes:
        texts: the post bodies (the headers removed, and quotes/signatures when asked).
        subjects: the ``Subject:`` header of each post with any ``Re:``/``Fwd:`` prefixes stripped ("" if none).
        labels: the newsgroup index of each post (into :data:`NEWSGROUPS`).
        groups: :data:`NEWSGROUPS`, for reading labels as names.
        ids: the post's file name in the archive (its article number).
    """

    texts: list[str]
    subjects: list[str]
    labels: list[int]
    groups: tuple[str, ...]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def parse_post(raw: str, *, remove_quotes: bool = False, remove_signature: bool = False) -> tuple[str, str]:
    """Split one raw post into ``(subject, body)``.

    The header ends at the first blank line. The subject loses leading ``Re:``/``Fwd:`` prefixes (repeated ones
    too) and surrounding spaces. ``remove_quotes`` drops quoted lines (starting with ``>``, ``|`` or ``:``) and
    attribution lines ("... writes:", "In article ..."); ``remove_signature`` drops everything after the last
    ``--`` separator line when it is in the last quarter of the body.

    Example:
        >>> parse_post("From: a@b\\nSubject: Re: RE: Fast cars\\n\\nI like them.\\n")
        ('Fast cars', 'I like them.\\n')
    """
    header, sep, body = raw.partition("\n\n")
    if not sep:
        header, body = raw, ""
    subject = ""
    for line in header.splitlines():
        if line.lower().startswith("subject:"):
            subject = _REPLY_PREFIX.sub("", line[len("subject:") :]).strip()
            break
    if remove_quotes:
        body = "\n".join(line for line in body.split("\n") if not _QUOTE_LINE.search(line))
    if remove_signature:
        matches = list(_SIGNATURE.finditer(body))
        if matches and matches[-1].start() >= 0.75 * len(body):
            body = body[: matches[-1].start()] + "\n"
    return subject, body


def load_20newsgroups(
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    remove_quotes: bool = False,
    remove_signature: bool = False,
) -> NewsgroupsCorpus:
    """Read one split of 20 Newsgroups from ``<root>/20newsgroups/20news-bydate.tar.gz``.

    Posts come in a fixed order: by newsgroup, then by article number.

    Args:
        root: the data folder (None: :func:`~dmlkit.data.resolve_data_root`).
        split: ``"train"`` (11,314 posts) or ``"test"`` (7,532).
        remove_quotes: drop quoted lines and attributions from the bodies (see :func:`parse_post`).
        remove_signature: drop trailing signatures from the bodies.

    Raises:
        FileNotFoundError: the archive is not there (says where it looked and how to point elsewhere).
        CorruptFileError: the archive cannot be read, or holds no post of the split.
        ValueError: an unknown split.
    """
    part = check_choice("load_20newsgroups", "split", split, Split)
    path = resolve_data_root(root) / NEWSGROUPS_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(
            f"20 Newsgroups archive not found at {str(path)!r}. Put 20news-bydate.tar.gz in "
            f"<data folder>/20newsgroups/, and pass root= or set ${DATA_ENV_VAR} to the data folder."
        )
    folder = _SPLIT_FOLDERS[part]
    group_index = {name: i for i, name in enumerate(NEWSGROUPS)}
    found: list[tuple[int, int, str, str]] = []
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = member.name.split("/")
                if len(parts) != 3 or parts[0] != folder or parts[1] not in group_index:
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                raw = handle.read().decode("latin-1")
                found.append((group_index[parts[1]], _article_number(parts[2]), parts[2], raw))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise CorruptFileError(f"Cannot read the 20 Newsgroups archive {str(path)!r}: {error}.") from error
    if not found:
        raise CorruptFileError(f"The archive {str(path)!r} holds no post under {folder}/<newsgroup>/.")
    found.sort(key=lambda item: (item[0], item[1], item[2]))
    texts, subjects, labels, ids = [], [], [], []
    for label, _, name, raw in found:
        subject, body = parse_post(raw, remove_quotes=remove_quotes, remove_signature=remove_signature)
        texts.append(body)
        subjects.append(subject)
        labels.append(label)
        ids.append(name)
    return NewsgroupsCorpus(texts=texts, subjects=subjects, labels=labels, groups=NEWSGROUPS, ids=ids)


def _article_number(name: str) -> int:
    return int(name) if name.isdigit() else -1
