"""The artifact's k-means clusters (clusters.json) and nearest-centroid search; numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CLUSTERS_FILE = "clusters.json"


class ClusterFileError(ValueError):
    """clusters.json does not match the contract; the message names the field."""


@dataclass(frozen=True)
class Neighbor:
    cluster: int
    distance: float


@dataclass(frozen=True)
class ClusterTable:
    centroids: np.ndarray
    sizes: list[int]
    exemplars: list[list[np.ndarray]]
    prototypes: list[np.ndarray | None]

    @property
    def k(self) -> int:
        return len(self.centroids)

    def nearest(self, mu: np.ndarray, top_k: int) -> list[list[Neighbor]]:
        """For each row of ``mu [n, Nz]``, the ``top_k`` closest centroids (Euclidean), closest first."""
        k = max(1, min(top_k, self.k))
        diff = mu[:, None, :].astype(np.float64) - self.centroids[None, :, :]
        dist = np.sqrt((diff * diff).sum(axis=-1))
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return [[Neighbor(int(c), float(dist[row, c])) for c in order[row]] for row in range(len(mu))]


def _stroke3(rows: Any, field: str) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ClusterFileError(f"{CLUSTERS_FILE}: {field} is not a stroke-3 list of [dx, dy, p] rows")
    return array


def parse_clusters(document: dict[str, Any], latent_size: int) -> ClusterTable:
    """Check and convert a clusters.json document."""
    centroids = np.asarray(document.get("centroids", []), dtype=np.float64)
    if centroids.ndim != 2 or centroids.shape[1] != latent_size or len(centroids) == 0:
        raise ClusterFileError(f"{CLUSTERS_FILE}: centroids must be k x {latent_size}, got shape {centroids.shape}")
    k = len(centroids)
    sizes = [int(s) for s in document.get("sizes", [0] * k)]
    exemplar_lists = document.get("exemplars", [[] for _ in range(k)])
    prototype_list = document.get("prototypes", [None] * k)
    if len(sizes) != k or len(exemplar_lists) != k or len(prototype_list) != k:
        raise ClusterFileError(f"{CLUSTERS_FILE}: sizes, exemplars and prototypes must each have k={k} entries")
    exemplars = [
        [_stroke3(s, f"exemplars[{c}][{j}]") for j, s in enumerate(members)] for c, members in enumerate(exemplar_lists)
    ]
    prototypes = [None if p is None else _stroke3(p, f"prototypes[{c}]") for c, p in enumerate(prototype_list)]
    return ClusterTable(centroids, sizes, exemplars, prototypes)
