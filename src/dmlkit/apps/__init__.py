"""Applications built on embeddings (layer 6): topic discovery and learned dimensionality reduction.

The classes are imported on first use, so ``import dmlkit.apps`` costs nothing beyond the package itself; their
optional dependencies (gensim, umap-learn, faiss) are imported only by the code paths that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TopicDiscovery", "TLDR"]

_LAZY = {"TopicDiscovery": ".topics", "TLDR": ".tldr"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
