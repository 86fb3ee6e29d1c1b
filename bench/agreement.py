"""How closely canonical drawings match Google's simplified twins (bench_preprocess.py and its test).

Measurement only, so it lives beside the benchmarks, not in the shared stroke format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sketchserve.strokes import Drawing, drawing_from_xy


class RawSimplifiedPairs(NamedTuple):
    """Raw drawings and their simplified twins (same ``key_id``), in file order."""

    raws: list[Drawing]
    twins: list[Drawing]


def read_xy(path: Path) -> list[tuple[str, list]]:
    """``(key_id, [(xs, ys), ...])`` of every record of an ndjson file (timestamps dropped)."""
    with path.open() as handle:
        return [(rec["key_id"], [(s[0], s[1]) for s in rec["drawing"]]) for rec in map(json.loads, handle)]


def raw_simplified_pairs(data_dir: Path) -> RawSimplifiedPairs:
    """Every raw drawing under ``data_dir/raw`` whose simplified twin is under ``data_dir/simplified``."""
    pairs = RawSimplifiedPairs([], [])
    for raw_path in sorted((data_dir / "raw").glob("*.ndjson")):
        simplified_path = data_dir / "simplified" / raw_path.name
        if not simplified_path.exists():
            continue
        reference = dict(read_xy(simplified_path))
        for key, xy in read_xy(raw_path):
            if key in reference:
                pairs.raws.append(drawing_from_xy(xy))
                pairs.twins.append(drawing_from_xy(reference[key]))
    return pairs


@dataclass(frozen=True)
class DrawingAgreement:
    """How closely drawings match their references, pair by pair."""

    pairs: int
    same_counts: int  # pairs with the reference's point count in every stroke
    identical: int  # pairs equal point for point
    mean_distance: float  # mean distance between matched points of the same-count pairs

    @property
    def same_count_rate(self) -> float:
        return self.same_counts / self.pairs if self.pairs else 0.0

    @property
    def identical_rate(self) -> float:
        return self.identical / self.pairs if self.pairs else 0.0


def compare_drawings(drawings: Sequence[Drawing], references: Sequence[Drawing]) -> DrawingAgreement:
    """Agreement of ``drawings`` with ``references`` (e.g. canonical raw vs Google's simplified)."""
    if len(drawings) != len(references):
        raise ValueError(f"{len(drawings)} drawings but {len(references)} references")
    same_counts = identical = 0
    distances: list[np.ndarray] = []
    for ours, theirs in zip(drawings, references):
        if len(ours) != len(theirs) or any(len(a) != len(b) for a, b in zip(ours, theirs)):
            continue
        same_counts += 1
        delta = np.concatenate(ours) - np.concatenate(theirs)
        identical += int(not delta.any())
        distances.append(np.hypot(delta[:, 0], delta[:, 1]))
    mean = float(np.concatenate(distances).mean()) if distances else float("nan")
    return DrawingAgreement(len(drawings), same_counts, identical, mean)
