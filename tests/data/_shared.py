"""The read-only real data sets: ``$DMLKIT_DATA`` when set, else ``shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("DMLKIT_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def shared_folder(name: str) -> Path:
    """The real data set ``name``, or skip the test with the path that is missing."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"the real data set {name!r} is not in {folder} (set DMLKIT_DATA to its parent folder)")
    return folder
