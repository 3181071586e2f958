"""The single-file container of a saved index: versioned, checksummed, written atomically.

Layout (all integers little-endian)::

    magic      8 bytes   b"DMLKIDX\\n"
    version    uint32    FORMAT_VERSION
    header     uint64    length of the JSON header in bytes
    payload    uint64    length of the payload in bytes
    JSON header          {"kind", ..., "sections": [{"name", "offset", "length"}, ...]}
    payload              the sections' bytes, back to back
    SHA-256    32 bytes  digest of the JSON header and the payload

The version is read before anything else, so a file from another format version is reported as such
rather than as corrupt. Nothing is unpickled: the header is JSON and the sections are raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._atomic import atomic_write
from ..errors import CorruptFileError

__all__ = ["FORMAT_VERSION", "MAGIC", "write_container", "read_container", "atomic_write_chunks"]

MAGIC = b"DMLKIDX\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQQ")
_DIGEST_SIZE = hashlib.sha256().digest_size

Buffer = bytes | bytearray | memoryview


def _write_chunks(file: IO[bytes], chunks: Iterable[Buffer]) -> None:
    """Write every chunk to ``file`` in order."""
    for chunk in chunks:
        file.write(chunk)


def atomic_write_chunks(path: str | os.PathLike[str], chunks: Iterable[Buffer]) -> Path:
    """Write ``chunks`` to a temporary file beside ``path``, flush it to disk, then move it onto ``path``.

    A failure at any point removes the temporary file and leaves an existing ``path`` untouched: readers
    see either the old file or the complete new one, never a mixture.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> _ = atomic_write_chunks(os.path.join(folder, "x.bin"), [b"ab", b"cd"])
        >>> open(os.path.join(folder, "x.bin"), "rb").read()
        b'abcd'
    """
    return atomic_write(path, lambda file: _write_chunks(file, chunks))


def _byte_view(data: Any) -> memoryview:
    """A flat byte view of bytes-like ``data`` (a numpy array is viewed in its own byte order)."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
    view = memoryview(data)
    return view.cast("B") if view.nbytes else memoryview(b"")


def write_container(path: str | os.PathLike[str], header: Mapping[str, Any], sections: Mapping[str, Any]) -> Path:
    """Atomically write ``header`` (JSON-serialisable) and the named ``sections`` (bytes-like: bytes, contiguous
    numpy arrays) to ``path``.

    Example:
        >>> import tempfile, os
        >>> file = os.path.join(tempfile.mkdtemp(), "a.index")
        >>> _ = write_container(file, {"kind": "demo"}, {"values": b"\\x01\\x02"})
        >>> header, sections = read_container(file, "demo")
        >>> bytes(sections["values"])
        b'\\x01\\x02'
    """
    views = {name: _byte_view(data) for name, data in sections.items()}
    layout, offset = [], 0
    for name, view in views.items():
        layout.append({"name": name, "offset": offset, "length": view.nbytes})
        offset += view.nbytes
    header_bytes = json.dumps({**header, "sections": layout}, sort_keys=True).encode("utf-8")
    digest = hashlib.sha256(header_bytes)
    for view in views.values():
        digest.update(view)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes), offset)
    return atomic_write_chunks(path, [prefix, header_bytes, *views.values(), digest.digest()])


def read_container(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, memoryview]]:
    """Read a file written by :func:`write_container`; ``kind`` is the ``header["kind"]`` expected.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: wrong magic, another format version, truncated, trailing bytes, checksum
            mismatch, unreadable header, or a file of another kind. The message names the file.
    """
    file = Path(path)
    data = file.read_bytes()
    if len(data) < _PREFIX.size:
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise CorruptFileError(f"{file}: not a dmlkit index file (unknown magic bytes).")
        raise CorruptFileError(f"{file}: truncated ({len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix).")
    magic, version, header_len, payload_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError(f"{file}: not a dmlkit index file (unknown magic bytes {magic!r}).")
    if version != FORMAT_VERSION:
        raise CorruptFileError(
            f"{file}: format version {version} is not supported (this dmlkit reads version {FORMAT_VERSION})."
        )
    expected = _PREFIX.size + header_len + payload_len + _DIGEST_SIZE
    if len(data) < expected:
        raise CorruptFileError(f"{file}: truncated ({len(data)} bytes, expected {expected}).")
    if len(data) > expected:
        raise CorruptFileError(f"{file}: corrupt ({len(data) - expected} unexpected bytes after the end).")
    view = memoryview(data)
    body = view[_PREFIX.size : expected - _DIGEST_SIZE]
    if hashlib.sha256(body).digest() != bytes(view[expected - _DIGEST_SIZE :]):
        raise CorruptFileError(f"{file}: corrupt (SHA-256 checksum mismatch).")
    try:
        header = json.loads(bytes(body[:header_len]).decode("utf-8"))
        payload = body[header_len:]
        sections = {s["name"]: payload[s["offset"] : s["offset"] + s["length"]] for s in header["sections"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{file}: corrupt header ({exc}).") from None
    if header.get("kind") != kind:
        raise CorruptFileError(f"{file}: holds a {header.get('kind')!r}, not a {kind!r}.")
    return header, sections
