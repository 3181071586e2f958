"""Run every side-by-side benchmark of ``bench/`` and regenerate ``docs/benchmarks.md`` with its tables and plots.

Usage::

    python bench/run_all.py                      # everything, full sizes (hours): docs/benchmarks.md + PNGs
    python bench/run_all.py --quick              # a smoke test with small sizes, written to a temporary folder
    python bench/run_all.py --only training      # one benchmark (repeatable); the others come from saved results
    python bench/run_all.py --from-raw DIR       # no measuring: rebuild the document from saved raw results

Each benchmark is its own script, run in a subprocess with ``--json`` (its raw results) saved in the raw folder
(``runs/bench-raw`` by default, beside a ``.meta.json`` with the command, the machine, the versions and the
time): ``losses.py`` at batch 256 and 1024, ``losses.py`` at batch 4096, ``class_losses.py``, ``evaluation.py``,
``memory_efficient.py`` and ``training.py``. The document is rebuilt from the raw folder: one section per
benchmark with the command, the machine (CPU model, cores, threads) and versions (Python, torch, dmlkit,
pytorch-metric-learning), the table, the summary lines and a PNG plot (``docs/benchmarks_<name>.png``).

``docs/benchmarks.md`` is written only by a full-size run whose raw folder holds every benchmark; ``--quick``
(and any run that leaves a section unmeasured) writes ``benchmarks.md`` and its plots to ``--out`` instead
(default: a temporary folder, printed at the end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _harness as harness  # noqa: E402
from bench import memory_efficient as memory_bench  # noqa: E402
from bench import training as training_bench  # noqa: E402
from bench.evaluation import DIM, compute_floor_seconds  # noqa: E402
from dmlkit._atomic import atomic_write  # noqa: E402
from dmlkit.training.protocol import environment_info  # noqa: E402

DOCS = ROOT / "docs"
RAW_FORMAT_VERSION = 2


@dataclass
class Benchmark:
    """One section of the document: the script, its full-size and quick arguments, and its renderer."""

    name: str
    script: str
    title: str
    full: list[str]
    quick: list[str]
    threads: int = 2
    render: Callable[[Benchmark, Any, dict[str, Any], Path, str], list[str]] = field(default=lambda *a: [])


# Rendering helpers ---------------------------------------------------------------------------------------------


_cell = harness.fmt_cell
_mib = harness.fmt_mib
_ratio = harness.ratio


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _machine(meta: dict[str, Any], threads: int) -> str:
    env = meta["environment"]
    return (
        f"Machine: {env['cpu']} ({env['cores']} cores), {threads} thread{'s' if threads != 1 else ''}; "
        f"Python {env['python']}, torch {env['torch']}, dmlkit {env['dmlkit']}, "
        f"pytorch-metric-learning {env['pytorch_metric_learning']}."
    )


def _head(bench: Benchmark, meta: dict[str, Any]) -> list[str]:
    """Title with the day, command, machine and versions; then the run's ``note`` (conditions of the run) if any."""
    day = meta["finished"][:10]
    lines = [f"## {bench.title} (measured on {day})", "", "```bash", meta["command"], "```", "",
             _machine(meta, _threads_of(meta, bench)), ""]
    return [*lines, meta["note"], ""] if meta.get("note") else lines


def _threads_of(meta: dict[str, Any], bench: Benchmark) -> int:
    args = meta["args"]
    return int(args[args.index("--threads") + 1]) if "--threads" in args else bench.threads


def _speedup_plot(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str], path: Path, title: str) -> None:
    """Horizontal bars of PML time / dmlkit time per case (log scale); PML failures drawn at the right edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(key(r) for r in rows))
    sizes = sorted({r["batch"] for r in rows})
    height = max(3.0, 0.22 * len(labels) * max(1, len(sizes)) + 1.5)
    fig, ax = plt.subplots(figsize=(9, height))
    bar = 0.8 / len(sizes)
    both = [r for r in rows if "error" not in r["dmlkit"] and "error" not in r["pml"]]
    finite = [r["pml"]["seconds"] / r["dmlkit"]["seconds"] for r in both]
    right = max([2.0, *finite]) * 2
    for j, size in enumerate(sizes):
        ys, values, colors = [], [], []
        for i, label in enumerate(labels):
            found = [r for r in rows if key(r) == label and r["batch"] == size]
            if not found or "error" in found[0]["dmlkit"] or found[0].get("in_pml") is False:
                continue
            row = found[0]
            failed = "error" in row["pml"]
            ys.append(i + j * bar)
            values.append(right if failed else row["pml"]["seconds"] / row["dmlkit"]["seconds"])
            colors.append("lightgrey" if failed else f"C{j}")
        ax.barh(ys, values, bar, color=colors, label=f"batch {size}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([i + bar * (len(sizes) - 1) / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of dmlkit over PML (PML time / dmlkit time; grey: PML fails)")
    ax.set_title(title)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _loss_summary(rows: list[dict[str, Any]], sizes: list[int], details: bool) -> list[str]:
    lines = []
    total = len({r["name"] for r in rows})
    for size in sizes:
        at = [r for r in rows if r["batch"] == size]
        both = [r for r in at if "error" not in r["dmlkit"] and "error" not in r["pml"]]
        fails = sum("error" in r["pml"] for r in at)
        ours_fail = sum("error" in r["dmlkit"] for r in at)
        if both:
            speed = _geomean([r["pml"]["seconds"] / r["dmlkit"]["seconds"] for r in both])
            cases = "case" if len(both) == 1 else "cases"
            text = f"- batch {size}: geometric-mean speed-up {speed:.2f}x over the {len(both)} {cases} both libraries "
            text += "run"
        else:
            text = f"- batch {size}: no case ran in both libraries"
        text += f"; PML fails {fails} of {total}"
        text += "; dmlkit runs every case." if not ours_fail else f"; dmlkit fails {ours_fail}."
        slower = [f"{r['name']} ({r['pml']['seconds'] / r['dmlkit']['seconds']:.2f}x)" for r in both
                  if r["pml"]["seconds"] < r["dmlkit"]["seconds"]]
        lines += [text, f"  Slower than PML: {'; '.join(slower) if slower else 'none'}."]
        if details:
            heavy = [f"{r['name']} ({_mib(r['dmlkit']['peak_extra_mib'])} vs {_mib(r['pml']['peak_extra_mib'])})"
                     for r in both if r["dmlkit"]["peak_extra_mib"] > 0.5 * r["pml"]["peak_extra_mib"]]
            slow = [f"{r['name']} ({r['dmlkit']['seconds'] * 1000:.0f} ms / {_mib(r['dmlkit']['peak_extra_mib'])})"
                    for r in at if "error" not in r["dmlkit"]
                    and (r["dmlkit"]["seconds"] > 2 or r["dmlkit"]["peak_extra_mib"] > 1024)]
            lines.append(f"- Peak extra memory above half of PML's: {'; '.join(heavy) if heavy else 'none'}.")
            lines.append(f"- Above 2 s or 1 GiB extra: {'; '.join(slow) if slow else 'none'}.")
    return lines


def render_losses(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    rows: list[dict[str, Any]] = raw
    sizes = sorted({r["batch"] for r in rows})
    lines = _head(bench, meta)
    lines += [
        "Embedding dim 128, 4 samples per class, float32.",
        "",
        "| case | batch | dmlkit (time / peak extra) | PML (time / peak extra) | speed-up | memory ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, pml = r["dmlkit"], r["pml"]
        lines.append(f"| {r['name']} | {r['batch']} | {_cell(ours)} | {_cell(pml)} | "
                     f"{_ratio(pml, ours, 'seconds')} | {_ratio(pml, ours, 'peak_extra_mib')} |")
    lines += ["", *_loss_summary(rows, sizes, details=bench.name == "losses_4096")]
    png = f"{stem}_{bench.name}.png"
    _speedup_plot(rows, lambda r: r["name"], out / png, f"{bench.title}: dmlkit vs PML")
    return [*lines, "", f"![{bench.title}: speed-up of dmlkit over PML per case]({png})", ""]


def render_class_losses(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    rows: list[dict[str, Any]] = raw
    lines = _head(bench, meta)
    lines += [
        "Embedding dim 128, labels uniform over the classes, float32; the gradient reaches the embeddings and the "
        "loss's own parameters.",
        "",
        "| case | classes | batch | dmlkit (time / peak extra) | PML (time / peak extra) | speed-up | memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    slower = []
    for r in rows:
        ours, pml = r["dmlkit"], r["pml"]
        if not r.get("in_pml", True):
            cells = [_cell(ours), "not in PML", "-", "-"]
        else:
            cells = [_cell(ours), _cell(pml), _ratio(pml, ours, "seconds"), _ratio(pml, ours, "peak_extra_mib")]
            if "error" not in ours and "error" not in pml and pml["seconds"] < ours["seconds"]:
                slower.append(f"{r['name']} ({r['classes']} classes, batch {r['batch']}: "
                              f"{pml['seconds'] / ours['seconds']:.2f}x)")
        lines.append(f"| {r['name']} | {r['classes']} | {r['batch']} | " + " | ".join(cells) + " |")
    both = [r for r in rows if r.get("in_pml", True) and "error" not in r["dmlkit"] and "error" not in r["pml"]]
    lines.append("")
    for size in sorted({r["batch"] for r in both}):
        values = [r["pml"]["seconds"] / r["dmlkit"]["seconds"] for r in both if r["batch"] == size]
        cases = "case" if len(values) == 1 else "cases"
        lines.append(f"- batch {size}: geometric-mean speed-up {_geomean(values):.2f}x over {len(values)} {cases}")
    lines.append(f"- Slower than PML: {'; '.join(slower) if slower else 'none'}.")
    png = f"{stem}_{bench.name}.png"
    _speedup_plot(rows, lambda r: f"{r['name']} ({r['classes']} classes)", out / png,
                  "Classification and proxy losses: dmlkit vs PML")
    return [*lines, "", f"![{bench.title}: speed-up of dmlkit over PML per case]({png})", ""]


def render_evaluation(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    gflops = raw["gflops"]
    lines = _head(bench, meta)
    lines += [
        "`AccuracyCalculator.get_accuracy` of dmlkit against pytorch-metric-learning's with faiss (its default "
        "`FaissKNN` / `FaissKMeans`), on the same data: 100 Gaussian classes in d = 128 (centres ~ N(0, 1), noise "
        'sigma 2), query = reference, float32, `k="max_bin_count"` for both (PML\'s default `k=None` asks faiss for '
        'N - 1 neighbours per query: 30 GB at N = 50,000). "retrieval" is precision@1, R-precision and MAP@R; "all" '
        "adds MAP, MRR, NMI and AMI. Each cell is one call in a fresh process, the two libraries' cases interleaved, "
        "with the same number of threads for torch and faiss, each library's modules imported before the call (faiss, "
        "scikit-learn's metrics, and for dmlkit numba with its compiled tile pass loaded): wall time and the rise "
        "of the resident-set high-water mark during the call. \"Max value difference\" is the largest difference "
        "between the two libraries' values over all metrics (float32 rounding of near-tied distances). The compute "
        f"floor is `2 * N^2 * d` FLOPs at the block-product speed measured on the same machine ({gflops:.0f} GFLOP/s).",
        "",
        "| metrics | N | dmlkit (time / peak extra) | PML + faiss (time / peak extra) | speed-up | memory ratio | "
        "max value difference | dmlkit / compute floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    values_lines = []
    for r in raw["rows"]:
        ours, pml, n = r["dmlkit"], r["pml"], r["n"]
        both = "error" not in ours and "error" not in pml
        floor = compute_floor_seconds(n, gflops)
        diff = "-"
        if both and "values" in ours and "values" in pml:
            diff = f"{max(abs(ours['values'][k] - pml['values'][k]) for k in ours['values']):.1e}"
        cells = [
            _eval_cell(ours), _eval_cell(pml),
            f"{pml['seconds'] / ours['seconds']:.2f}x" if both else "-",
            f"{pml['peak_extra_mib'] / max(ours['peak_extra_mib'], 1):.2f}x" if both else "-",
            diff,
            f"{ours['seconds'] / floor:.1f}x" if "error" not in ours else "-",
        ]
        lines.append(f"| {r['metrics']} | {n:,} | " + " | ".join(cells) + " |")
        if "values" in ours:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(ours["values"].items()))
            values_lines.append(f"- {r['metrics']}, N = {n:,}: {shown}")
    lines += ["", "Values (dmlkit):", "", *values_lines, "", *_evaluation_targets(raw["rows"], gflops)]
    projection = raw.get("projection")
    if projection:
        n, queries = projection["n"], projection["queries"]
        if "error" in projection:
            lines += ["", f"N = {n:,} projection failed: {projection['error']}"]
        else:
            projected = projection["seconds"] * n / queries
            floor = compute_floor_seconds(n, gflops)
            lines += [
                "",
                f"N = {n:,} (retrieval metrics, exact): {queries:,} queries against all {n:,} references took "
                f"{projection['seconds']:.1f} s with {projection['peak_extra_mib']:.0f} MiB peak extra memory; every "
                f"query does the same work, so the full run **projects** to {projected / 60:.0f} min "
                f"({projected / floor:.1f}x the {floor / 60:.0f} min compute floor). Projection, not a measured run.",
            ]
    png = f"{stem}_{bench.name}.png"
    _evaluation_plot(raw["rows"], out / png)
    return [*lines, "", f"![Evaluation time and memory versus N]({png})", ""]


EXACT_SEARCH = (
    "How the exact search works: both sides are shifted to a centre near the references' mean (distances unchanged, "
    "float32 keys precise for data far from the origin), and each row gets a bound on the key of its R-th "
    "neighbour from a fixed sample of the references. A set searched against itself (this table) computes each "
    "pair's key once: tiles of 256 x 1024 keys on and above the diagonal, one matrix product each, then one "
    "compiled pass (numba, `dmlkit[fast]`) that compares every key with its row's and its column's bound and "
    "appends the hits as (row, key, index) packed into one int64; once a band of 1024 rows has all its hits (its "
    "column-side hits came from earlier bands), one sort orders each row (ties go to the lower index by "
    "construction). The waiting column-side hits make the memory grow as N x R (used up to N x R = 2^28). Other "
    "searches (queries against separate references, the projection below, N x R beyond that) stream the "
    "references per block of 256 queries through the same compiled pass, row side only, with memory "
    "O(block size x N); without numba, torch filters each step (a subtract-clamp-cast to a bit mask, only the "
    "non-zero mask words kept). A row with fewer than R keys below its bound is redone without it."
)


def _evaluation_targets(rows: list[dict[str, Any]], gflops: float) -> list[str]:
    """The speed, memory and compute-floor targets at N >= 50,000, each stated as met or not with its numbers."""
    large = [r for r in rows if r["n"] >= 50_000 and "error" not in r["dmlkit"]]
    if not large:
        return []
    both = [r for r in large if "error" not in r["pml"]]
    lines = [EXACT_SEARCH, "", "Against the targets at N >= 50,000 (every row of the table at those sizes):", ""]
    if both:
        speed = [r["pml"]["seconds"] / r["dmlkit"]["seconds"] for r in both]
        memory = [r["pml"]["peak_extra_mib"] / max(r["dmlkit"]["peak_extra_mib"], 1) for r in both]
        lines.append(f"- speed >= 2x PML: {'met' if min(speed) >= 2 else 'not met'} "
                     f"({min(speed):.2f}x to {max(speed):.2f}x);")
        lines.append(f"- peak extra memory <= 1/2 of PML's: {'met' if min(memory) >= 2 else 'not met'} "
                     f"(1/{min(memory):.0f} to 1/{max(memory):.0f});")
    floors = [r["dmlkit"]["seconds"] / compute_floor_seconds(r["n"], gflops) for r in large]
    lines.append(f"- within 2x of the compute floor: {'met' if max(floors) <= 2 else 'not met'} "
                 f"({min(floors):.1f}x to {max(floors):.1f}x the floor).")
    return lines


def _eval_cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"fails ({result['error'][:40]})"
    return f"{result['seconds']:.1f} s / {result['peak_extra_mib']:.0f} MiB"


def _evaluation_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for metrics, style in (("retrieval", "-"), ("all", "--")):
        for lib, marker in (("dmlkit", "o"), ("pml", "^")):
            found = sorted((r for r in rows if r["metrics"] == metrics and "error" not in r[lib]), key=lambda r: r["n"])
            if not found:
                continue
            label = f"{'dmlkit' if lib == 'dmlkit' else 'PML + faiss'}, {metrics}"
            ns = [r["n"] for r in found]
            ax_time.plot(ns, [r[lib]["seconds"] for r in found], style + marker, label=label)
            ax_mem.plot(ns, [max(r[lib]["peak_extra_mib"], 1) for r in found], style + marker, label=label)
    for ax, title, unit in ((ax_time, "get_accuracy time", "s"), (ax_mem, "Peak extra memory", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (query = reference)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_evaluation_million(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    whole, gflops = raw.get("million"), raw["gflops"]
    lines = _head(bench, meta)
    if not whole:
        return [*lines, "The raw results hold no run to the end (`--million`).", ""]
    n = whole["n"]
    if "error" in whole:
        return [*lines, f"N = {n:,}: the run failed: {whole['error']}", ""]
    floor = compute_floor_seconds(n, gflops)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(whole["values"].items()))
    threads = _threads_of(meta, bench)
    return [
        *lines,
        f"dmlkit's exact `get_accuracy` (retrieval metrics, query = reference) on N = {n:,} of the evaluation "
        f"data (d = {DIM}), run to the end in one process: **{_duration(whole['seconds'])} with "
        f"{whole['peak_extra_mib']:,.0f} MiB peak extra memory** (the {n:,} x {DIM} float32 embeddings themselves, "
        f"{n * DIM * 4 / 1e6:,.0f} MB, are built before the call and not counted). The block product ran at "
        f"{gflops:.0f} GFLOP/s on {_count(threads, 'thread')}, so the compute floor "
        f"`2 * N^2 * d` is {_duration(floor)} and the run took {whole['seconds'] / floor:.1f}x the floor. "
        f"PML is not run at this size: with k = max_bin_count its neighbour table alone holds N x N/100 = "
        f"{n * (n // 100):.1e} entries.",
        "",
        f"Values: {shown}.",
        "",
        f"- Exact at N = {n:,} within 4 GiB extra memory: "
        f"{'met' if whole['peak_extra_mib'] <= 4096 else 'not met'} ({whole['peak_extra_mib']:,.0f} MiB).",
        f"- Within 2x of the compute floor: {'met' if whole['seconds'] <= 2 * floor else 'not met'} "
        f"({whole['seconds'] / floor:.1f}x).",
        "",
    ]


def render_reality_check(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    from dmlkit.training.protocol import control_pairs

    runs: list[dict[str, Any]] = raw["runs"]
    key = "mean_average_precision_at_r"
    config = runs[0]["config"]
    lines = _head(bench, meta)
    lines += [
        "`dmlkit benchmark` (the protocol of Musgrave et al., 2020; every fold, the concatenated-embedding scores, "
        "R-precision, precision@1 and per-cell timings are in each run's `results.md`, see "
        "[reality_check.md](reality_check.md)). Class-disjoint halves, "
        f"{config['folds']} class-disjoint folds, {_count(len(config['seeds']), 'seed')}, the same network "
        f"({config['model']['name']}, embedding {config['model']['embedding_size']}), batch "
        f"{config['sampler']['batch_size']} ({config['sampler']['m']} per class) and "
        f"{config['epochs'] * config['iterations_per_epoch']} iterations per fold for every loss, in dmlkit and with "
        "PML's class of the same name as a control. Separate-fold MAP@R (%, mean over seeds) on the unseen classes:",
        "",
    ]
    pairs_of = [control_pairs(run["entries"]) for run in runs]
    labels = list(dict.fromkeys(dm["label"] for pairs in pairs_of for dm, _ in pairs))
    shown = {dm["label"]: _entry_label(dm) for pairs in pairs_of for dm, _ in pairs}
    header = "| loss | " + " | ".join(f"{run['title']} dmlkit | {run['title']} PML" for run in runs) + " |"
    lines += [header, "|---|" + "---|---|" * len(runs)]
    for label in labels:
        cells = []
        for pairs in pairs_of:
            found = [(dm, pml) for dm, pml in pairs if dm["label"] == label]
            cells += ([f"{100 * e['separate'][key]['mean']:.1f}" for e in found[0]] if found else ["-", "-"])
        lines.append(f"| {shown[label]} | " + " | ".join(cells) + " |")
    untrained = [f"{100 * run['references']['untrained']['separate'][key]['mean']:.1f} | " for run in runs]
    raw_input = [f"{100 * run['references']['raw_input'][key]:.1f} | " for run in runs]
    lines.append("| untrained network (reference) | " + " | ".join(untrained) + " |")
    lines.append("| raw pixels (reference) | " + " | ".join(raw_input) + " |")
    lines.append("")
    for run, pairs in zip(runs, pairs_of, strict=True):
        outside = []
        largest = 0.0
        for dm, pml in pairs:
            a, b = dm["separate"][key], pml["separate"][key]
            gap = abs(a["mean"] - b["mean"])
            largest = max(largest, gap)
            if gap > min(a["half_width"], b["half_width"]):
                outside.append(f"{dm['label']} ({100 * gap:.2f} points)")
        verdict = ("every dmlkit/PML difference lies inside both 95 % intervals" if not outside
                   else "outside a 95 % interval: " + "; ".join(outside))
        lines.append(f"- {run['title']}: {verdict} (largest difference {100 * largest:.2f} points); training of "
                     f"all {sum(len(e.get('cells', [])) for e in run['entries'])} fold models took "
                     f"{_duration(run['cell_seconds'])} (`{run['command']}`, finished {run['finished'][:16]}).")
    png = f"{stem}_{bench.name}.png"
    _reality_check_plot(runs, pairs_of, out / png)
    return [*lines, "", f"![Reality check: separate-fold MAP@R with 95 % intervals]({png})", ""]


def _entry_label(entry: Mapping[str, Any]) -> str:
    """The entry's label, with the miner's kind of triplets when it names one (e.g. semihard)."""
    kind = (entry.get("miner") or {}).get("type_of_triplets")
    return f"{entry['label']} ({kind})" if kind else entry["label"]


def _reality_check_plot(runs: list[dict[str, Any]], pairs_of: list[Any], path: Path) -> None:
    """One panel per data set: MAP@R of each loss in both libraries with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "mean_average_precision_at_r"
    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4.5), squeeze=False)
    for ax, run, pairs in zip(axes[0], runs, pairs_of, strict=True):
        for offset, side, name in ((-0.15, 0, "dmlkit"), (0.15, 1, "PML")):
            ys = [i + offset for i in range(len(pairs))]
            means = [100 * pair[side]["separate"][key]["mean"] for pair in pairs]
            widths = [100 * pair[side]["separate"][key]["half_width"] for pair in pairs]
            ax.errorbar(means, ys, xerr=widths, fmt="o", capsize=3, label=name)
        for ref, style in (("untrained", ":"), ("raw_input", "--")):
            value = run["references"][ref]
            value = value["separate"][key]["mean"] if ref == "untrained" else value[key]
            ax.axvline(100 * value, color="grey", linestyle=style,
                       label="untrained network" if ref == "untrained" else "raw pixels")
        ax.set_yticks(range(len(pairs)))
        ax.set_yticklabels([_entry_label(pair[0]) for pair in pairs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("separate-fold MAP@R (%) on unseen classes")
        ax.set_title(run["title"])
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_memory_efficient(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    table = memory_bench.table(raw, _threads_of(meta, bench)).split("\n", 2)[2]  # without its machine line
    png = f"{stem}_{bench.name}.png"
    memory_bench.plot(raw, str(out / png))
    return [
        *_head(bench, meta),
        "Dense dmlkit (`chunk_size=0`), tiled dmlkit (`chunk_size=1024`) and PML; embedding dim 128, 4 samples per "
        "class, float32. Peak extra memory of the first forward+backward and the median time of the later ones; the "
        "last column is the 1-minute load average before each mode ran. See docs/memory_efficient.md.",
        "",
        table,
        "",
        f"![Peak extra memory and time versus batch size]({png})",
        "",
    ]


def render_training(bench: Benchmark, raw: Any, meta: dict[str, Any], out: Path, stem: str) -> list[str]:
    png = f"{stem}_{bench.name}.png"
    training_bench.plot(raw, str(out / png))
    iterations = raw[0]["iterations"] if raw else 0
    return [
        *_head(bench, meta),
        f"Iterations per second over {iterations} timed iterations (after a warm-up), same model (MLP 784 -> 512 -> "
        "128), data (Gaussian classes, 4 samples per class per batch), loss and miner settings in every column. "
        "\"PML MetricLossOnly + dmlkit loss\" runs pytorch-metric-learning's trainer on dmlkit's loss, miner and "
        "sampler: against the first column it isolates the trainers' own overhead. The last column is the "
        "1-minute load average before each column's run: compare rows only at similar loads.",
        "",
        training_bench.table(raw),
        "",
        f"![Training throughput]({png})",
        "",
    ]


BENCHMARKS = [
    Benchmark(
        "losses", "bench/losses.py", "Losses, miners and wrappers, batch 256 and 1024",
        ["--sizes", "256", "1024", "--timeout", "120", "--memory-limit-gib", "8"],
        ["--sizes", "64", "--only", "SupConLoss", "NTXentLoss", "--timeout", "60", "--memory-limit-gib", "4"],
        render=render_losses,
    ),
    Benchmark(
        "losses_4096", "bench/losses.py", "Batch 4096",
        ["--sizes", "4096", "--timeout", "90", "--memory-limit-gib", "8"],
        ["--sizes", "128", "--only", "CircleLoss", "--timeout", "60", "--memory-limit-gib", "4"],
        render=render_losses,
    ),
    Benchmark(
        "reality_check", "bench/reality_check.py", "Reality check: losses under one protocol",
        [],
        ["--configs", "examples/benchmarks/digits_tiny.yaml", "--quick"],
        threads=1, render=render_reality_check,
    ),
    Benchmark(
        "class_losses", "bench/class_losses.py", "Classification and proxy losses",
        ["--sizes", "256", "1024", "4096", "--classes", "100", "10000", "--timeout", "60", "--memory-limit-gib", "8"],
        ["--sizes", "64", "--classes", "10", "--only", "ArcFaceLoss", "ProxyAnchorLoss", "--timeout", "60",
         "--memory-limit-gib", "4"],
        render=render_class_losses,
    ),
    Benchmark(
        "evaluation", "bench/evaluation.py", "Evaluation",
        ["--threads", "1", "--sizes", "10000", "50000", "100000", "--projection"],
        ["--threads", "1", "--sizes", "2000", "--metrics", "retrieval", "--timeout", "120"],
        threads=1, render=render_evaluation,
    ),
    Benchmark(
        "evaluation_million", "bench/evaluation.py", "Evaluation at N = 1,000,000",
        ["--threads", "2", "--sizes", "--metrics", "retrieval", "--million", "--timeout", "9000"],
        ["--threads", "1", "--sizes", "--metrics", "retrieval", "--million", "--large-n", "5000", "--timeout", "120"],
        render=render_evaluation_million,
    ),
    Benchmark(
        "memory_efficient", "bench/memory_efficient.py", "Memory-efficient (tiled) losses",
        ["--max-load", "1.5"],
        ["--sizes", "256", "512", "--losses", "SupConLoss", "MultiSimilarityLoss", "--timeout", "120",
         "--memory-limit-gib", "2"],
        render=render_memory_efficient,
    ),
    Benchmark(
        "training", "bench/training.py", "Training throughput",
        ["--max-load", "1.5"],
        ["--sizes", "64", "--iterations", "10", "--only", "ContrastiveLoss", "ProxyAnchorLoss", "--timeout", "120"],
        render=render_training,
    ),
]


# Running ------------------------------------------------------------------------------------------------------


def _selected(only: list[str] | None) -> list[Benchmark]:
    if not only:
        return list(BENCHMARKS)
    names = {b.name for b in BENCHMARKS}
    # a benchmark's name picks that benchmark alone; a script's name that is no benchmark's picks all of its runs
    chosen = [
        b for b in BENCHMARKS if b.name in only or (Path(b.script).stem in only and Path(b.script).stem not in names)
    ]
    unknown = [name for name in only if not any(name in (b.name, Path(b.script).stem) for b in BENCHMARKS)]
    if unknown:
        known = ", ".join(b.name for b in BENCHMARKS)
        raise SystemExit(f"run_all.py: unknown benchmark {unknown}; known: {known} (or a script name).")
    return chosen


def _run(bench: Benchmark, quick: bool, raw_dir: Path) -> None:
    args = bench.quick if quick else bench.full
    raw_file = raw_dir / f"{bench.name}.json"
    command = " ".join(shlex.quote(p) for p in [".venv/bin/python", bench.script, *args])
    print(f"== {bench.name}: {command}", flush=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    begin = time.perf_counter()
    tmp = raw_dir / f".{bench.name}.json.partial"
    proc = subprocess.run([sys.executable, bench.script, *args, "--json", str(tmp)], cwd=ROOT, check=False)
    meta = {
        "format_version": RAW_FORMAT_VERSION,
        "name": bench.name,
        "command": command,
        "args": args,
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - begin,
        "environment": environment_info(),
        "returncode": proc.returncode,
    }
    if proc.returncode == 0 and tmp.exists():
        os.replace(tmp, raw_file)
    else:
        print(f"== {bench.name} failed (exit {proc.returncode}); its section keeps its previous raw results, if any")
    text = json.dumps(meta, indent=1)
    if proc.returncode == 0:
        atomic_write(raw_dir / f"{bench.name}.meta.json", lambda f: f.write(text.encode()))


def _load(bench: Benchmark, raw_dir: Path) -> tuple[Any, dict[str, Any]] | None:
    raw_file, meta_file = raw_dir / f"{bench.name}.json", raw_dir / f"{bench.name}.meta.json"
    if not raw_file.exists() or not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != RAW_FORMAT_VERSION:
        return None
    return json.loads(raw_file.read_text()), meta


INTRO = """# Benchmarks

These benchmarks compare dmlkit and pytorch-metric-learning (PML) on the same inputs, side by side. Each
(case, library, size) combination runs in its own process:

- **Time** is the median of the forward+backward passes after the first: at least five, and for short calls
  as many as fill one second. A case whose calls take under 50 ms in both libraries is measured in three
  rounds of fresh processes, the libraries alternating, and each library keeps its fastest round: at a few
  milliseconds per call, one process can run a few percent slower than the next for its whole life, more than
  the differences being measured.
- **Peak extra** of the loss, miner, class-loss and memory-efficient tables is the largest amount of tensor
  memory allocated during one forward+backward and held at once, summed from the torch profiler's allocation
  events (after a warm-up call on a small batch, on top of the inputs already built). It is exactly repeatable:
  the resident-set high-water mark used before moved by up to tens of MiB between runs of identical code, and
  is still kept in the raw results (`rss_extra_mib`). The evaluation table measures the resident-set rise,
  because faiss allocates outside torch.
- **"fails"** means the library ran out of memory under the address-space cap given in the command, or took
  longer than its time limit.

This page is generated by `bench/run_all.py` (`make bench`) from the raw results of every script of `bench/`;
each section gives the command that measured it, the machine and the versions. Regenerate everything with:

```bash
.venv/bin/python bench/run_all.py            # full sizes: hours
.venv/bin/python bench/run_all.py --quick    # a smoke test with small sizes, written to a temporary folder
```
"""


def build_document(raw_dir: Path, out: Path, stem: str) -> tuple[str, list[str]]:
    """The markdown document from the raw folder, its plots written beside ``out``; and the missing sections."""
    parts, missing, quick = [INTRO], [], False
    for bench in BENCHMARKS:
        loaded = _load(bench, raw_dir)
        if loaded is None:
            missing.append(bench.name)
            parts.append(f"## {bench.title}\n\nNot measured in this run.\n")
            continue
        raw, meta = loaded
        quick = quick or bool(meta.get("quick"))
        parts.append("\n".join(bench.render(bench, raw, meta, out.parent, stem)))
    if quick:
        parts.insert(1, "**Quick run (`--quick`): small sizes for a smoke test; these numbers are not the "
                        "benchmark.**\n")
    return "\n".join(parts), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark (repeatable): " + ", ".join(b.name for b in BENCHMARKS))
    parser.add_argument("--raw", default=None, help="raw results folder (default: runs/bench-raw, or a temporary "
                                                     "folder with --quick)")
    parser.add_argument("--from-raw", default=None, metavar="DIR", help="measure nothing: rebuild from DIR")
    parser.add_argument("--out", default=None, help="where benchmarks.md goes when not docs/benchmarks.md")
    args = parser.parse_args(argv)
    scratch_dir: list[Path] = []

    def scratch() -> Path:
        if not scratch_dir:
            scratch_dir.append(Path(tempfile.mkdtemp(prefix="dmlkit-bench-")))
        return scratch_dir[0]

    if args.from_raw:
        raw_dir = Path(args.from_raw)
    else:
        raw_dir = Path(args.raw) if args.raw else (scratch() / "raw" if args.quick else ROOT / "runs" / "bench-raw")
        raw_dir.mkdir(parents=True, exist_ok=True)
        for bench in _selected(args.only):
            _run(bench, args.quick, raw_dir)
    complete_full = all(
        (loaded := _load(b, raw_dir)) is not None and not loaded[1].get("quick") for b in BENCHMARKS
    )
    if complete_full and not args.quick and args.out is None:
        target = DOCS / "benchmarks.md"
    else:
        target = Path(args.out) if args.out else scratch() / "benchmarks.md"
        if not complete_full and not args.quick:
            print("Some benchmarks have no full-size results in the raw folder: docs/benchmarks.md is left as it is.")
    target.parent.mkdir(parents=True, exist_ok=True)
    text, missing = build_document(raw_dir, target, "benchmarks")
    atomic_write(target, lambda f: f.write(text.encode("utf-8")))
    print(f"Wrote {target} (raw results in {raw_dir})" + (f"; not measured: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
