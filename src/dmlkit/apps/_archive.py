"""One file per fitted model: a NumPy ``.npz`` archive (no pickled objects; zip checksums catch damaged bytes) with
a JSON header naming its format and version, written atomically."""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import CorruptFileError

__all__ = ["write_archive", "read_archive"]


def write_archive(
    path: str | os.PathLike[str], kind: str, version: int, header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> Path:
    """Write ``arrays`` and ``header`` (plus ``format: kind`` and ``version``) to ``path`` atomically.

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "m.npz"
        >>> _ = write_archive(file, "demo", 1, {"size": 2}, {"w": np.arange(2)})
        >>> header, arrays = read_archive(file, "demo", 1, "demo file")
        >>> header["size"], arrays["w"].tolist()
        (2, [0, 1])
    """
    full = {"format": kind, "version": version, **header}
    content = {**arrays, "header": np.frombuffer(json.dumps(full).encode("utf-8"), dtype=np.uint8)}
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **content)
    return atomic_write(path, lambda file: file.write(buffer.getbuffer()))


def read_archive(
    path: str | os.PathLike[str], kind: str, version: int, what: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a file written by :func:`write_archive` for ``kind`` at ``version``.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: a truncated or corrupt file, another kind of file (``what`` names the expected one), or
            another format version.
    """
    file = Path(path)
    data = file.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, KeyError) as exc:
        raise CorruptFileError(f"{file}: not a readable {what} ({exc}).") from None
    try:
        header = json.loads(bytes(arrays.pop("header")).decode("utf-8"))
        found_kind, found_version = header["format"], header["version"]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{file}: corrupt {what} ({type(exc).__name__}: {exc}).") from None
    if found_kind != kind:
        raise CorruptFileError(f"{file}: not a {what} (format {found_kind!r}).")
    if found_version != version:
        raise CorruptFileError(f"{file}: format version {found_version!r}, but this dmlkit reads version {version}.")
    return header, arrays
