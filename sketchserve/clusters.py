"""An artifact's k-means clusters: ``clusters.json``, parsed and checked once, and nearest-centroid search.

Format (docs/contracts.md, "Model artifact")::

    {format_version: 1, k, encoder_sha256, centroids: [[float] * Nz] * k, sizes: [int] * k,
     exemplars: [[stroke3] ...] * k, prototypes: [stroke3 or null] * k, metrics: {...}, ...}

``encoder_sha256`` is the sha256 of the ``encoder.pt`` the centroids were computed
with (written by ``sketchserve cluster``); clusters of another encoder are refused.
Every number must be finite; a refusal is one ``ClusterFileError`` line naming
the field (the loader prefixes the file's path). numpy only: no torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CLUSTERS_FILE = "clusters.json"
CLUSTERS_FORMAT_VERSION = 1
STROKE3_COLUMNS = 3


class ClusterFileError(ValueError):
    """clusters.json does not match the contract; the message names the field."""


@dataclass(frozen=True)
class Neighbor:
    cluster: int
    distance: float


@dataclass(frozen=True)
class ClusterTable:
    """The checked clusters: ``centroids [k, Nz]`` float64 and, per cluster, size, exemplars, prototype."""

    centroids: np.ndarray
    sizes: list[int]
    exemplars: list[list[np.ndarray]]
    prototypes: list[np.ndarray | None]
    encoder_sha256: str
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def distances(self, codes: np.ndarray) -> np.ndarray:
        """Euclidean distance ``[n, k]`` (float64) of each code ``[n, Nz]`` to each centroid."""
        diff = np.asarray(codes, dtype=np.float64)[:, None, :] - self.centroids[None, :, :]
        return np.sqrt((diff * diff).sum(axis=-1))

    def assign(self, codes: np.ndarray) -> np.ndarray:
        """Index of the nearest centroid of every code (ties: the lower index), int64 ``[n]``."""
        return self.distances(codes).argmin(axis=1).astype(np.int64)

    def nearest(self, codes: np.ndarray, top_k: int) -> list[list[Neighbor]]:
        """For each code, the ``top_k`` closest centroids (clamped to 1..k), closest first."""
        k = max(1, min(top_k, self.k))
        dist = self.distances(codes)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return [[Neighbor(int(c), float(dist[row, c])) for c in order[row]] for row in range(len(dist))]


def _numbers(value: Any, field_name: str, ndim: int) -> np.ndarray:
    """``value`` as a float64 array of ``ndim`` dimensions whose every entry is finite."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ClusterFileError(f"{field_name} is not a rectangular array of numbers") from err
    if array.ndim != ndim:
        raise ClusterFileError(f"{field_name} must have {ndim} dimensions, got shape {array.shape}")
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        where = "".join(f"[{i}]" for i in bad[0])
        raise ClusterFileError(f"{field_name}{where} is {array[tuple(bad[0])]} (every number must be finite)")
    return array


def _stroke3(value: Any, field_name: str) -> np.ndarray:
    array = _numbers(value, field_name, 2)
    if array.shape[1] != STROKE3_COLUMNS:
        raise ClusterFileError(f"{field_name} is not a stroke-3 list of [dx, dy, p] rows (shape {array.shape})")
    return array.astype(np.float32)


def _per_cluster(document: Mapping[str, Any], key: str, k: int, default: Any) -> list[Any]:
    value = document.get(key, [default] * k)
    if not isinstance(value, list) or len(value) != k:
        raise ClusterFileError(f"{key} must be a list of k={k} entries")
    return value


def parse_clusters(document: Any, latent_size: int, encoder_sha256: str | None) -> ClusterTable:
    """Check and convert a clusters.json document.

    ``encoder_sha256``: the artifact's encoder hash; clusters recorded with another
    (or none) are refused. ``None`` skips that check (for tools that only read)."""
    if not isinstance(document, Mapping):
        raise ClusterFileError(f"expected a JSON object, got {type(document).__name__}")
    version = document.get("format_version", CLUSTERS_FORMAT_VERSION)
    if version != CLUSTERS_FORMAT_VERSION:
        raise ClusterFileError(f"format_version {version!r} (this build reads {CLUSTERS_FORMAT_VERSION})")
    recorded = document.get("encoder_sha256")
    if encoder_sha256 is not None and recorded != encoder_sha256:
        made = "by an unrecorded encoder" if recorded is None else f"with encoder {str(recorded)[:12]}..."
        raise ClusterFileError(
            f"encoder_sha256: made {made}, this artifact's encoder is {encoder_sha256[:12]}... "
            "(re-run `sketchserve cluster MODEL_DIR --data FILES`)"
        )
    centroids = _numbers(document.get("centroids"), "centroids", 2)
    if centroids.shape[1] != latent_size or len(centroids) == 0:
        raise ClusterFileError(f"centroids must be k x {latent_size} (k >= 1), got shape {centroids.shape}")
    k = len(centroids)
    if "k" in document and document["k"] != k:
        raise ClusterFileError(f"k is {document['k']!r} but centroids has {k} rows")
    sizes = _per_cluster(document, "sizes", k, 0)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
        raise ClusterFileError("sizes must be integers >= 0")
    exemplar_lists = _per_cluster(document, "exemplars", k, [])
    exemplars = []
    for c, members in enumerate(exemplar_lists):
        if not isinstance(members, list):
            raise ClusterFileError(f"exemplars[{c}] must be a list of stroke-3 drawings")
        exemplars.append([_stroke3(s, f"exemplars[{c}][{j}]") for j, s in enumerate(members)])
    prototypes = [
        None if p is None else _stroke3(p, f"prototypes[{c}]")
        for c, p in enumerate(_per_cluster(document, "prototypes", k, None))
    ]
    metrics = document.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise ClusterFileError("metrics must be an object")
    return ClusterTable(centroids, list(sizes), exemplars, prototypes, str(recorded or ""), metrics)
