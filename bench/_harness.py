"""Side-by-side timing and peak-memory measurement, each case in a fresh subprocess.

Every case is measured after its inputs are built and after one forward+backward on a small batch of
``WARMUP_BATCH`` samples (which pays the one-time costs, such as kernel and thread-pool set-up).

- Peak extra memory (``peak_extra_mib``) is the highest amount of tensor memory allocated during one
  forward+backward and held at the same time, summed from the torch profiler's allocation events. It counts
  every tensor either library creates, and is exactly repeatable: the same code gives the same number in every
  run, on a loaded machine too.
- ``rss_extra_mib`` is the growth of the process's resident-set high-water mark (``ru_maxrss``) during the
  first forward+backward. It also counts what the C allocator keeps and buffers outside torch's allocator,
  and moves by up to tens of MiB between runs of identical code, so it is kept in the raw results only.
- Time is the median of the later, unprofiled forward+backward passes: at least ``repeats`` of them and, for
  short calls, as many as fill ``MIN_TIMED_S`` (within the case's time budget).
- Calls shorter than ``SHORT_CALL_S`` are measured in ``SHORT_CALL_ROUNDS`` rounds of fresh processes, the two
  libraries alternating, and each library keeps its fastest round: at a few milliseconds per call, one process
  can run a few percent slower than the next for the whole of its life (where its memory landed, which core
  it got), a larger spread than the difference being measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: samples of the warm-up call made before a case is measured
WARMUP_BATCH = 64
#: seconds of timed calls a case gets at least (short calls are repeated until they fill it)
MIN_TIMED_S = 1.0
#: calls faster than this are measured in several rounds of processes
SHORT_CALL_S = 0.05
#: process rounds for short calls
SHORT_CALL_ROUNDS = 3


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tensor_peak_mib(step: Callable[[], Any]) -> float:
    """The peak of tensor memory allocated while ``step`` runs and held at once, from the profiler's events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    changes = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak / 2**20


def measure(step: Callable[[], Any], repeats: int = 5, budget_s: float = 20.0) -> dict[str, float]:
    """Run ``step`` once for the resident-set growth, once under the profiler for the tensor-memory peak, then
    for time: ``repeats`` times, or more until the timed calls fill ``MIN_TIMED_S``, stopping at ``budget_s``."""
    before = max_rss_mib()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    rss = max_rss_mib() - before
    peak = tensor_peak_mib(step)
    times = [first]
    timed_total = 0.0
    begin = time.perf_counter()
    while len(times) <= repeats or timed_total < MIN_TIMED_S:
        if time.perf_counter() - begin > budget_s:
            break
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        timed_total += times[-1]
    timed = times[1:] or times
    return {"seconds": statistics.median(timed), "peak_extra_mib": peak, "rss_extra_mib": rss}


def _limit_memory(gib: float) -> Callable[[], None]:
    def apply() -> None:
        limit = int(gib * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_case_in_subprocess(
    module: str, case: dict[str, Any], timeout_s: float = 300.0, memory_limit_gib: float = 10.0
) -> dict[str, Any]:
    """Run ``python -m <module> --case '<json>'`` and parse its JSON result (errors are reported, not raised).

    The child's address space is capped at ``memory_limit_gib`` so a case that would need more fails with
    an out-of-memory error instead of taking the machine down.
    """
    cmd = [sys.executable, "-m", module, "--case", json.dumps(case)]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, preexec_fn=_limit_memory(memory_limit_gib)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout_s:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()
        reason = tail[-1] if tail else f"exit {out.returncode}"
        if out.returncode < 0 or any(word in reason for word in ("MemoryError", "DefaultCPUAllocator", "memory")):
            reason = "out of memory: " + reason[-120:]
        return {"error": reason[-200:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_line() -> str:
    import pytorch_metric_learning

    import dmlkit

    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, dmlkit {dmlkit.__version__}, PML {pytorch_metric_learning.__version__}, "
        f"Python {platform.python_version()}"
    )


def fmt_cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return "fails"
    return f"{result['seconds'] * 1000:.1f} ms / {fmt_mib(result['peak_extra_mib'])}"


def fmt_mib(mib: float) -> str:
    """MiB with one decimal below 10 MiB (where the exact tensor peaks of small cases differ), else whole."""
    return f"{mib:.1f} MiB" if mib < 10 else f"{mib:.0f} MiB"


def ratio(pml: dict[str, Any], ours: dict[str, Any], key: str) -> str:
    if "error" in ours:
        return "-"
    if "error" in pml:
        return "PML fails"
    if ours[key] <= 0:
        return "inf"
    return f"{pml[key] / ours[key]:.2f}x"


def library(name: str, subpackages: Sequence[str]) -> Any:
    """``dmlkit`` when ``name`` is ``"dmlkit"``, else pytorch-metric-learning, with ``subpackages`` imported."""
    root = "dmlkit" if name == "dmlkit" else "pytorch_metric_learning"
    for sub in subpackages:
        importlib.import_module(f"{root}.{sub}")
    return importlib.import_module(root)


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every side-by-side table script takes (``--case`` is the subprocess entry point)."""
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run cases whose name contains one of these")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--json", default=None, help="also write the raw results (a JSON list of rows) here")
    parser.add_argument("--memory-limit-gib", type=float, default=10.0, help="address-space cap per case")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per case")


def add_raw_result_arguments(parser: argparse.ArgumentParser, plot_help: str) -> None:
    """The options of the scripts that wait for a quiet machine and keep their raw results (JSON) for a rerun of
    the table and plot without measuring."""
    parser.add_argument("--max-load", type=float, default=float("inf"), help="wait for a lower 1-minute load")
    parser.add_argument("--wait", type=float, default=600.0, help="longest wait for the load, in seconds")
    parser.add_argument("--json", default=None, help="write (or with --from-json, read) the raw results here")
    parser.add_argument("--from-json", default=None, help="skip measuring: table and plot from these results")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--plot", default=None, help=plot_help)


def raw_results(args: argparse.Namespace, measure_all: Callable[[argparse.Namespace], Any]) -> Any:
    """The results read from ``--from-json``, or measured (and written to ``--json`` when given)."""
    if args.from_json:
        with open(args.from_json) as fh:
            return json.load(fh)
    results = measure_all(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


def run_both(module: str, case: dict[str, Any], args: argparse.Namespace, pml: bool = True) -> dict[str, Any]:
    """``{"dmlkit": result, "pml": result}`` for ``case`` run by ``python -m module`` (``pml=False``: PML lacks it).

    When every call measured is shorter than ``SHORT_CALL_S``, further rounds of processes run (the libraries
    alternating) and each library keeps its fastest round; ``rounds`` in a result says how many it had.
    """
    libs = ("dmlkit", "pml") if pml else ("dmlkit",)
    results: dict[str, Any] = {"pml": {"error": "not in PML"}}
    for round_number in range(SHORT_CALL_ROUNDS):
        for lib in libs:
            result = run_case_in_subprocess(
                module, {**case, "lib": lib}, timeout_s=args.timeout, memory_limit_gib=args.memory_limit_gib
            )
            kept = results.get(lib) if round_number else None  # an earlier round (never an error: it stops them)
            if kept is None or ("error" not in result and result["seconds"] < kept["seconds"]):
                kept = result
            results[lib] = kept if "error" in kept else {**kept, "rounds": round_number + 1}
        if any("error" in results[lib] or results[lib]["seconds"] >= SHORT_CALL_S for lib in libs):
            break
    return results


def write_json(path: str | None, rows: list[dict[str, Any]]) -> None:
    """Write the raw result rows as JSON to ``path`` (nothing when None)."""
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=1)


def finish_table(lines: list[str], speedups: dict[int, list[float]], out: str | None) -> None:
    """Append each batch size's geometric-mean speed-up, print the table and write it to ``out`` if given."""
    lines.append("")
    for size, values in speedups.items():
        if values:
            geo = math.exp(sum(math.log(v) for v in values) / len(values))
            lines.append(f"- batch {size}: geometric-mean speed-up {geo:.2f}x over {len(values)} cases")
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")
