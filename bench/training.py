"""Training throughput: iterations per second of dmlkit's Trainer and of pytorch-metric-learning's MetricLossOnly.

Usage: ``python bench/training.py [--sizes 128 256] [--iterations 60] [--threads 2] [--only Triplet]
[--max-load 1.5] [--json results.json] [--out table.md] [--plot training.png]``.

Every (case, mode, batch size) runs in its own subprocess (``bench/_harness.py``). The model, data, loss and
miner are the same in every mode: an MLP (784 -> 512 -> 128) on Gaussian inputs of 784 features drawn from
256 classes (20 samples each), 4 samples per class per batch (each library's ``MPerClassSampler``), Adam, no data-loader
workers, float32. Modes:

- ``dmlkit``: dmlkit's ``Trainer`` with dmlkit's loss, miner and sampler;
- ``pml``: pytorch-metric-learning's ``MetricLossOnly`` with its own loss, miner and sampler;
- ``pml-trainer``: pytorch-metric-learning's ``MetricLossOnly`` with dmlkit's loss, miner and sampler (the
  trainers' own overhead, the loss being equal).

An ``end_of_iteration_hook`` time-stamps every iteration; iterations/s is measured over the iterations after
the first ``--warmup`` ones. The machine may be shared: before each run the script waits (up to ``--wait``
seconds) for the 1-minute load average to fall below ``--max-load`` and records the load it ran at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench import _harness as harness  # noqa: E402
from bench.memory_efficient import wait_for_quiet  # noqa: E402

FEATURES = 784
EMBEDDING = 128
CLASSES = 256
PER_CLASS_IN_DATA = 20
M = 4
MODES = ("dmlkit", "pml", "pml-trainer")
LEGEND = {"dmlkit": "dmlkit Trainer", "pml": "PML MetricLossOnly", "pml-trainer": "PML MetricLossOnly + dmlkit loss"}

#: case name -> factory(lib) -> (loss, miner or None); ``lib`` has ``.losses`` and ``.miners``.
CASES: dict[str, Callable[[Any], tuple[Any, Any]]] = {
    "ContrastiveLoss": lambda lib: (lib.losses.ContrastiveLoss(), None),
    "TripletMarginLoss + TripletMarginMiner(semihard)": lambda lib: (
        lib.losses.TripletMarginLoss(margin=0.1),
        lib.miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"),
    ),
    "MultiSimilarityLoss + MultiSimilarityMiner": lambda lib: (
        lib.losses.MultiSimilarityLoss(),
        lib.miners.MultiSimilarityMiner(),
    ),
    "NTXentLoss": lambda lib: (lib.losses.NTXentLoss(temperature=0.07), None),
    "ProxyAnchorLoss": lambda lib: (lib.losses.ProxyAnchorLoss(CLASSES, EMBEDDING), None),
}


def _data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS_IN_DATA)
    centres = torch.randn(CLASSES, FEATURES, generator=g)
    features = centres[labels] + torch.randn(len(labels), FEATURES, generator=g)
    return torch.utils.data.TensorDataset(features, labels)


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    """One (case, mode, batch) measurement, in this process."""
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    mode, batch = case["mode"], case["batch"]
    component_lib = harness.library("pml" if mode == "pml" else "dmlkit", ("losses", "miners", "samplers"))
    loss, miner = CASES[case["name"]](component_lib)
    dataset = _data()
    labels = dataset.tensors[1]
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 512), torch.nn.ReLU(), torch.nn.Linear(512, EMBEDDING))
    optimizers = {"trunk_optimizer": torch.optim.Adam(model.parameters(), lr=1e-4)}
    if list(loss.parameters()):
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(loss.parameters(), lr=1e-2)
    total = case["warmup"] + case["iterations"]
    sampler_kwargs: dict[str, Any] = {"m": M, "batch_size": batch, "length_before_new_iter": total * batch}
    if mode != "pml":
        sampler_kwargs["seed"] = 0
    sampler = component_lib.samplers.MPerClassSampler(labels, **sampler_kwargs)
    stamps: list[float] = []

    def hook(trainer: Any) -> None:
        stamps.append(time.perf_counter())

    kwargs: dict[str, Any] = {
        "models": {"trunk": model},
        "optimizers": optimizers,
        "batch_size": batch,
        "loss_funcs": {"metric_loss": loss},
        "dataset": dataset,
        "mining_funcs": {} if miner is None else {"tuple_miner": miner},
        "iterations_per_epoch": total,
        "data_device": torch.device("cpu"),
        "sampler": sampler,
        "dataloader_num_workers": 0,
        "end_of_iteration_hook": hook,
    }
    if mode == "dmlkit":
        from dmlkit.training import Trainer

        trainer: Any = Trainer(**kwargs, progress=False)
    else:
        from pytorch_metric_learning.trainers import MetricLossOnly

        trainer = MetricLossOnly(**kwargs)
    start = time.perf_counter()
    trainer.train(num_epochs=1)
    wall = time.perf_counter() - start
    timed = stamps[case["warmup"] :]
    if len(timed) < 2:
        raise RuntimeError(f"only {len(stamps)} iterations ran")
    seconds = timed[-1] - stamps[case["warmup"] - 1] if case["warmup"] else timed[-1] - start
    return {
        "iterations": len(timed),
        "seconds": seconds,
        "iterations_per_second": len(timed) / seconds,
        "wall_seconds": wall,
    }


def measure_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = [n for n in CASES if args.only is None or any(part in n for part in args.only)]
    rows = []
    for name in names:
        for size in args.sizes:
            for mode in args.modes:
                case = {
                    "name": name,
                    "mode": mode,
                    "batch": size,
                    "threads": args.threads,
                    "iterations": args.iterations,
                    "warmup": args.warmup,
                }
                load = wait_for_quiet(args.max_load, args.wait)
                out = harness.run_case_in_subprocess(
                    "bench.training", case, timeout_s=args.timeout, memory_limit_gib=args.memory_limit_gib
                )
                row = {**case, **out, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    if "error" in row:
        return f"fails ({row['error'][:40]})"
    return f"{row['iterations_per_second']:.1f} it/s"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: one line per (case, batch), one column per mode, and dmlkit's speed-up over PML."""
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["name"], row["batch"]), {})[row["mode"]] = row
    lines = [
        "| case | batch | dmlkit Trainer | PML MetricLossOnly | PML MetricLossOnly + dmlkit loss | "
        "speed-up over PML | trainer speed-up (same loss) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, size), modes in cells.items():
        ours, pml, mixed = (modes.get(m) for m in MODES)
        lines.append(
            f"| {name} | {size} | {_cell(ours)} | {_cell(pml)} | {_cell(mixed)} | "
            f"{_speedup(ours, pml)} | {_speedup(ours, mixed)} | {_loads(modes)} |"
        )
    return "\n".join(lines)


def _loads(modes: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{modes[m]['load_before']:.1f}" for m in MODES if m in modes and "load_before" in modes[m])


def _speedup(ours: dict[str, Any] | None, other: dict[str, Any] | None) -> str:
    if ours is None or other is None or "error" in ours:
        return "-"
    if "error" in other:
        return "PML fails"
    return f"{ours['iterations_per_second'] / other['iterations_per_second']:.2f}x"


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Iterations per second of each mode, one group of bars per (case, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["name"], r["batch"]) for r in rows))
    width = 0.8 / len(MODES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.5))
    for i, mode in enumerate(MODES):
        values = []
        for name, size in groups:
            found = [r for r in rows if r["name"] == name and r["batch"] == size and r["mode"] == mode]
            values.append(found[0]["iterations_per_second"] if found and "error" not in found[0] else 0.0)
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=LEGEND[mode])
    ax.set_xticks([g + width * (len(MODES) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{name}\nbatch {size}" for name, size in groups], fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("iterations / s")
    ax.set_title("Training throughput (higher is better)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run cases whose name contains one of these")
    parser.add_argument("--memory-limit-gib", type=float, default=8.0, help="address-space cap per case")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    harness.add_raw_result_arguments(parser, "write a bar chart (PNG) here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_one(json.loads(args.case))))
        return
    rows = harness.raw_results(args, measure_all)
    text = f"Machine: {harness.machine_line()}.\n\n" + table(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
