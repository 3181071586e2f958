"""``dmlkit benchmark CONFIG [--out DIR] [--quick]``: the reality-check protocol as a command.

Runs :func:`~dmlkit.training.protocol.run_benchmark` (Musgrave, Belongie and Lim, 2020, "A Metric Learning
Reality Check", arXiv:2003.08505) on a benchmark configuration (``examples/benchmarks/*.yaml``) and prints
the markdown table of the results, which are also written to ``DIR/results.json`` and ``DIR/results.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_command"]

_NAME = "benchmark"


def add_command(subparsers: Any) -> None:
    """Add ``benchmark`` to the ``dmlkit`` command's sub-parsers.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="dmlkit")
        >>> add_command(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["benchmark", "config.yaml", "--quick"])
        >>> args.config, args.quick, args.out
        ('config.yaml', True, None)
    """
    p = subparsers.add_parser(
        _NAME,
        help="compare losses under the metric-learning reality-check protocol",
        description=(
            "Train every loss of CONFIG with the same network, batch, sampler and iteration budget on the first "
            "half of the classes, in class-disjoint cross-validation folds (hyperparameters fixed or searched "
            "with Optuna on validation MAP@R), and report MAP@R, R-precision and precision@1 on the unseen "
            "second half, per fold model and for the concatenated fold embeddings, with 95% confidence "
            "intervals (Musgrave, Belongie and Lim, 2020, arXiv:2003.08505). Entries with `library: pml` use "
            "pytorch-metric-learning's loss and miner as a control. Finished cells in DIR are reused."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="a benchmark configuration, .yaml/.yml or .json")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/benchmarks/<CONFIG name>)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 1 epoch of at most 20 iterations, at most 100 samples per class, the first seed, "
        "at most 2 search trials (default folder gets a -quick suffix)",
    )
    p.add_argument("--only", nargs="+", metavar="TEXT", help="run only the entries whose label contains TEXT")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (torch.set_num_threads)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run)


def _error(text: str) -> int:
    print(f"dmlkit {_NAME}: error: {text}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from ..errors import MissingDependencyError
    from .protocol import load_benchmark_config, load_protocol_data, quick_config, run_benchmark

    try:
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
        config = load_benchmark_config(args.config)
        if args.quick:
            config = quick_config(config)
        data = load_protocol_data(config)
    except KeyError as exc:
        return _error(str(exc.args[0]) if exc.args else "unknown key")
    except (OSError, ValueError, TypeError, MissingDependencyError) as exc:
        return _error(str(exc))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    stem = Path(args.config).stem + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out is not None else Path("runs") / "benchmarks" / stem
    command = "dmlkit benchmark " + " ".join(shlex.quote(a) for a in _argv(args))
    try:
        run_benchmark(config, out, data=data, only=args.only, progress=not args.quiet, quick=args.quick,
                      command=command)
    except (ValueError, MissingDependencyError) as exc:
        return _error(str(exc))
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"Results: {out / 'results.md'} and {out / 'results.json'}")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command's arguments as given (for the report), without the output folder."""
    parts = [args.config]
    if args.quick:
        parts.append("--quick")
    if args.only:
        parts += ["--only", *args.only]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    return parts
