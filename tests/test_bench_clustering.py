"""Smoke run of the clustering benchmark on the real four categories with the tiny random
artifact: every row (the model's mu and each raster baseline) is scored and the ratio line
is printed; no quality is asserted for a random model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_TIMEOUT_S = 300  # generous for a loaded 2-core machine; the run takes ~30 s
LINE_WIDTHS = 5  # bench_clustering.LINE_WIDTHS: one baseline row each


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 30)
def test_clustering_benchmark_scores_model_and_baselines(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    sketchrnn = data_dir / "sketchrnn"
    out = tmp_path / "scores.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "bench_clustering.py"),
        "--model",
        str(tiny_model),
        "--data-dir",
        str(sketchrnn),
        "--json",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1800 drawings (face, pig, alarm clock, radio; splits valid+test)" in done.stdout
    scores = json.loads(out.read_text())
    assert len(scores["models"]) == 1 and len(scores["baselines"]) == LINE_WIDTHS
    for row in [*scores["models"], *scores["baselines"]]:
        assert 0.0 <= row["nmi"] <= 1.0 and -1.0 <= row["ari"] <= 1.0, row
        assert 0.0 <= row["nmi_min"] <= row["nmi_max"] <= 1.0 and 0.0 <= row["probe_accuracy"] <= 1.0, row
        assert 0.0 <= row["length_correlation"] <= 1.0 and -1.0 <= row["silhouette"] <= 1.0, row
        assert sum(map(sum, row["clusters_by_category"].values())) == 1800, row
    best = max(b["nmi"] for b in scores["baselines"])
    assert best > 0.1  # the raster baseline finds real structure in real drawings
    assert scores["models"][0]["ratio"] == pytest.approx(scores["models"][0]["nmi"] / best)
    assert "NMI ratio" in done.stdout and "(goal >= 2:" in done.stdout


@pytest.mark.slow
def test_clustering_benchmark_names_missing_data(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO / "bench" / "bench_clustering.py"),
        "--model",
        str(tmp_path),
        "--data-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, cwd=REPO, check=False)
    assert done.returncode == 2
    assert f"{tmp_path} lacks face.npz, pig.npz, alarm clock.npz, radio.npz" in done.stderr
