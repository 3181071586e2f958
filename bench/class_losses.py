"""Forward+backward time and peak extra memory of the classification and proxy losses, dmlkit vs PML.

Usage: ``python bench/class_losses.py [--sizes 256 1024 4096] [--classes 100 10000] [--only ArcFace]``.
Cases come from every ``bench/cases/*_class.py`` module: ``CASES = {name: factory(lib, num_classes, dim)}``
and optionally ``DMLKIT_ONLY = [names]`` (cases PML lacks, timed for dmlkit alone). Each (case, library,
batch size, class count) runs in its own subprocess (see ``bench/_harness.py``). Inputs: embedding dim 128,
labels uniform over the classes, float32, fixed seed; the gradient reaches the embeddings and the loss's own
parameters.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench import _harness as harness  # noqa: E402
from bench import cases as cases_package  # noqa: E402

DIM = 128
Factory = Callable[[Any, int, int], Any]


def class_cases() -> tuple[dict[str, Factory], set[str]]:
    """Every ``CASES`` of the ``bench/cases/*_class.py`` modules, and the names that exist in dmlkit only."""
    found: dict[str, Factory] = {}
    only_ours: set[str] = set()
    for info in sorted(pkgutil.iter_modules(cases_package.__path__), key=lambda m: m.name):
        if not info.name.endswith("_class"):
            continue
        module = importlib.import_module(f"{cases_package.__name__}.{info.name}")
        found.update(getattr(module, "CASES", {}))
        only_ours.update(getattr(module, "DMLKIT_ONLY", []))
    return found, only_ours


def _lib(name: str) -> Any:
    return harness.library(name, ("distances", "losses", "reducers", "regularizers"))


def run_one(case: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    batch, num_classes = case["batch"], case["classes"]
    embeddings = torch.randn(batch, DIM, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))
    build = class_cases()[0][case["name"]]

    def step_on(x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
        loss_fn = build(_lib(case["lib"]), num_classes, DIM)
        parameters = list(loss_fn.parameters())

        def step() -> None:
            loss_fn(x, y).backward()
            x.grad = None
            for parameter in parameters:
                parameter.grad = None

        return step

    # a first call on a small batch (a fresh instance) pays the one-time costs: kernels, thread pools
    small = torch.randn(harness.WARMUP_BATCH, DIM, requires_grad=True)
    step_on(small, torch.randint(0, num_classes, (harness.WARMUP_BATCH,)))()
    return harness.measure(step_on(embeddings, labels), repeats=case.get("repeats", 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    harness.add_table_arguments(parser)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 10000])
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_one(json.loads(args.case))))
        return
    torch.set_num_threads(args.threads)
    factories, only_ours = class_cases()
    names = [n for n in factories if args.only is None or any(part in n for part in args.only)]
    lines = [
        f"Machine: {harness.machine_line()}. Embedding dim {DIM}, labels uniform over the classes, float32.",
        "",
        "| case | classes | batch | dmlkit (time / peak extra) | PML (time / peak extra) | speed-up | memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    speedups: dict[int, list[float]] = {size: [] for size in args.sizes}
    rows: list[dict[str, Any]] = []
    for name in names:
        for num_classes in args.classes:
            for size in args.sizes:
                case = {"name": name, "batch": size, "classes": num_classes, "threads": args.threads}
                results = harness.run_both("bench.class_losses", case, args, pml=name not in only_ours)
                ours, pml = results["dmlkit"], results["pml"]
                rows.append({**case, "dmlkit": ours, "pml": pml, "in_pml": name not in only_ours})
                if "error" not in ours and "error" not in pml:
                    speedups[size].append(pml["seconds"] / ours["seconds"])
                pml_cell = "not in PML" if name in only_ours else harness.fmt_cell(pml)
                speed = "-" if name in only_ours else harness.ratio(pml, ours, "seconds")
                memory = "-" if name in only_ours else harness.ratio(pml, ours, "peak_extra_mib")
                row = (
                    f"| {name} | {num_classes} | {size} | {harness.fmt_cell(ours)} | {pml_cell} | {speed} | {memory} |"
                )
                print(row, flush=True)
                lines.append(row)
    harness.finish_table(lines, speedups, args.out)
    harness.write_json(args.json, rows)


if __name__ == "__main__":
    main()
