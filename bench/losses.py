"""Forward+backward time and peak extra memory of losses (and loss+miner pairs), dmlkit vs PML.

Usage: ``python bench/losses.py [--sizes 256 1024 4096] [--threads 2] [--out table.md] [--json rows.json]``.
Each (case, library, batch size) runs in its own subprocess so peak memory is measured cleanly.
Inputs: embedding dim 128, 4 samples per class, float32, fixed seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench import _harness as harness  # noqa: E402
from bench.cases import all_cases  # noqa: E402

DIM = 128
PER_CLASS = 4


def _lib(name: str) -> Any:
    return harness.library(name, ("distances", "losses", "miners", "reducers"))


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    batch = case["batch"]
    embeddings = torch.randn(batch, DIM, requires_grad=True)
    labels = torch.arange(batch // PER_CLASS).repeat_interleave(PER_CLASS)
    build = all_cases()[case["name"]]

    def step_on(x: torch.Tensor, y: torch.Tensor, loss_fn: Any, miner: Any) -> Callable[[], None]:
        def step() -> None:
            indices = miner(x, y) if miner is not None else None
            loss_fn(x, y, indices).backward()
            x.grad = None

        return step

    # a first call on a small batch (fresh instances) pays the one-time costs: kernels, thread pools
    small = torch.randn(harness.WARMUP_BATCH, DIM, requires_grad=True)
    small_labels = torch.arange(harness.WARMUP_BATCH // PER_CLASS).repeat_interleave(PER_CLASS)
    step_on(small, small_labels, *build(_lib(case["lib"])))()
    return harness.measure(step_on(embeddings, labels, *build(_lib(case["lib"]))), repeats=case.get("repeats", 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    harness.add_table_arguments(parser)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_one(json.loads(args.case))))
        return
    torch.set_num_threads(args.threads)
    names = [n for n in all_cases() if args.only is None or any(part in n for part in args.only)]
    lines = [
        f"Machine: {harness.machine_line()}. Embedding dim {DIM}, {PER_CLASS} samples per class, float32.",
        "",
        "| case | batch | dmlkit (time / peak extra) | PML (time / peak extra) | speed-up | memory ratio |",
        "|---|---|---|---|---|---|",
    ]
    speedups: dict[int, list[float]] = {size: [] for size in args.sizes}
    rows: list[dict[str, Any]] = []
    for name in names:
        for size in args.sizes:
            results = harness.run_both("bench.losses", {"name": name, "batch": size, "threads": args.threads}, args)
            ours, pml = results["dmlkit"], results["pml"]
            rows.append({"name": name, "batch": size, "threads": args.threads, "dmlkit": ours, "pml": pml})
            if "error" not in ours and "error" not in pml:
                speedups[size].append(pml["seconds"] / ours["seconds"])
            speed, memory = harness.ratio(pml, ours, "seconds"), harness.ratio(pml, ours, "peak_extra_mib")
            row = f"| {name} | {size} | {harness.fmt_cell(ours)} | {harness.fmt_cell(pml)} | {speed} | {memory} |"
            print(row, flush=True)
            lines.append(row)
    harness.finish_table(lines, speedups, args.out)
    harness.write_json(args.json, rows)


if __name__ == "__main__":
    main()
