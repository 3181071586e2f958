"""Forward+backward time and peak extra memory of losses (and loss+miner pairs), dmlkit vs PML.

Usage: ``python bench/losses.py [--sizes 256 1024 4096] [--threads 2] [--out docs/benchmarks.md]``.
Each (case, library, batch size) runs in its own subprocess so peak memory is measured cleanly.
Inputs: embedding dim 128, 4 samples per class, float32, fixed seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._harness import fmt_cell, machine_line, measure, ratio, run_case_in_subprocess  # noqa: E402
from bench.cases import all_cases  # noqa: E402

DIM = 128
PER_CLASS = 4


def _lib(name: str) -> Any:
    if name == "dmlkit":
        import dmlkit.distances
        import dmlkit.losses
        import dmlkit.miners
        import dmlkit.reducers

        return dmlkit
    import pytorch_metric_learning.distances
    import pytorch_metric_learning.losses
    import pytorch_metric_learning.miners
    import pytorch_metric_learning.reducers

    return pytorch_metric_learning


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    batch = case["batch"]
    embeddings = torch.randn(batch, DIM, requires_grad=True)
    labels = torch.arange(batch // PER_CLASS).repeat_interleave(PER_CLASS)
    loss_fn, miner = all_cases()[case["name"]](_lib(case["lib"]))

    def step() -> None:
        indices = miner(embeddings, labels) if miner is not None else None
        loss = loss_fn(embeddings, labels, indices)
        loss.backward()
        embeddings.grad = None

    return measure(step, repeats=case.get("repeats", 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run cases whose name contains one of these")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--memory-limit-gib", type=float, default=10.0, help="address-space cap per case")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_one(json.loads(args.case))))
        return
    torch.set_num_threads(args.threads)
    names = [n for n in all_cases() if args.only is None or any(part in n for part in args.only)]
    lines = [
        f"Machine: {machine_line()}. Embedding dim {DIM}, {PER_CLASS} samples per class, float32.",
        "",
        "| case | batch | dmlkit (time / peak extra) | PML (time / peak extra) | speed-up | memory ratio |",
        "|---|---|---|---|---|---|",
    ]
    speedups: dict[int, list[float]] = {size: [] for size in args.sizes}
    for name in names:
        for size in args.sizes:
            results = {}
            for lib in ("dmlkit", "pml"):
                results[lib] = run_case_in_subprocess(
                    "bench.losses",
                    {"name": name, "lib": lib, "batch": size, "threads": args.threads},
                    timeout_s=args.timeout,
                    memory_limit_gib=args.memory_limit_gib,
                )
            ours, pml = results["dmlkit"], results["pml"]
            if "error" not in ours and "error" not in pml:
                speedups[size].append(pml["seconds"] / ours["seconds"])
            row = (
                f"| {name} | {size} | {fmt_cell(ours)} | {fmt_cell(pml)} | {ratio(pml, ours, 'seconds')} | "
                f"{ratio(pml, ours, 'peak_extra_mib')} |"
            )
            print(row, flush=True)
            lines.append(row)
    lines.append("")
    for size, values in speedups.items():
        if values:
            geo = math.exp(sum(math.log(v) for v in values) / len(values))
            lines.append(f"- batch {size}: geometric-mean speed-up {geo:.2f}x over {len(values)} cases")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
