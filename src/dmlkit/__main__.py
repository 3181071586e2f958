"""``python -m dmlkit``: the same command line as ``dmlkit``."""

from __future__ import annotations

from dmlkit.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
