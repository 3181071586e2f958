"""The benchmark document is rendered from raw results alone: reality check, evaluation targets, the 1M run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from bench import run_all  # noqa: E402

KEY = "mean_average_precision_at_r"


def _meta(name: str, args: list[str], note: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format_version": run_all.RAW_FORMAT_VERSION, "name": name, "command": f"python bench/{name}.py",
        "args": args, "quick": False, "finished": "2026-01-02T03:04:05+00:00",
        "environment": {"cpu": "test CPU", "cores": 2, "python": "3", "torch": "2", "dmlkit": "0",
                        "pytorch_metric_learning": "2"},
    }
    if note:
        meta["note"] = note
    return meta


def _entry(label: str, library: str, mean: float, half_width: float, miner: dict[str, Any] | None = None):
    return {"label": label if library == "dmlkit" else f"{label} (PML)", "library": library,
            "loss": {"name": label.lower()}, "miner": miner, "loss_lr": None, "params": {}, "seconds": 10.0,
            "cells": [{}, {}], "separate": {KEY: {"mean": mean, "half_width": half_width}}}


def _protocol_run(title: str, pml_mean: float) -> dict[str, Any]:
    triplets = {"name": "triplet_margin", "type_of_triplets": "semihard"}
    return {
        "title": title, "command": f"dmlkit benchmark {title}.yaml", "finished": "2026-01-02T03:04:05+00:00",
        "cell_seconds": 600.0,
        "config": {"folds": 2, "seeds": [0, 1, 2], "model": {"name": "cnn", "embedding_size": 64},
                   "sampler": {"batch_size": 64, "m": 32}, "epochs": 3, "iterations_per_epoch": 100},
        "references": {"raw_input": {KEY: 0.47}, "untrained": {"separate": {KEY: {"mean": 0.36}}}},
        "entries": [
            _entry("ContrastiveLoss", "dmlkit", 0.250, 0.01),
            _entry("ContrastiveLoss", "pml", pml_mean, 0.01),
            _entry("TripletMarginLoss", "dmlkit", 0.220, 0.02, triplets),
            _entry("TripletMarginLoss", "pml", 0.225, 0.02, triplets),
        ],
    }


def test_reality_check_section_states_agreement_per_data_set(tmp_path: Path) -> None:
    bench = next(b for b in run_all.BENCHMARKS if b.name == "reality_check")
    raw = {"runs": [_protocol_run("MNIST", 0.255), _protocol_run("Fashion", 0.290)]}
    text = "\n".join(bench.render(bench, raw, _meta("reality_check", []), tmp_path, "doc"))
    assert "| ContrastiveLoss | 25.0 | 25.5 | 25.0 | 29.0 |" in text
    assert "| TripletMarginLoss (semihard) | 22.0 | 22.5 | 22.0 | 22.5 |" in text
    assert "| untrained network (reference) | 36.0 |  | 36.0 |  |" in text
    assert "| raw pixels (reference) | 47.0 |  | 47.0 |  |" in text
    # MNIST: 0.5 points apart with intervals of 1 and 2 points; Fashion: 4 points apart, outside +-1
    inside = "every dmlkit/PML difference lies inside both 95 % intervals (largest difference 0.50 points)"
    assert f"- MNIST: {inside}" in text
    assert "- Fashion: outside a 95 % interval: ContrastiveLoss (4.00 points)" in text
    assert "all 8 fold models took 10.0 min" in text
    assert (tmp_path / "doc_reality_check.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("dmlkit_s", "speed", "floor"),
    [(3.0, "met (4.00x to 4.00x)", "met (0.5x to 0.5x the floor)"),
     (14.0, "not met (0.86x to 0.86x)", "not met (2.2x to 2.2x the floor)")],
)
def test_evaluation_targets_follow_the_numbers(tmp_path: Path, dmlkit_s: float, speed: str, floor: str) -> None:
    """Only N >= 50,000 counts; the floor is 2 * 50,000^2 * 128 FLOPs at 100 GFLOP/s = 6.4 s."""
    bench = next(b for b in run_all.BENCHMARKS if b.name == "evaluation")
    values = {"precision_at_1": 0.5}
    rows = [{"metrics": "retrieval", "n": n, "dmlkit": {"seconds": dmlkit_s * n / 50_000, "peak_extra_mib": 10.0,
                                                        "values": values},
             "pml": {"seconds": 12.0 * n / 50_000, "peak_extra_mib": 100.0, "values": values}}
            for n in (10_000, 50_000)]
    raw = {"gflops": 100.0, "rows": rows, "projection": None}
    text = "\n".join(bench.render(bench, raw, _meta("evaluation", ["--threads", "1"]), tmp_path, "doc"))
    assert f"- speed >= 2x PML: {speed};" in text
    assert "- peak extra memory <= 1/2 of PML's: met (1/10 to 1/10);" in text
    assert f"- within 2x of the compute floor: {floor}." in text


def test_million_run_section_and_run_note(tmp_path: Path) -> None:
    bench = next(b for b in run_all.BENCHMARKS if b.name == "evaluation_million")
    raw = {"gflops": 300.0, "million": {"n": 1_000_000, "seconds": 3600.0, "peak_extra_mib": 1100.0,
                                        "values": {"precision_at_1": 0.9}}}
    meta = _meta("evaluation_million", ["--threads", "2", "--million"], note="Shared with another job.")
    lines = bench.render(bench, raw, meta, tmp_path, "doc")
    text = "\n".join(lines)
    assert lines[:3] == ["## Evaluation at N = 1,000,000 (measured on 2026-01-02)", "", "```bash"]
    assert "Shared with another job." in text
    assert "**60.0 min with 1,100 MiB peak extra memory**" in text
    assert "- Exact at N = 1,000,000 within 4 GiB extra memory: met (1,100 MiB)." in text
    # floor: 2e12 * 128 / 300e9 = 853 s, so 3600 s is 4.2x
    assert "- Within 2x of the compute floor: not met (4.2x)." in text


def test_reality_check_script_gathers_each_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import reality_check

    def fake_run(config: str, out: Path, threads: int, quick: bool) -> dict[str, Any]:
        return {"title": Path(config).stem, "threads": threads, "quick": quick, "out": str(out)}

    monkeypatch.setattr(reality_check, "run_protocol", fake_run)
    target = tmp_path / "raw.json"
    assert reality_check.main(["--configs", "a.yaml", "b.yaml", "--quick", "--json", str(target)]) == 0
    runs = json.loads(target.read_text())["runs"]
    assert [r["title"] for r in runs] == ["a", "b"]
    assert runs[0]["out"] == str(tmp_path / "reality_check_runs" / "a-quick")
    assert runs[0]["threads"] == 1 and runs[0]["quick"] is True
