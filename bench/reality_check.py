"""The reality-check protocol on MNIST and Fashion-MNIST, dmlkit's losses beside PML's, as one benchmark.

Runs ``dmlkit benchmark CONFIG --threads 1 --out runs/benchmarks/<name>`` for each configuration (Musgrave,
Belongie and Lim, 2020, "A Metric Learning Reality Check", arXiv:2003.08505; see docs/reality_check.md) and
gathers their ``results.json`` into one raw file. Finished cells in an output folder are reused, so a second
run only re-aggregates them.

Usage::

    python bench/reality_check.py [--configs examples/benchmarks/mnist.yaml ...] [--quick] [--json raw.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["examples/benchmarks/mnist.yaml", "examples/benchmarks/fashion_mnist.yaml"]


def run_protocol(config: str, out: Path, threads: int, quick: bool) -> dict[str, Any]:
    """Run ``dmlkit benchmark`` on ``config`` in a subprocess and return its ``results.json``."""
    command = [sys.executable, "-m", "dmlkit", "benchmark", config, "--threads", str(threads), "--out", str(out),
               "--quiet"]
    if quick:
        command.append("--quick")
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    results["out"] = str(out)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="benchmark configurations (default: %(default)s)")
    parser.add_argument("--out-root", default=None, help="each run goes to OUT_ROOT/<config name> (default: "
                        "runs/benchmarks; with --quick and --json, a folder beside the JSON file)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default: 1)")
    parser.add_argument("--quick", action="store_true", help="the protocol's smoke-test budget")
    parser.add_argument("--json", default=None, help="write the gathered results here")
    args = parser.parse_args(argv)
    if args.out_root is not None:
        root = Path(args.out_root)
    elif args.quick and args.json:
        root = Path(args.json).resolve().parent / "reality_check_runs"
    else:
        root = Path("runs/benchmarks")
    runs = []
    for config in args.configs:
        stem = Path(config).stem + ("-quick" if args.quick else "")
        out = root / stem if root.is_absolute() else ROOT / root / stem
        runs.append(run_protocol(config, out, args.threads, args.quick))
        print(f"{config}: {out / 'results.md'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
