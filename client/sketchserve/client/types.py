"""What the client returns: small frozen dataclasses holding numpy arrays.

Sketches returned by the server (reconstructions, exemplars, prototypes) are in
the canonical 0-255 frame (see the proto). Arrays compare by identity
(``eq=False``): compare their contents with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sketchserve import strokes

STROKE3_COLUMNS = 3


@dataclass(frozen=True, eq=False)
class Sketch:
    """A drawing: one ``(n, 2)`` float64 array of absolute x/y points per stroke."""

    strokes: tuple[np.ndarray, ...]
    id: str = ""

    @classmethod
    def from_stroke3(cls, stroke3: np.ndarray, id: str = "") -> Sketch:
        return cls(tuple(strokes.stroke3_to_drawing(np.asarray(stroke3))), id)

    def to_stroke3(self) -> np.ndarray:
        """Stroke-3 rows; a sketch without strokes (a decoder that ended at once) has none."""
        if not self.strokes:
            return np.zeros((0, STROKE3_COLUMNS), dtype=np.float32)
        return strokes.drawing_to_stroke3(list(self.strokes))

    @property
    def num_points(self) -> int:
        return sum(len(stroke) for stroke in self.strokes)


@dataclass(frozen=True, eq=False)
class EncodeResult:
    """Latent codes, one row per input sketch, in input order."""

    mu: np.ndarray  # (N, latent_size) float32: the code to cluster on
    sigma: np.ndarray  # (N, latent_size) float32
    model_version: str

    def __len__(self) -> int:
        return len(self.mu)


@dataclass(frozen=True, eq=False)
class AssignResult:
    """Nearest stored centroid of each sketch, in input order."""

    cluster: np.ndarray  # (N,) int64
    distance: np.ndarray  # (N,) float32: Euclidean, on mu
    nearest_cluster: np.ndarray  # (N, top_k) int64, closest first
    nearest_distance: np.ndarray  # (N, top_k) float32
    model_version: str

    def __len__(self) -> int:
        return len(self.cluster)


@dataclass(frozen=True, eq=False)
class ScoreResult:
    """How well the model explains each sketch, in input order."""

    reconstruction_nll: np.ndarray  # (N,) float32, per point; higher = less typical
    kl: np.ndarray  # (N,) float32
    model_version: str

    def __len__(self) -> int:
        return len(self.kl)


@dataclass(frozen=True, eq=False)
class ReconstructResult:
    """Redrawn sketches (canonical frame), in input order."""

    sketches: tuple[Sketch, ...]
    model_version: str

    def __len__(self) -> int:
        return len(self.sketches)


@dataclass(frozen=True)
class ModelInfo:
    version: str
    name: str
    latent_size: int
    cluster_count: int
    max_points: int
    device: str
    categories: tuple[str, ...]
    data_files: tuple[str, ...]
    training_drawings: int
    max_sketches_per_request: int
    manifest: dict[str, Any]


@dataclass(frozen=True, eq=False)
class Cluster:
    id: int
    size: int
    centroid: np.ndarray  # (latent_size,) float32
    exemplars: tuple[Sketch, ...]
    prototype: Sketch | None  # None when the artifact stores none


@dataclass(frozen=True, eq=False)
class ClusterList:
    clusters: tuple[Cluster, ...]
    model_version: str

    def __len__(self) -> int:
        return len(self.clusters)
