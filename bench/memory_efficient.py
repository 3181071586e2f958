"""Peak extra memory and time of forward+backward versus batch size: dense dmlkit, tiled dmlkit and PML.

Usage::

    python bench/memory_efficient.py [--sizes 4096 16384 65536] [--losses NTXentLoss SupConLoss ...] \\
        [--threads 2] [--max-load 1.5] [--json results.json] [--out table.md] [--plot docs/memory_efficient.png]
    python bench/memory_efficient.py --from-json results.json --plot docs/memory_efficient.png

Each (loss, mode, batch size) runs in its own subprocess (``bench/_harness.py``): peak extra memory is the peak
of tensor memory held during one forward+backward (from the profiler's allocation events); time is the median of
the passes after the first (one pass at the largest sizes). Inputs: embedding dim 128, 4 samples per class,
float32, fixed seed. Modes: ``dense`` is dmlkit with ``chunk_size=0``, ``tiled`` dmlkit with ``chunk_size=1024``
(the automatic block), ``pml`` pytorch-metric-learning. The machine may be shared: before each case the script
waits (up to ``--wait`` seconds) for the 1-minute load average to fall below ``--max-load`` and records the load it
ran at.
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

from bench import _harness as harness  # noqa: E402

DIM = 128
PER_CLASS = 4
BLOCK = 1024
MODES = ("dense", "tiled", "pml")
#: the loss classes (same name and arguments in both libraries) and their arguments
LOSSES: dict[str, dict[str, Any]] = {
    "NTXentLoss": {"temperature": 0.1},
    "SupConLoss": {"temperature": 0.1},
    "MultiSimilarityLoss": {},
    "ContrastiveLoss": {},
    "CircleLoss": {},
    "TripletMarginLoss": {"margin": 0.1},
}
REQUIRED = ["NTXentLoss", "SupConLoss", "MultiSimilarityLoss"]


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    """One (loss, mode, batch) measurement, in this process."""
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    batch = case["batch"]
    embeddings = torch.randn(batch, DIM, requires_grad=True)
    labels = torch.arange(batch // PER_CLASS).repeat_interleave(PER_CLASS)
    kwargs = dict(LOSSES[case["loss"]])
    if case["mode"] == "pml":
        lib = harness.library("pml", ("losses",))
    else:
        lib = harness.library("dmlkit", ("losses",))
        kwargs["chunk_size"] = 0 if case["mode"] == "dense" else BLOCK
    loss_fn = getattr(lib.losses, case["loss"])(**kwargs)

    def step() -> None:
        loss_fn(embeddings, labels).backward()
        embeddings.grad = None

    return harness.measure(step, repeats=case.get("repeats", 5), budget_s=case.get("budget_s", 20.0))


def wait_for_quiet(max_load: float, wait_s: float) -> float:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``wait_s`` seconds); return it."""
    deadline = time.monotonic() + wait_s
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(10)
        load = os.getloadavg()[0]
    return load


def measure_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for loss in args.losses:
        for size in args.sizes:
            for mode in args.modes:
                load = wait_for_quiet(args.max_load, args.wait)
                large = size >= 32768
                case = {
                    "loss": loss,
                    "mode": mode,
                    "batch": size,
                    "threads": args.threads,
                    "repeats": 1 if large else 5,
                    "budget_s": 0.0 if large else 20.0,
                }
                out = harness.run_case_in_subprocess(
                    "bench.memory_efficient", case, timeout_s=args.timeout, memory_limit_gib=args.memory_limit_gib
                )
                row = {**case, **out, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
                print(json.dumps(row), flush=True)
                results.append(row)
    return results


def table(results: list[dict[str, Any]], threads: int) -> str:
    lines = [
        f"Machine: {harness.machine_line()}. Embedding dim {DIM}, {PER_CLASS} samples per class, float32, "
        f"{threads} threads; tiled block {BLOCK}.",
        "",
        "| loss | batch | dense dmlkit (time / peak extra) | tiled dmlkit | PML | tiled / dense time | load (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in results:
        cells.setdefault((row["loss"], row["batch"]), {})[row["mode"]] = row
    for (loss, size), modes in cells.items():
        dense, tiled, pml = (modes.get(m, {"error": "not run"}) for m in MODES)
        ratio = "-"
        if "error" not in dense and "error" not in tiled:
            ratio = f"{tiled['seconds'] / dense['seconds']:.2f}x"
        loads = ", ".join(f"{modes[m]['load_before']:.1f}" for m in MODES if m in modes)
        row = [loss, str(size), *(_cell(m) for m in (dense, tiled, pml)), ratio, loads]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return "fails (out of memory)" if "memory" in result["error"] else f"fails ({result['error'][:40]})"
    seconds = result["seconds"]
    time_text = f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
    return f"{time_text} / {harness.fmt_mib(result['peak_extra_mib'])}"


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"dense": "-o", "tiled": "-s", "pml": "--^"}
    colors = dict(zip(LOSSES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for loss in dict.fromkeys(row["loss"] for row in results):
        for mode in MODES:
            rows = sorted(
                (r for r in results if r["loss"] == loss and r["mode"] == mode and "error" not in r),
                key=lambda r: r["batch"],
            )
            if not rows:
                continue
            sizes = [r["batch"] for r in rows]
            label = f"{loss} {mode}"
            ax_mem.plot(
                sizes, [max(r["peak_extra_mib"], 1) for r in rows], styles[mode], color=colors[loss], label=label
            )
            ax_time.plot(sizes, [r["seconds"] for r in rows], styles[mode], color=colors[loss], label=label)
    for ax, title, unit in ((ax_mem, "Peak extra memory", "MiB"), (ax_time, "Forward + backward time", "s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.axhline(4096, color="grey", linestyle=":", linewidth=1)
    ax_mem.text(4096, 4096 * 1.1, "4 GiB", color="grey", fontsize=8)
    handles, labels = ax_time.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("dmlkit dense (o) vs tiled (s) vs pytorch-metric-learning (^); missing points ran out of memory")
    fig.tight_layout(rect=(0, 0.16, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--losses", nargs="+", default=REQUIRED, choices=list(LOSSES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit-gib", type=float, default=10.0, help="address-space cap per case")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    harness.add_raw_result_arguments(parser, "write the memory and time plot (PNG) here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_one(json.loads(args.case))))
        return
    results = harness.raw_results(args, measure_all)
    text = table(results, args.threads)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
