"""Evaluation at scale: dmlkit's AccuracyCalculator vs pytorch-metric-learning's (with faiss), side by side.

Usage: ``python bench/evaluation.py [--sizes 10000 50000 100000] [--threads 2] [--out section.md] [--json raw.json]``.
Each (library, N, metric set) runs in its own subprocess (bench/_harness.py): wall time of one
``get_accuracy`` call and the growth of the resident-set high-water mark during it (inputs already built).
Data: 100 Gaussian classes in d = 128 (centres ~ N(0, 1), noise sigma 2), query = reference, float32,
``k="max_bin_count"`` for both libraries (pytorch-metric-learning's ``k=None`` would ask faiss for N - 1
neighbours per query). The compute floor is ``2 * N^2 * d`` FLOPs at the matrix-product speed measured in
the same way on the same machine. ``--projection`` also times dmlkit on the first queries of an N = ``--large-n``
set (default 1,000,000; all references searched) and extrapolates linearly in the number of queries;
``--million`` runs that set to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._harness import machine_line, max_rss_mib, run_case_in_subprocess  # noqa: E402

DIM = 128
CLASSES = 100
NOISE = 2.0
RETRIEVAL = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
ALL = (*RETRIEVAL, "mean_average_precision", "mean_reciprocal_rank", "NMI", "AMI")


def compute_floor_seconds(n: int, gflops: float) -> float:
    """The compute floor of an exact search with query = reference: ``2 * N^2 * d`` FLOPs at ``gflops``."""
    return 2 * n * n * DIM / (gflops * 1e9)


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    centres = torch.randn(CLASSES, DIM, generator=g)
    x = centres[labels]
    x.add_(torch.randn(n, DIM, generator=g), alpha=NOISE)
    return x, labels


def matmul_gflops() -> float:
    """Best speed of the search's block product, (256, d + 1) x (d + 1, 4096), in GFLOP/s."""
    a, b = torch.randn(256, DIM + 1), torch.randn(4096, DIM + 1)
    out = torch.empty(256, 4096)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(50):
            torch.mm(a, b.T, out=out)
        best = min(best, (time.perf_counter() - start) / 50)
    return 2 * 256 * 4096 * DIM / best / 1e9


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(case["threads"])
    try:
        import faiss
    except ImportError:
        pass
    else:  # faiss has its own OpenMP pool: give both libraries the same number of threads
        faiss.omp_set_num_threads(case["threads"])
    if case["lib"] == "matmul":
        return {"gflops": matmul_gflops()}
    x, labels = make_data(case["n"])
    include = RETRIEVAL if case["metrics"] == "retrieval" else ALL
    if case["lib"] == "dmlkit":
        # Like faiss above and scikit-learn's metrics in PML's module, the modules dmlkit loads on first use are
        # imported before the timed call: numba with the compiled tile pass, and scikit-learn's AMI.
        import sklearn.metrics  # noqa: F401

        from dmlkit.evaluation import AccuracyCalculator, self_search

        self_search.warm_up()

        calculator = AccuracyCalculator(include=include, k="max_bin_count")
    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator as PMLCalculator

        calculator = PMLCalculator(include=include, k="max_bin_count", device=torch.device("cpu"))
    queries = case.get("queries")
    if queries:  # projection: the first `queries` rows against every reference
        args: tuple = (x[:queries], labels[:queries], x, labels, True)
    else:
        args = (x, labels)
    before = max_rss_mib()
    start = time.perf_counter()
    values = calculator.get_accuracy(*args)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_extra_mib": max_rss_mib() - before, "values": values}


def _cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"fails ({result['error'][:40]})"
    return f"{result['seconds']:.1f} s / {result['peak_extra_mib']:.0f} MiB"


def _max_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    if "values" not in a or "values" not in b:
        return "-"
    return f"{max(abs(a['values'][k] - b['values'][k]) for k in a['values']):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 50000, 100000])
    parser.add_argument("--metrics", nargs="+", default=["retrieval", "all"], choices=["retrieval", "all"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--projection", action="store_true", help="time 2048 queries of N = --large-n")
    parser.add_argument("--million", action="store_true", help="run N = --large-n to the end (dmlkit; over an hour)")
    parser.add_argument("--large-n", type=int, default=1_000_000, help="N of --projection and --million")
    parser.add_argument("--out", default=None, help="append the markdown section to this file")
    parser.add_argument("--json", default=None, help="also write the raw results (JSON) here")
    parser.add_argument("--memory-limit-gib", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_one(json.loads(args.case))))
        return

    def run(case: dict[str, Any]) -> dict[str, Any]:
        case = {"threads": args.threads, **case}
        return run_case_in_subprocess("bench.evaluation", case, args.timeout, args.memory_limit_gib)

    gflops = run({"lib": "matmul"})["gflops"]
    lines = [
        f"Machine: {machine_line()}, load average before the run {os.getloadavg()[0]:.1f}. "
        f"Block product speed {gflops:.0f} GFLOP/s "
        f"((256 x {DIM + 1}) x ({DIM + 1} x 4096), float32). Data: {CLASSES} classes, d = {DIM}, query = reference, "
        'k = "max_bin_count" for both libraries.',
        "",
        "| metrics | N | dmlkit (time / peak extra) | PML + faiss (time / peak extra) | speed-up | memory ratio | "
        "max value difference | dmlkit / compute floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    values_lines = []
    raw: dict[str, Any] = {"threads": args.threads, "gflops": gflops, "rows": [], "projection": None}
    for metrics in args.metrics:
        for n in args.sizes:
            ours = run({"lib": "dmlkit", "n": n, "metrics": metrics})
            pml = run({"lib": "pml", "n": n, "metrics": metrics})
            raw["rows"].append({"metrics": metrics, "n": n, "dmlkit": ours, "pml": pml})
            floor = compute_floor_seconds(n, gflops)
            both = "error" not in ours and "error" not in pml
            speed = f"{pml['seconds'] / ours['seconds']:.2f}x" if both else "-"
            memory = f"{pml['peak_extra_mib'] / max(ours['peak_extra_mib'], 1):.2f}x" if both else "-"
            to_floor = f"{ours['seconds'] / floor:.1f}x" if "error" not in ours else "-"
            row = (
                f"| {metrics} | {n:,} | {_cell(ours)} | {_cell(pml)} | {speed} | {memory} | "
                f"{_max_difference(ours, pml)} | {to_floor} |"
            )
            print(row, flush=True)
            lines.append(row)
            if "values" in ours:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(ours["values"].items()))
                values_lines.append(f"- {metrics}, N = {n:,}: {shown}")
    lines += ["", "Values (dmlkit):", "", *values_lines]
    if args.projection:
        n, queries = args.large_n, min(2048, args.large_n)
        part = run({"lib": "dmlkit", "n": n, "metrics": "retrieval", "queries": queries})
        raw["projection"] = {"n": n, "queries": queries, **part}
        if "error" in part:
            lines += ["", f"N = {n:,} projection failed: {part['error']}"]
        else:
            projected = part["seconds"] * n / queries
            floor = compute_floor_seconds(n, gflops)
            lines += [
                "",
                f"N = {n:,} (retrieval metrics, exact): {queries} queries against all {n:,} references took "
                f"{part['seconds']:.1f} s with {part['peak_extra_mib']:.0f} MiB peak extra memory; every query does "
                f"the same work, so the full run projects to {projected / 60:.0f} min "
                f"({projected / floor:.1f}x the {floor / 60:.0f} min compute floor). Projection, not a measured run.",
            ]
    if args.million:
        n = args.large_n
        whole = run({"lib": "dmlkit", "n": n, "metrics": "retrieval"})
        raw["million"] = {"n": n, **whole}
        if "error" in whole:
            lines += ["", f"N = {n:,} run failed: {whole['error']}"]
        else:
            floor = compute_floor_seconds(n, gflops)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(whole["values"].items()))
            lines += [
                "",
                f"N = {n:,} (retrieval metrics, exact, query = reference), run to the end: "
                f"{whole['seconds'] / 60:.1f} min with {whole['peak_extra_mib']:.0f} MiB peak extra memory "
                f"({whole['seconds'] / floor:.1f}x the {floor / 60:.0f} min compute floor); {shown}.",
            ]
    text = "\n".join(lines)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
