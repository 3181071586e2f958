"""The ``dmlkit`` command line: ``dmlkit train [CONFIG] [--set key=value ...] [--out DIR] [--name NAME] [--quiet]``.

Without a configuration file, ``dmlkit train`` runs the embedded default (:class:`~dmlkit.training.TrainConfig`):
a small MLP trained with a triplet loss plus an instance-discrimination term on the digits 0-4 of scikit-learn,
evaluated on the unseen digits 5-9 (and, for reference, the raw pixels on the same retrieval task).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, MissingDependencyError
from .config import TrainConfig

__all__ = ["build_parser", "load_config_file", "main"]

_PROG = "dmlkit"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dmlkit`` command."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Deep metric learning for PyTorch.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train",
        help="train an embedding model and report retrieval on unseen classes",
        description=(
            "Train an embedding model, report precision@1, R-precision and MAP@R on the unseen test classes "
            "before and after training, and write config.json, metrics.json and checkpoint.pt to a run folder. "
            "Without CONFIG the built-in default runs: digits 0-4 for training, 5-9 for testing."
        ),
    )
    train.add_argument("config", nargs="?", metavar="CONFIG", help="a .json (or .yaml/.yml) configuration file")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set loss.margin=0.2 --set epochs=5 (repeatable)",
    )
    train.add_argument("--out", metavar="DIR", help="parent folder of the run folder (default: runs)")
    train.add_argument("--name", metavar="NAME", help="run folder name (default: the current time)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def load_config_file(path: str | Path) -> TrainConfig:
    """Read a configuration from ``.json``, or ``.yaml``/``.yml`` when PyYAML is installed.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: the file cannot be parsed.
        MissingDependencyError: a YAML file without PyYAML.
        KeyError, TypeError, ValueError: invalid configuration contents.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"{file}: a configuration file must end in .json, .yaml or .yml.")
    text = file.read_text(encoding="utf-8")
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{file}: invalid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise MissingDependencyError("pyyaml", "yaml", "Reading YAML configurations") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CorruptFileError(f"{file}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{file}: a configuration must be a mapping of keys to values.")
    return TrainConfig.from_dict(data)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dmlkit`` command; return the exit status (2 for invalid arguments or configuration)."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover - argparse rejects others


def _error(text: str) -> int:
    print(f"{_PROG} train: error: {text}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    try:
        config = TrainConfig() if args.config is None else load_config_file(args.config)
        extra = [f"out_dir={json.dumps(args.out)}"] if args.out is not None else []
        extra += [f"run_name={json.dumps(args.name)}"] if args.name is not None else []
        config = config.apply_overrides([*args.overrides, *extra])
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else "unknown key")
    except (OSError, ValueError, TypeError, MissingDependencyError) as exc:
        return _error(str(exc))

    from .loop import train
    from .report import format_raw_input, format_report
    from .run_folder import create_run_folder, save_run

    if not args.quiet:
        data = config.data
        print(
            f"Training on {data.name} classes {_classes(data.train_classes)}; "
            f"testing on the unseen classes {_classes(data.test_classes)}."
        )
    result = train(config, progress=not args.quiet)
    folder = create_run_folder(config.out_dir, config.run_name)
    save_run(folder, config, result)
    title = (
        f"Retrieval on the unseen classes {_classes(config.data.test_classes)} "
        f"({result.num_test} samples; {result.seconds:.1f} s):"
    )
    print(format_report(result.before, result.after, title=title))
    print(format_raw_input(result.raw_input))
    print(f"Run folder: {folder}")
    return 0


def _classes(classes: Sequence[int]) -> str:
    return ", ".join(str(c) for c in classes)
