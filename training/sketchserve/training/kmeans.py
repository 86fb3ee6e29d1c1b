"""k-means on latent codes: fitting, choosing k by silhouette, and scoring.

Pure functions over numpy arrays (scikit-learn does the work); no torch, no
files. `sketchserve.training.clustering` wires them to artifacts and data.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

# Silhouette is O(n^2) in memory and time; above this many codes it is
# estimated on a fixed random sample (the estimate is stable to ~0.01).
SILHOUETTE_MAX_SAMPLES = 5000
# k-means needs at least two clusters to mean anything.
MIN_K = 2


class ClusterError(ValueError):
    """Bad clustering input (a k that cannot work with the data)."""


@dataclass(frozen=True)
class KMeansFit:
    """One k-means solution. `labels[i]` indexes `centroids`; no cluster is empty."""

    labels: np.ndarray  # (n,) int64
    centroids: np.ndarray  # (k, d) float64
    inertia: float
    dropped_empty: int  # clusters k-means left empty and that were removed

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.k).astype(int).tolist()


@dataclass(frozen=True)
class KScore:
    k: int
    silhouette: float | None
    inertia: float


@dataclass(frozen=True)
class KSelection:
    """The chosen solution and the table of every k tried, in the order tried."""

    fit: KMeansFit
    scores: list[KScore]
    reason: str


@dataclass(frozen=True)
class LabelAgreement:
    """How well clusters match known category labels."""

    nmi: float
    ari: float
    n_categories: int


def validate_k(k: int, n_codes: int) -> None:
    """Raise ClusterError unless 2 <= k <= n_codes."""
    if k < MIN_K:
        raise ClusterError(f"k must be at least {MIN_K} (got {k})")
    if k > n_codes:
        raise ClusterError(f"k={k} is more than the number of drawings ({n_codes})")


def _drop_empty(labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    sizes = np.bincount(labels, minlength=centroids.shape[0])
    keep = np.flatnonzero(sizes > 0)
    remap = np.full(centroids.shape[0], -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    return remap[labels], centroids[keep], int(centroids.shape[0] - keep.size)


def fit_kmeans(codes: np.ndarray, k: int, *, random_state: int, n_init: int) -> KMeansFit:
    """k-means++ with `n_init` restarts; clusters left empty (fewer distinct codes than k) are dropped."""
    validate_k(k, codes.shape[0])
    with warnings.catch_warnings():
        # Fewer distinct points than k: handled below by dropping the empty clusters.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, random_state=random_state, n_init=n_init).fit(codes.astype(np.float64))
    labels, centroids, dropped = _drop_empty(model.labels_.astype(np.int64), model.cluster_centers_)
    return KMeansFit(labels=labels, centroids=centroids, inertia=float(model.inertia_), dropped_empty=dropped)


def silhouette(codes: np.ndarray, labels: np.ndarray, *, random_state: int) -> float | None:
    """Mean silhouette (Euclidean), or None where it is undefined (one cluster, or one code per cluster)."""
    n_labels = np.unique(labels).size
    if n_labels < MIN_K or n_labels >= codes.shape[0]:
        return None
    sample = SILHOUETTE_MAX_SAMPLES if codes.shape[0] > SILHOUETTE_MAX_SAMPLES else None
    return float(silhouette_score(codes, labels, sample_size=sample, random_state=random_state))


def choose_k(codes: np.ndarray, ks: Sequence[int], *, random_state: int, n_init: int) -> KSelection:
    """Fit every k in `ks` (those above the number of codes are skipped); keep the highest silhouette."""
    usable = [k for k in ks if MIN_K <= k <= codes.shape[0]]
    if not usable:
        raise ClusterError(f"no k in {min(ks)}..{max(ks)} fits {codes.shape[0]} drawings (need 2 <= k <= drawings)")
    fits = [fit_kmeans(codes, k, random_state=random_state, n_init=n_init) for k in usable]
    scores = [
        KScore(k, silhouette(codes, f.labels, random_state=random_state), f.inertia) for k, f in zip(usable, fits)
    ]
    defined = {i: s.silhouette for i, s in enumerate(scores) if s.silhouette is not None}
    if not defined:
        best = 0
        reason = f"silhouette is undefined for every k tried; kept k={usable[0]}"
    else:
        best = max(defined, key=lambda i: (defined[i], -scores[i].k))
        runner = sorted(defined.values(), reverse=True)
        margin = runner[0] - runner[1] if len(runner) > 1 else 0.0
        reason = (
            f"k={scores[best].k}: the highest mean silhouette ({defined[best]:.3f}) "
            f"of k in {usable[0]}..{usable[-1]}, {margin:.3f} above the next best"
        )
    return KSelection(fit=fits[best], scores=scores, reason=reason)


def label_agreement(labels: np.ndarray, categories: Sequence[str]) -> LabelAgreement | None:
    """NMI and ARI of the clusters against category labels; None with fewer than two categories."""
    n_categories = len(set(categories))
    if n_categories < MIN_K:
        return None
    return LabelAgreement(
        nmi=float(normalized_mutual_info_score(categories, labels)),
        ari=float(adjusted_rand_score(categories, labels)),
        n_categories=n_categories,
    )


def members_by_distance(codes: np.ndarray, labels: np.ndarray, centroid: np.ndarray, cluster: int) -> np.ndarray:
    """Indices of the cluster's members, nearest to `centroid` first (ties broken by index)."""
    members = np.flatnonzero(labels == cluster)
    distances = np.linalg.norm(codes[members] - centroid[None, :], axis=1)
    return members[np.argsort(distances, kind="stable")]
