"""`sketchserve gallery`: a page a person opens to decide which groups they like.

    sketchserve gallery MODEL_DIR --data FILES --out DIR

Assigns the drawings to the artifact's stored clusters (clusters.json, made by
`sketchserve cluster`), then writes, per cluster, one PNG (its prototype on a
blue band, a grid of the members nearest the centroid, then, on a red band, the
farthest ones) and the prototype as SVG, and an index.html showing every
cluster side by side with its size.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sketchserve.clusters import CLUSTERS_FILE, ClusterTable
from sketchserve.training.clustering import ClusterError, add_data_arguments, load_labelled_codes
from sketchserve.training.kmeans import members_by_distance

# Members nearest the centroid shown per cluster (a 4 x 4 grid).
DEFAULT_NEAR = 16
# Farthest members shown per cluster: enough to see how loose the group is.
DEFAULT_FAR = 4
# Drawings per row of the near grid and of the far row.
GRID_COLUMNS = 4
# Pixels per drawing cell; the prototype gets twice that.
CELL_PX = 96
PROTOTYPE_CELLS = 2
# Pixels between sections and around the image.
GAP_PX = 12
# Section backgrounds (gray levels of the grayscale PNG): prototype and farthest members on
# tinted bands, nearest members on white, so the three sections read apart at a glance.
PROTOTYPE_BG = 226
NEAR_BG = 255
FAR_BG = 238
SEPARATOR_GRAY = 96
# Dark rule between sections so they stay apart even where the tints are hard to tell.
SEPARATOR_PX = 3
# Categories listed per cluster on the page.
TOP_CATEGORIES = 3


@dataclass(frozen=True)
class ClusterView:
    """What the page shows of one cluster."""

    index: int
    size: int
    prototype: np.ndarray
    near: list[np.ndarray]
    far: list[np.ndarray]
    categories: list[tuple[str, int]]


@dataclass(frozen=True)
class GalleryFiles:
    index_html: Path
    images: list[Path]


def _split_members(order: np.ndarray, n_near: int, n_far: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest `n_near` of a distance-sorted member list, and up to `n_far` farthest ones not among them."""
    near = order[:n_near]
    far = order[max(n_near, len(order) - n_far) :][::-1]
    return near, far


def cluster_views(
    clusters: ClusterTable,
    sketches: Sequence[np.ndarray],
    words: Sequence[str],
    codes: np.ndarray,
    n_near: int,
    n_far: int,
) -> list[ClusterView]:
    """Assign the codes to the stored centroids; one view per stored cluster (possibly with no members)."""
    labels = clusters.assign(codes)
    views = []
    for c in range(clusters.k):
        order = members_by_distance(codes, labels, clusters.centroids[c], c)
        prototype = clusters.prototypes[c]
        near, far = _split_members(order, n_near, n_far)
        views.append(
            ClusterView(
                index=c,
                size=int(order.size),
                prototype=np.zeros((0, 3), np.float32) if prototype is None else prototype,
                near=[sketches[i] for i in near],
                far=[sketches[i] for i in far],
                categories=Counter(words[i] for i in order).most_common(TOP_CATEGORIES),
            )
        )
    return views


def _band(height: int, width: int, level: int) -> np.ndarray:
    return np.full((height, width), level, dtype=np.uint8)


def _grid(drawings: Sequence[np.ndarray], columns: int, cell: int, bg: int) -> np.ndarray:
    from sketchserve.render import render_grid

    if not drawings:
        return _band(cell, columns * cell, bg)
    return np.minimum(render_grid(list(drawings), columns=columns, cell=cell), bg).astype(np.uint8)


def _pad_to(img: np.ndarray, width: int, bg: int) -> np.ndarray:
    left = (width - img.shape[1]) // 2
    out = _band(img.shape[0] + 2 * GAP_PX, width, bg)
    out[GAP_PX : GAP_PX + img.shape[0], left : left + img.shape[1]] = img
    return out


def compose_cluster_image(view: ClusterView) -> np.ndarray:
    """One grayscale image: prototype (tinted band), nearest members grid, farthest members (tinted band)."""
    width = GRID_COLUMNS * CELL_PX + 2 * GAP_PX
    rule = _band(SEPARATOR_PX, width, SEPARATOR_GRAY)
    prototype = _grid([view.prototype], 1, PROTOTYPE_CELLS * CELL_PX, PROTOTYPE_BG)
    sections = [_pad_to(prototype, width, PROTOTYPE_BG), rule]
    sections.append(_pad_to(_grid(view.near, GRID_COLUMNS, CELL_PX, NEAR_BG), width, NEAR_BG))
    if view.far:
        sections += [rule, _pad_to(_grid(view.far, GRID_COLUMNS, CELL_PX, FAR_BG), width, FAR_BG)]
    return np.concatenate(sections, axis=0)


def _card(view: ClusterView, total: int, image: str, svg: str) -> str:
    share = 100.0 * view.size / total if total else 0.0
    cats = ", ".join(f"{html.escape(w)} {n}" for w, n in view.categories)
    empty = "" if view.size else '<p class="empty">no drawing of this data falls in this cluster</p>'
    return (
        f'<figure class="card" id="cluster-{view.index}">'
        f"<figcaption><b>cluster {view.index}</b> &middot; {view.size} drawings ({share:.1f}%)"
        f'<a href="{svg}">prototype SVG</a></figcaption>'
        f'{empty}<img src="{image}" alt="cluster {view.index}: prototype, nearest members, farthest members">'
        f'<p class="cats">{cats}</p></figure>'
    )


PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f4f4f4;color:#222}
h1{font-size:20px;margin:0 0 4px} .meta{font-size:13px;color:#555;margin:0 0 12px}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border:1px solid #999;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card{margin:0;background:#fff;border:1px solid #ccc;padding:8px;width:max-content}
.card img{display:block;width:306px}
figcaption{font-size:14px;margin-bottom:6px} figcaption a{margin-left:8px;font-size:12px}
.cats{font-size:12px;color:#555;margin:6px 0 0;max-width:306px} .empty{color:#a00;font-size:12px}
"""


def index_page(title: str, meta: str, cards: Sequence[str], n_near: int, n_far: int) -> str:
    legend = (
        '<p class="legend">each image, top to bottom: '
        f'<span style="background:rgb({PROTOTYPE_BG},{PROTOTYPE_BG},{PROTOTYPE_BG})">'
        "prototype (the centroid decoded, temperature 0)</span>"
        f'<span style="background:rgb({NEAR_BG},{NEAR_BG},{NEAR_BG})">the {n_near} members nearest the centroid</span>'
        f'<span style="background:rgb({FAR_BG},{FAR_BG},{FAR_BG})">up to {n_far} farthest members</span></p>'
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="meta">{html.escape(meta)}</p>{legend}<div class="grid">{"".join(cards)}</div></body></html>\n'
    )


def page_meta(clusters: ClusterTable, n_drawings: int, data: Sequence[Path]) -> str:
    metrics = clusters.metrics
    parts = [f"k={clusters.k}", f"{n_drawings} drawings from {', '.join(p.name for p in data)}"]
    if metrics.get("silhouette") is not None:
        parts.append(f"silhouette {metrics['silhouette']:.3f} (on the clustering data)")
    if metrics.get("nmi") is not None:
        parts.append(f"NMI {metrics['nmi']:.3f}, ARI {metrics['ari']:.3f}")
    return " \u00b7 ".join(parts)


def write_gallery(
    out: Path, title: str, meta: str, views: Sequence[ClusterView], n_near: int, n_far: int
) -> GalleryFiles:
    """The PNG per cluster, the prototype SVG per cluster, and index.html."""
    from sketchserve.render import encode_png, render_svg

    out.mkdir(parents=True, exist_ok=True)
    total = sum(v.size for v in views)
    images, cards = [], []
    for view in views:
        image, svg = f"cluster_{view.index:02d}.png", f"cluster_{view.index:02d}_prototype.svg"
        (out / image).write_bytes(encode_png(compose_cluster_image(view)))
        (out / svg).write_text(render_svg(view.prototype))
        images.append(out / image)
        cards.append(_card(view, total, image, svg))
    index = out / "index.html"
    index.write_text(index_page(title, meta, cards, n_near, n_far))
    return GalleryFiles(index_html=index, images=images)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sketchserve gallery", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser, "artifact directory with clusters.json")
    parser.add_argument("--out", type=Path, required=True, help="output directory (index.html and images)")
    parser.add_argument("--near", type=int, default=DEFAULT_NEAR, help="nearest members shown per cluster")
    parser.add_argument("--far", type=int, default=DEFAULT_FAR, help="farthest members shown per cluster")
    return parser


def run_gallery(args: argparse.Namespace) -> GalleryFiles:
    from sketchserve.runtime import SketchRuntime

    if args.near < 1 or args.far < 0:
        raise ClusterError(f"--near must be >= 1 and --far >= 0 (got {args.near}, {args.far})")
    runtime = SketchRuntime.load(args.model_dir, "cpu")
    clusters = runtime.clusters
    if clusters is None:
        missing = args.model_dir / CLUSTERS_FILE
        raise ClusterError(f"{missing} does not exist: run `sketchserve cluster {args.model_dir} --data FILES` first")
    data = load_labelled_codes(runtime, args.data, split=args.split, progress=not args.no_progress)
    views = cluster_views(clusters, data.sketches, data.words, data.codes, args.near, args.far)
    title = f"{runtime.manifest.name}: {clusters.k} clusters"
    meta = page_meta(clusters, len(data.sketches), args.data)
    return write_gallery(args.out, title, meta, views, args.near, args.far)


def gallery_main(argv: list[str]) -> int:
    """Entry point of `sketchserve gallery`."""
    from sketchserve.artifact import ArtifactError
    from sketchserve.data import DataFormatError

    args = build_parser().parse_args(argv)
    try:
        files = run_gallery(args)
    except (ClusterError, ArtifactError, DataFormatError, FileNotFoundError) as exc:
        sys.stderr.write(f"sketchserve gallery: {exc}\n")
        return 2
    sys.stdout.write(f"wrote {files.index_html} and {len(files.images)} cluster images\n")
    return 0
