"""Smoke run of the serving benchmark (--quick) on the tiny random artifact: the whole
pipeline (server subprocesses, load-generator process, metrics, in-process limit,
report) runs and reports a row per cell; no speed is asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bench_serving import Goal
from results import load_result

REPO = Path(__file__).resolve().parents[1]
BENCH_TIMEOUT_S = 240  # a generous bound for a loaded 2-core machine; the run takes ~20 s


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 30)
def test_quick_serving_benchmark_reports_every_cell(tiny_model: Path, tmp_path: Path) -> None:
    report = tmp_path / "serving.md"
    command = [
        sys.executable,
        str(REPO / "bench" / "bench_serving.py"),
        "--model",
        str(tiny_model),
        "--quick",
        "--concurrency",
        "1,2",
        "--sketches-per-call",
        "1,2",
        "--max-points",
        "16",
        "--out",
        str(report),
        "--json",
        str(tmp_path / "serving.json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert text == done.stdout
    header = next(line for line in text.splitlines() if line.startswith("| server | method |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    lines = [line for line in text.splitlines() if line.startswith(("| batched |", "| unbatched |"))]
    rows = [dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines]
    # Encode on the batched server in three forms (packed, readable, and the Open Inference Protocol's
    # ModelInfer), everything else packed (the client's default):
    # batched 3 forms x 2 x 2 Encode + 2 x 2 Reconstruct, unbatched 2 methods x 2 x 2.
    assert len(rows) == 16 + 8
    encode_forms = {r["form"] for r in rows if r["server"] == "batched" and r["method"] == "Encode"}
    assert encode_forms == {"packed", "readable", "oip"}
    for row in rows:
        assert float(row["sketches/s"].rstrip(" *")) > 0, row  # every cell completed calls
        assert row["errors"] == "0", row  # no failed calls
        cpu, outside = float(row["server CPU ms/call"]), float(row["outside the model"])
        assert 0 < float(row["of it preprocessing"]) < outside < cpu, row  # CPU on each call, split by where
    assert all(float(r["mean batch"]) == 1.0 for r in rows if r["server"] == "unbatched")  # batching off
    # Batching on, 2 sketches per call: every batch holds at least a whole call, so the mean is at least 2.
    pairs = [r for r in rows if r["server"] == "batched" and r["sketches/call"] == "2"]
    assert pairs and all(float(r["mean batch"]) >= 2.0 for r in pairs)
    assert "served / in-process" in text and "batched / unbatched" in text and "p50" in text
    assert "server CPU per call outside the model" in text
    result = load_result(tmp_path / "serving.json")  # the file the docs render from holds the same cells
    assert [" | ".join(r) for r in result.tables["cells"].rows] == [line.strip("| ") for line in lines]
    assert result.command.startswith(".venv/bin/python bench/bench_serving.py --model")
    assert set(result.machine) >= {"cpus", "load_before", "load_after"} and result.commit


@pytest.mark.parametrize(
    ("rule", "passes", "clean", "met", "verdict"),
    [
        (None, True, True, False, "(no goal)"),  # a ratio reported without a goal is never "met"
        (">= 0.8", True, True, True, "yes"),
        (">= 0.8", False, True, False, "no"),
        (">= 0.8", True, False, False, "not measured (a cell had errors or was not in steady state)"),
    ],
)
def test_a_goal_is_met_only_when_set_passed_and_measured_clean(
    rule: str | None, passes: bool, clean: bool, met: bool, verdict: str
) -> None:
    goal = Goal("served / in-process", 0.9, rule, passes, clean)
    assert goal.met is met and goal.verdict == verdict
