"""Where data sets live on disk when no folder is given.

Loaders that read files (:func:`~dmlkit.data.load_mnist`, :func:`~dmlkit.data.load_sts_benchmark` ...) take a
``root`` folder. When it is omitted, the folder is, in order:

1. the environment variable ``DMLKIT_DATA``, when it is set and not empty;
2. ``../shared/data`` relative to the current working directory (the layout of a checkout that keeps its data
   beside the repository, as the test suite does).

Nothing is ever downloaded: the files must already be there.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "resolve_data_root"]

#: the environment variable naming the default data folder.
DATA_ENV_VAR = "DMLKIT_DATA"

_FALLBACK = Path("..") / "shared" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``root`` when given, else ``$DMLKIT_DATA``, else ``../shared/data`` from the working directory.

    The folder is not required to exist; loaders report missing files with the paths they tried.

    Args:
        root: an explicit folder, or None for the default.

    Returns:
        The folder as a :class:`pathlib.Path` (``~`` expanded; relative paths stay relative).

    Example:
        >>> str(resolve_data_root("/data/sets"))
        '/data/sets'
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    return _FALLBACK
