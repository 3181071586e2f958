"""Exceptions raised by dmlkit, beyond the built-in ValueError / TypeError / KeyError."""

from __future__ import annotations

__all__ = ["MissingDependencyError", "NotFittedError", "CorruptFileError"]


class MissingDependencyError(ImportError):
    """An optional dependency is needed for the requested feature but is not installed.

    The message names the ``pip install`` command that fixes it.
    """

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the optional package `{package}`, which is not installed. "
            f'Install it with: pip install "dmlkit[{extra}]"'
        )
        self.package = package
        self.extra = extra


class NotFittedError(RuntimeError):
    """A method that needs fitted state was called before ``fit``."""


class CorruptFileError(ValueError):
    """A data or dmlkit file is truncated, corrupt, or of an unknown format version."""
