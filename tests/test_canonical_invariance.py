"""Copies of real faces reach the bundled model as the faces do (issue 17), measured on mu."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_canonical import DEFAULT_MODEL, face_drawings, mu_moves

# float32 copies of drawings that are not canonical yet still cross thresholds of the
# simplification (measured: up to 3.3% of the median distance); this bound catches a regression
FLOAT32_BOUND_GOALS = 5.0


@pytest.mark.slow
def test_copies_of_real_faces_move_mu_only_through_float32_noise(data_dir: Path) -> None:
    from sketchserve.runtime import SketchRuntime

    moves = mu_moves(SketchRuntime.load(DEFAULT_MODEL), face_drawings(data_dir, ["test"]))
    assert all(m.cluster_changes == 0 for m in moves), moves
    exact = [m for m in moves if "float32" not in m.transformation or m.transformation.startswith("canonical")]
    assert all(m.max_move == 0.0 for m in exact), exact
    assert all(m.max_move < FLOAT32_BOUND_GOALS * m.goal for m in moves), moves
