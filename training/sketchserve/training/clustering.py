"""`sketchserve cluster`: k-means on an artifact's latent codes, stored in the artifact.

    sketchserve cluster MODEL_DIR --data FILES [--k K | --k-range 2:12] [--split train]

Encodes the drawings (batched, progress on stderr), fits k-means on `mu`
(scikit-learn, fixed random_state), chooses k by silhouette when --k is not
given (and prints why), then writes MODEL_DIR/clusters.json (format:
``sketchserve.clusters``; centroids, sizes, exemplars, greedy-decoded prototypes,
the encoder's sha256, metrics, data provenance) and rewrites the manifest's
checksums. Results go to stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from sketchserve.clusters import CLUSTERS_FILE, CLUSTERS_FORMAT_VERSION
from sketchserve.training.kmeans import (
    ClusterError,
    KMeansFit,
    KSelection,
    choose_k,
    fit_kmeans,
    label_agreement,
    members_by_distance,
    silhouette,
    validate_k,
)

if TYPE_CHECKING:
    from sketchserve.runtime import SketchRuntime

# Members nearest the centroid stored per cluster: enough for a gallery row and for servers to show.
DEFAULT_EXEMPLARS = 8
# Fixed seed: the same data and model give the same clusters.
DEFAULT_RANDOM_STATE = 0
# 10 k-means++ restarts: scikit-learn's classic default, stable on a few thousand codes.
DEFAULT_N_INIT = 10
# Range searched when --k is not given: 2 groups up to a dozen a person can still look at.
DEFAULT_K_RANGE = "2:12"


@dataclass(frozen=True)
class LabelledCodes:
    """Drawings of a data set with their latent codes (rows of `codes` match `sketches`)."""

    sketches: list[np.ndarray]
    words: list[str]
    codes: np.ndarray
    files: list[dict[str, Any]] = field(default_factory=list)


class KRange(NamedTuple):
    """Inclusive range of k searched by silhouette."""

    low: int
    high: int


@dataclass(frozen=True)
class ClusterOptions:
    k: int | None
    k_range: KRange
    random_state: int = DEFAULT_RANDOM_STATE
    n_init: int = DEFAULT_N_INIT
    n_exemplars: int = DEFAULT_EXEMPLARS


def parse_k_range(text: str) -> KRange:
    """'2:12' -> (2, 12), inclusive; raises ClusterError on anything else."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ClusterError(f"--k-range must look like LOW:HIGH (e.g. 2:12), got {text!r}")
    low, high = int(parts[0]), int(parts[1])
    if low < 2 or high < low:
        raise ClusterError(f"--k-range needs 2 <= LOW <= HIGH, got {text!r}")
    return KRange(low, high)


def load_labelled_codes(
    runtime: SketchRuntime, paths: Sequence[Path], *, split: str | None, progress: bool
) -> LabelledCodes:
    """Read every drawing of `paths` (one split or all) and encode it with the artifact."""
    from sketchserve.artifact import sha256_file
    from sketchserve.data import iter_drawings
    from sketchserve.strokes import fit_stroke3_many

    sketches: list[np.ndarray] = []
    words: list[str] = []
    for record in iter_drawings([str(p) for p in paths], split=split):
        sketches.append(record.stroke3)
        words.append(record.word)
    if not sketches:
        where = f" (split {split!r})" if split else ""
        raise ClusterError(f"no drawings in {', '.join(str(p) for p in paths)}{where}")
    # fitted here too (encode_stroke3 fits) so that the stored sketches, exemplars among them, are what was encoded
    sketches = [f.stroke3 for f in fit_stroke3_many(sketches, runtime.manifest.max_seq_len)]
    codes = runtime.encode_stroke3(sketches, progress=progress)
    files = [{"path": str(p), "sha256": sha256_file(p)} for p in paths]
    return LabelledCodes(sketches=sketches, words=words, codes=codes, files=files)


def fit_clusters(codes: np.ndarray, options: ClusterOptions) -> KSelection:
    """The k-means solution: the given k, or the best silhouette over options.k_range."""
    if options.k is not None:
        validate_k(options.k, codes.shape[0])
        fit = fit_kmeans(codes, options.k, random_state=options.random_state, n_init=options.n_init)
        return KSelection(fit=fit, scores=[], reason=f"k={options.k} given with --k")
    low, high = options.k_range
    return choose_k(codes, range(low, high + 1), random_state=options.random_state, n_init=options.n_init)


# What an empty decoded prototype is stored as: a single dot, still a valid stroke-3.
DOT_STROKE3 = ((0.0, 0.0, 1.0),)


def as_stroke3_list(sketch: np.ndarray) -> list[list[float]]:
    """A stroke-3 array as JSON rows [dx, dy, pen_lifted] (integers where they are); never empty."""
    rows = np.asarray(sketch, dtype=np.float64).reshape(-1, 3)
    if rows.shape[0] == 0:
        rows = np.asarray(DOT_STROKE3)
    return [[float(v) if not float(v).is_integer() else int(v) for v in row] for row in rows]


def cluster_document(
    data: LabelledCodes,
    selection: KSelection,
    prototypes: Sequence[np.ndarray],
    options: ClusterOptions,
    *,
    split: str | None,
    encoder_sha256: str,
) -> dict[str, Any]:
    """The clusters.json content (docs/contracts.md), with metrics and provenance."""
    fit = selection.fit
    order = [members_by_distance(data.codes, fit.labels, fit.centroids[c], c) for c in range(fit.k)]
    sil = silhouette(data.codes, fit.labels, random_state=options.random_state)
    agreement = label_agreement(fit.labels, data.words)
    metrics: dict[str, Any] = {"silhouette": sil, "inertia": fit.inertia, "dropped_empty_clusters": fit.dropped_empty}
    if agreement is not None:
        metrics.update({"nmi": agreement.nmi, "ari": agreement.ari})
    if selection.scores:
        metrics["k_selection"] = {
            "method": "highest mean silhouette",
            "reason": selection.reason,
            "scores": [{"k": s.k, "silhouette": s.silhouette, "inertia": s.inertia} for s in selection.scores],
        }
    return {
        "format_version": CLUSTERS_FORMAT_VERSION,
        "encoder_sha256": encoder_sha256,
        "k": fit.k,
        "centroids": fit.centroids.astype(float).tolist(),
        "sizes": fit.sizes,
        "exemplars": [[as_stroke3_list(data.sketches[i]) for i in idx[: options.n_exemplars]] for idx in order],
        "prototypes": [as_stroke3_list(p) for p in prototypes],
        "categories": [dict(Counter(data.words[i] for i in idx).most_common()) for idx in order],
        "metrics": metrics,
        "kmeans": {"on": "mu", "random_state": options.random_state, "n_init": options.n_init},
        "data": {
            "files": data.files,
            "split": split,
            "count": len(data.sketches),
            "categories": dict(Counter(data.words).most_common()),
        },
    }


def write_clusters(model_dir: Path, document: dict[str, Any]) -> None:
    """Write clusters.json and recompute the manifest's checksums."""
    from sketchserve.artifact import read_manifest, write_manifest

    (model_dir / CLUSTERS_FILE).write_text(json.dumps(document, separators=(",", ":")) + "\n")
    write_manifest(model_dir, read_manifest(model_dir))


def member_lengths(sketches: list[np.ndarray], fit: KMeansFit) -> list[int]:
    """Each cluster's median point count: how long its prototype is drawn by a length-conditioned decoder."""
    lengths = np.array([len(s) for s in sketches])
    return [int(np.median(lengths[fit.labels == c])) for c in range(fit.k)]


def format_report(selection: KSelection, document: dict[str, Any]) -> str:
    """What `cluster` prints: the k table (when searched), the choice, sizes and metrics."""
    lines: list[str] = []
    if selection.scores:
        lines.append(f"{'k':>3}  {'silhouette':>10}  {'inertia':>12}")
        for s in selection.scores:
            sil = "n/a" if s.silhouette is None else f"{s.silhouette:.4f}"
            mark = "  <- chosen" if s.k == selection.fit.k + selection.fit.dropped_empty else ""
            lines.append(f"{s.k:>3}  {sil:>10}  {s.inertia:>12.2f}{mark}")
    lines.append(f"chose {selection.reason}")
    metrics = document["metrics"]
    if selection.fit.dropped_empty:
        lines.append(f"dropped {selection.fit.dropped_empty} empty cluster(s): fewer distinct codes than k")
    lines.append(f"k={document['k']} sizes={document['sizes']}")
    sil = metrics["silhouette"]
    lines.append("silhouette=" + ("n/a" if sil is None else f"{sil:.4f}"))
    if "nmi" in metrics:
        n_cat = len(document["data"]["categories"])
        lines.append(f"against {n_cat} category labels: NMI={metrics['nmi']:.4f} ARI={metrics['ari']:.4f}")
    else:
        lines.append("NMI/ARI: n/a (the data holds one category)")
    return "\n".join(lines) + "\n"


def add_data_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """MODEL_DIR, --data, --split and --no-progress: what cluster and gallery share."""
    parser.add_argument("model_dir", type=Path, help=model_help)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help=".npz / .ndjson drawing files")
    parser.add_argument(
        "--split", default=None, help="only this split (train/valid/test; ndjson by key hash); default all"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sketchserve cluster", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser, "artifact directory (clusters.json is written into it)")
    parser.add_argument("--k", type=int, default=None, help="number of clusters; default: best silhouette in --k-range")
    parser.add_argument(
        "--k-range", default=DEFAULT_K_RANGE, help=f"LOW:HIGH searched without --k (default {DEFAULT_K_RANGE})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_RANDOM_STATE, help="k-means random_state")
    parser.add_argument("--n-init", type=int, default=DEFAULT_N_INIT, help="k-means restarts")
    parser.add_argument("--exemplars", type=int, default=DEFAULT_EXEMPLARS, help="members stored per cluster")
    return parser


def run_cluster(args: argparse.Namespace) -> str:
    """The whole command; returns the report it prints."""
    from sketchserve.artifact import ENCODER_FILE
    from sketchserve.runtime import SketchRuntime

    options = ClusterOptions(
        k=args.k,
        k_range=parse_k_range(args.k_range),
        random_state=args.seed,
        n_init=args.n_init,
        n_exemplars=args.exemplars,
    )
    if options.k is not None and options.k < 2:
        raise ClusterError(f"--k must be at least 2 (got {options.k})")
    if options.n_init < 1 or options.n_exemplars < 0:
        raise ClusterError(f"--n-init must be >= 1 and --exemplars >= 0 (got {options.n_init}, {options.n_exemplars})")
    # Without its clusters: they are what this command replaces (and may be stale or malformed).
    runtime = SketchRuntime.load(args.model_dir, "cpu", with_clusters=False)
    data = load_labelled_codes(runtime, args.data, split=args.split, progress=not args.no_progress)
    selection = fit_clusters(data.codes, options)
    prototypes = runtime.decode(selection.fit.centroids, targets=member_lengths(data.sketches, selection.fit))
    document = cluster_document(
        data, selection, prototypes, options, split=args.split, encoder_sha256=runtime.manifest.files[ENCODER_FILE]
    )
    write_clusters(args.model_dir, document)
    return format_report(selection, document) + f"wrote {args.model_dir / CLUSTERS_FILE}\n"


def cluster_main(argv: list[str]) -> int:
    """Entry point of `sketchserve cluster`."""
    from sketchserve.artifact import ArtifactError
    from sketchserve.data import DataFormatError

    args = build_parser().parse_args(argv)
    try:
        sys.stdout.write(run_cluster(args))
    except (ClusterError, ArtifactError, DataFormatError, FileNotFoundError) as exc:
        sys.stderr.write(f"sketchserve cluster: {exc}\n")
        return 2
    return 0
