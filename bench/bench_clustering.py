"""Clustering benchmark: do the learned latent codes group drawings by category?

    .venv/bin/python bench/bench_clustering.py --model DIR [DIR ...]         # reuse trained artifacts
    .venv/bin/python bench/bench_clustering.py --train runs/bench --kl-weights 0.1 0.5 --max-minutes 35

On the valid+test splits of four labelled categories (face, pig, alarm clock,
radio), side by side in one run:

- **sketch-rnn mu**: the artifact's encoder `mu`, k-means (k = 4);
- **raster + PCA** (non-learned baseline): 28x28 rasters of the canonical
  drawing, PCA to 50 dimensions, k-means (k = 4). The rasters are drawn at
  several line widths and the best width's score is the baseline (a fair,
  not a weak, baseline).

Prints a markdown table of NMI and ARI against the true categories and the
ratio of the model's NMI to the baseline's; beside them, NMI's spread over
single-start k-means fits, a linear probe's accuracy (how much category the
features carry at all) and how strongly the features' top principal components
follow the drawings' point count, and the k-means fit's silhouette (which needs
no labels: could it pick a checkpoint?). `--json PATH` also writes them, with each category's
drawings per cluster.
With `--train ROOT` the run first trains (`sketchserve train`, one process per
w_KL, one after the other, bounded by --max-minutes each) and exports a model
per w_KL on the four train splits, with `TRAIN_FLAGS` below.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "sketchrnn"
CATEGORIES = ("face", "pig", "alarm clock", "radio")
SPLITS = ("valid", "test")
# One cluster per category.
K = len(CATEGORIES)
# Fixed seed and restarts: the same codes give the same clusters.
RANDOM_STATE = 0
N_INIT = 10
# How much NMI depends on k-means' start: single-start fits with these seeds, min and max NMI reported.
SPREAD_SEEDS = range(10)
# How much category the features carry at all: a logistic-regression probe on standardized features,
# fit on a random half of the drawings (fixed seed) and scored on the other half. Not the goal metric.
PROBE_SEED = 0
PROBE_MAX_ITER = 3000
# How much of the features' main variation is drawing length (point count): checked on the top 5 components.
LENGTH_PCS = 5
# Baseline: 28x28 rasters (the size of Quick, Draw!'s own bitmaps), PCA to 50 dimensions.
RASTER_SIZE = 28
PCA_DIMS = 50
# Canonical drawings span 0..255; rasterized on a 256-pixel canvas, then area-averaged to 28x28.
CANVAS_PX = 256
# Line widths (canvas pixels) tried for the baseline; its best NMI is reported.
LINE_WIDTHS = (2, 4, 8, 16, 32)
# The goal: the model's NMI at least twice the baseline's.
GOAL_RATIO = 2.0
# The benchmark model: smaller than the face model (a 2-core CPU budget), latent 64.
TRAIN_FLAGS = ("--enc-hidden", "128", "--dec-hidden", "256", "--latent-size", "64")


@dataclass(frozen=True)
class Score:
    method: str
    nmi: float
    ari: float
    seconds: float
    nmi_min: float  # over single-start k-means fits (SPREAD_SEEDS): partitions of near-equal inertia
    nmi_max: float
    probe_accuracy: float
    length_correlation: float  # the largest |Pearson r| of a top principal component with the point count
    silhouette: float  # of the n_init k-means fit: an unsupervised score (no labels), to compare with NMI
    clusters_by_category: dict[str, list[int]]  # the n_init fit: each category's drawings per cluster


@dataclass(frozen=True)
class EvalSet:
    sketches: list[np.ndarray]
    words: list[str]
    points: np.ndarray  # each sketch's point count (rows of its stroke-3)


def load_eval_set(data_dir: Path) -> EvalSet:
    """Canonical stroke-3 drawings and their category, valid then test split of every category."""
    from sketchserve.data import iter_drawings

    sketches: list[np.ndarray] = []
    words: list[str] = []
    paths = [str(data_dir / f"{c}.npz") for c in CATEGORIES]
    for split in SPLITS:
        for record in iter_drawings(paths, split=split):
            sketches.append(record.stroke3)
            words.append(record.word)
    return EvalSet(sketches=sketches, words=words, points=np.array([len(s) for s in sketches]))


def kmeans_labels(features: np.ndarray, random_state: int = RANDOM_STATE, n_init: int = N_INIT) -> np.ndarray:
    return KMeans(n_clusters=K, random_state=random_state, n_init=n_init).fit_predict(features)


def length_correlation(features: np.ndarray, points: np.ndarray) -> float:
    """How much of the features' main variation is the drawing's length: the largest |r| between one of
    the LENGTH_PCS top principal components and the point count (a nuisance the categories share)."""
    count = min(LENGTH_PCS, features.shape[1])
    components = PCA(n_components=count, random_state=RANDOM_STATE).fit_transform(features)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant component has no correlation: 0
        return float(max(np.nan_to_num(abs(np.corrcoef(components[:, i], points)[0, 1])) for i in range(count)))


def score(method: str, features: np.ndarray, words: list[str], started: float, points: np.ndarray) -> Score:
    features = features.astype(np.float64)
    labels = kmeans_labels(features)
    seconds = time.perf_counter() - started
    spread = [normalized_mutual_info_score(words, kmeans_labels(features, seed, 1)) for seed in SPREAD_SEEDS]
    names = np.asarray(words)
    return Score(
        method=method,
        nmi=float(normalized_mutual_info_score(words, labels)),
        ari=float(adjusted_rand_score(words, labels)),
        seconds=seconds,
        nmi_min=float(min(spread)),
        nmi_max=float(max(spread)),
        probe_accuracy=probe_accuracy(features, names),
        length_correlation=length_correlation(features, points),
        silhouette=float(silhouette_score(features, labels)),
        clusters_by_category={c: np.bincount(labels[names == c], minlength=K).tolist() for c in CATEGORIES},
    )


def probe_accuracy(features: np.ndarray, names: np.ndarray) -> float:
    order = np.random.default_rng(PROBE_SEED).permutation(len(names))
    fit, held = order[: len(order) // 2], order[len(order) // 2 :]
    scaled = StandardScaler().fit_transform(features)
    probe = LogisticRegression(max_iter=PROBE_MAX_ITER).fit(scaled[fit], names[fit])
    return float(probe.score(scaled[held], names[held]))


def raster(s3: np.ndarray, line_width: int) -> np.ndarray:
    """A canonical stroke-3 drawing (0..255 frame) as a 28x28 float image in [0, 1]."""
    points = np.cumsum(np.asarray(s3, dtype=np.float64)[:, :2], axis=0)
    points = np.vstack([np.zeros((1, 2)), points])
    points -= points.min(axis=0)  # stroke-3 drops the position: back to the top-left aligned frame
    ends = np.flatnonzero(np.asarray(s3)[:, 2] > 0.5) + 2
    image = Image.new("L", (CANVAS_PX, CANVAS_PX))
    pen = ImageDraw.Draw(image)
    for stroke in np.split(points, ends[ends < len(points)]):
        if len(stroke) > 1:
            pen.line([tuple(p) for p in stroke], fill=255, width=line_width, joint="curve")
        elif len(stroke) == 1:
            pen.point(tuple(stroke[0]), fill=255)
    small = image.resize((RASTER_SIZE, RASTER_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def baseline_scores(sketches: list[np.ndarray], words: list[str], points: np.ndarray) -> list[Score]:
    scores = []
    for width in LINE_WIDTHS:
        started = time.perf_counter()
        rasters = np.stack([raster(s, width).ravel() for s in sketches])
        reduced = PCA(n_components=PCA_DIMS, random_state=RANDOM_STATE).fit_transform(rasters)
        scores.append(score(f"28x28 raster (line {width}px/256) + PCA {PCA_DIMS}", reduced, words, started, points))
    return scores


def model_score(model_dir: Path, sketches: list[np.ndarray], words: list[str], points: np.ndarray) -> Score:
    from sketchserve.runtime import SketchRuntime

    started = time.perf_counter()
    runtime = SketchRuntime.load(model_dir, "cpu", with_clusters=False)
    codes = runtime.encode_stroke3(sketches, label="encode")
    latent = runtime.manifest.latent_size
    return score(f"sketch-rnn mu ({latent}-d, {model_dir.name})", codes, words, started, points)


def ratio(model: Score, baselines: list[Score]) -> float:
    best = max(b.nmi for b in baselines)
    return model.nmi / best if best > 0 else float("inf")


def train_models(
    root: Path, data_dir: Path, kl_weights: list[float], minutes: float, threads: int, extra: list[str]
) -> list[Path]:
    """Train and export one model per w_KL on the categories' train splits; returns the model directories.

    ``extra`` flags go to every ``sketchserve train`` after ``TRAIN_FLAGS`` (e.g. ``--encoder-pool last+mean``).
    """
    data = [str(data_dir / f"{c}.npz") for c in CATEGORIES]
    models = []
    for weight in kl_weights:
        run, model = root / f"kl{weight:g}" / "run", root / f"kl{weight:g}" / "model"
        cli = [sys.executable, "-m", "sketchserve.cli"]
        train = [*cli, "train", "--data", *data, "--out", str(run), *TRAIN_FLAGS, *extra, "--kl-weight", str(weight)]
        subprocess.run([*train, "--threads", str(threads), "--max-minutes", str(minutes)], check=True)
        subprocess.run([*cli, "export", str(run), "--out", str(model), "--name", f"bench-kl{weight:g}"], check=True)
        models.append(model)
    return models


def _row(s: Score, note: str) -> str:
    cells = [
        f"{s.method}{note}",
        f"{s.nmi:.3f}",
        f"{s.ari:.3f}",
        f"{s.nmi_min:.3f}-{s.nmi_max:.3f}",
        f"{s.probe_accuracy:.3f}",
        f"{s.length_correlation:.2f}",
        f"{s.silhouette:.3f}",
        f"{s.seconds:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def table(models: list[Score], baselines: list[Score], n: int) -> str:
    best = max(baselines, key=lambda s: s.nmi)
    lines = [
        f"{n} drawings ({', '.join(CATEGORIES)}; splits {'+'.join(SPLITS)}), "
        f"k-means k={K}, random_state={RANDOM_STATE}, n_init={N_INIT}",
        "",
        f"| features | NMI | ARI | NMI, {len(SPREAD_SEEDS)} single k-means starts (min-max) | probe accuracy "
        f"| top-{LENGTH_PCS} PC vs point count, max abs r | silhouette | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(m, "") for m in models]
    lines += [_row(s, " (best baseline)" if s is best else "") for s in baselines]
    lines.append("")
    for m in models:
        r = ratio(m, baselines)
        verdict = "met" if r >= GOAL_RATIO else "NOT met"
        lines.append(f"NMI ratio {m.method} / best baseline = {r:.2f} (goal >= {GOAL_RATIO:.0f}: {verdict})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", type=Path, nargs="+", help="artifact directories (trained on the four categories' train splits)"
    )
    source.add_argument("--train", type=Path, help="train one model per --kl-weights into this folder first")
    parser.add_argument("--kl-weights", type=float, nargs="+", default=[0.1], help="w_KL of the models --train trains")
    parser.add_argument("--max-minutes", type=float, default=35.0, help="training budget per --train model")
    parser.add_argument(
        "--train-args",
        default="",
        help="more `sketchserve train` flags for --train, one string (e.g. '--encoder-pool last+mean')",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with the four sketch-rnn .npz files"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    missing = [c for c in CATEGORIES if not (args.data_dir / f"{c}.npz").is_file()]
    if missing:
        sys.stderr.write(f"bench_clustering: {args.data_dir} lacks {', '.join(m + '.npz' for m in missing)}\n")
        return 2
    model_dirs = args.model or train_models(
        args.train, args.data_dir, args.kl_weights, args.max_minutes, args.threads, shlex.split(args.train_args)
    )
    data = load_eval_set(args.data_dir)
    models = [model_score(m, data.sketches, data.words, data.points) for m in model_dirs]
    baselines = baseline_scores(data.sketches, data.words, data.points)
    sys.stdout.write(table(models, baselines, len(data.sketches)))
    if args.json is not None:
        summary = {
            "models": [asdict(m) | {"ratio": ratio(m, baselines)} for m in models],
            "baselines": [asdict(b) for b in baselines],
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
