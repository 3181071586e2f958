"""Name -> class tables, one per family; used by the config system, the CLI and the contract tests."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from ._validation import close_matches_hint

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, type[T]], Generic[T]):
    """A read-only mapping from snake_case names (``"triplet_margin"``) to classes.

    Unknown names raise ``KeyError`` with close-match suggestions.

    Example:
        >>> r = Registry("loss", {"triplet_margin": int})
        >>> r["triplet_margin"]
        <class 'int'>
        >>> r["triplet_margn"]
        Traceback (most recent call last):
        ...
        KeyError: "Unknown loss 'triplet_margn'. Did you mean 'triplet_margin'? Known: triplet_margin."
    """

    def __init__(self, family: str, entries: Mapping[str, type[T]]) -> None:
        self.family = family
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            hint = close_matches_hint(name, self._entries)
            raise KeyError(
                f"Unknown {self.family} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def name_of(self, cls: type) -> str:
        """The registry key of ``cls``."""
        for key, value in self._entries.items():
            if value is cls:
                return key
        raise KeyError(f"{cls.__name__} is not a registered {self.family}.")
