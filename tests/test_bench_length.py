"""The length benchmark on real drawings: a decoder hand-set to end when told no points remain
draws every drawing at exactly its own point count; a model without length conditioning is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from counting import counting_artifact

REPO = Path(__file__).resolve().parents[1]
BENCH_TIMEOUT_S = 300  # generous for a loaded 2-core machine; the run takes a few seconds


def run_bench(model: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(REPO / "bench" / "bench_length.py"),
        "--model",
        str(model),
        "--data-dir",
        str(data_dir / "sketchrnn"),
        "--every",
        "10",
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, cwd=REPO, check=False)


@pytest.mark.slow
@pytest.mark.timeout(2 * BENCH_TIMEOUT_S)
def test_length_benchmark_measures_how_exactly_the_decoder_draws_its_target(
    tiny_model: Path,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "length.json"
    done = run_bench(counting_artifact(tmp_path / "counting"), data_dir, "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["drawings"] == 90 and row["exact"] == 1.0 and row["near"] == 1.0 and row["median_gap"] == 0.0
    assert row["typical_median_gap"] > 0.0  # without its own count the decoder draws the typical length
    assert "| counting | 90 | 1.000 | 1.000 | 0 |" in done.stdout
    refused = run_bench(tiny_model, data_dir)
    assert refused.returncode != 0 and "not a length-conditioned model" in refused.stderr
