"""The ``dmlkit`` command: the training, evaluation and index commands plus those of the applications.

Each module of :data:`COMMAND_MODULES` has an ``add_command(subparsers)`` function that adds one sub-command
whose parser sets ``handler``; modules are imported when the parser is built, so they import their heavy
dependencies inside the handler.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from .training.cli import CommandAdder
from .training.cli import main as _training_main

__all__ = ["COMMAND_MODULES", "main"]

#: modules adding one sub-command each (beyond ``train``, ``embed``, ``eval`` and ``index``).
COMMAND_MODULES: tuple[str, ...] = (
    "dmlkit.training.benchmark_cli",
    "dmlkit.apps.topics_cli",
    "dmlkit.apps.tldr_cli",
)


def _extra_commands() -> list[CommandAdder]:
    return [importlib.import_module(name).add_command for name in COMMAND_MODULES]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dmlkit`` command; return the exit status."""
    return _training_main(argv, _extra_commands())
