"""The canonical form: agreement with Google, idempotence, invariance through the model, bounded cost.

    .venv/bin/python bench/bench_canonical.py [--data ../shared/data] [--model models/face] [--decoded 1000]

Prints five groups of figures (docs/benchmarks.md, "Canonical form", records them):

- agreement of ``canonicalize(raw)`` with Google's simplified twin: identical, and with the
  twin's point count in every stroke, out of the raw drawings that have one (266);
- idempotence, ``canonicalize(canonicalize(x)) == canonicalize(x)``, on the simplified ndjson
  drawings (8,600) and on ``--decoded`` decoder outputs turned back into drawings: half decoded
  greedily from the encoded training faces, half sampled at ``SAMPLE_TEMPERATURE``;
- invariance through the model: each test and validation face of ``face.npz`` is shifted,
  scaled, cast to float32, or replaced by its canonical form, preprocessed and encoded; the
  largest move of ``mu`` against the goal (``MU_GOAL`` of the median distance between two
  faces' ``mu``), and how many faces change their nearest cluster;
- issue 12: how many simplified drawings are longer than the model's ``max_seq_len`` after
  preprocessing, and how many still are after ``fit_stroke3_many`` (0);
- the cost of the 100,000-point zigzag of issue 14 (rejected by the point caps before any
  work) and of the worst zigzags the caps accept, preprocessed alone and fitted as the
  server does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from agreement import compare_drawings, raw_simplified_pairs, read_xy

from sketchserve import strokes

if TYPE_CHECKING:
    from sketchserve.runtime import SketchRuntime

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "face"
MU_GOAL = 0.01  # a copy may move mu by at most 1% of the median distance between two faces (issue 17)
SAMPLE_TEMPERATURE = 0.5  # decoder outputs sampled with noise, unlike the smooth greedy ones
ZIGZAG_POINTS = 100_000  # issue 14's adversarial stroke
SHIFT = np.array([1234.5, -987.25])  # an arbitrary offset, not a multiple of anything in the data
RANDOM_SCALES_SEED = 17
SCALE_RANGE = (0.01, 100.0)  # uniform scale factors a client may send (issue 17)

Transform = Callable[[strokes.Drawing], strokes.Drawing]


def _scaled(factor: float, float32: bool = False, shift: np.ndarray | None = None) -> Transform:
    offset = np.zeros(2) if shift is None else shift

    def move(drawing: strokes.Drawing) -> strokes.Drawing:
        moved = [(stroke + offset) * factor for stroke in drawing]
        return [stroke.astype(np.float32).astype(np.float64) for stroke in moved] if float32 else moved

    return move


def _canonical_then(transform: Transform) -> Transform:
    return lambda drawing: transform(strokes.canonicalize(drawing))


def transformations() -> list[tuple[str, Transform]]:
    """The copies of a drawing that must reach the model as the drawing does."""
    rng = np.random.default_rng(RANDOM_SCALES_SEED)
    low, high = np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1])
    random_scale = float(np.exp(rng.uniform(low, high)))
    result: list[tuple[str, Transform]] = [("shift", _scaled(1.0, shift=SHIFT))]
    for factor in (SCALE_RANGE[0], 0.3, 3.0, SCALE_RANGE[1], random_scale):
        result.append((f"scale {factor:.4g}", _scaled(factor)))
        result.append((f"scale {factor:.4g}, float32", _scaled(factor, float32=True)))
    result.append((f"shift, scale {random_scale:.4g}, float32", _scaled(random_scale, float32=True, shift=SHIFT)))
    result.append(("canonical form", _canonical_then(_scaled(1.0))))
    result.append(("canonical form, scale 3, float32", _canonical_then(_scaled(3.0, float32=True))))
    result.append(("canonical form, scale 0.01, float32", _canonical_then(_scaled(0.01, float32=True))))
    return result


@dataclass(frozen=True)
class MuMove:
    transformation: str
    max_move: float  # largest |mu(copy) - mu(original)| over the faces
    goal: float  # MU_GOAL of the median distance between two faces' mu
    cluster_changes: int  # faces whose nearest cluster differs from the original's


def pairwise_median(mu: np.ndarray) -> float:
    """The median Euclidean distance between two rows of ``mu``."""
    pairwise = np.sqrt(((mu[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2))
    return float(np.median(pairwise[np.triu_indices(len(mu), k=1)]))


def mu_moves(runtime: SketchRuntime, faces: Sequence[strokes.Drawing]) -> list[MuMove]:
    """How far each transformation moves the served ``mu`` of ``faces`` (preprocess, then encode)."""
    table = runtime.clusters
    if table is None:
        raise SystemExit(f"{runtime.directory}: no clusters.json (run `sketchserve cluster` first)")

    def encode(drawings: Sequence[strokes.Drawing]) -> np.ndarray:
        return runtime.encode_stroke3(strokes.preprocess_many(drawings), progress=False).astype(np.float64)

    reference = encode(faces)
    goal = MU_GOAL * pairwise_median(reference)
    clusters = table.assign(reference)
    moves = []
    for name, transform in transformations():
        mu = encode([transform(face) for face in faces])
        move = float(np.sqrt(((mu - reference) ** 2).sum(axis=1)).max())
        moves.append(MuMove(name, move, goal, int((table.assign(mu) != clusters).sum())))
    return moves


def idempotent_count(drawings: Sequence[strokes.Drawing]) -> int:
    """How many drawings satisfy ``canonicalize(canonicalize(x)) == canonicalize(x)`` bit for bit."""
    once = strokes.canonicalize_many(drawings)
    twice = strokes.canonicalize_many(once)
    return sum(
        len(a) == len(b) and all(s.shape == t.shape and np.array_equal(s, t) for s, t in zip(a, b))
        for a, b in zip(once, twice)
    )


def face_drawings(data: Path, splits: Sequence[str]) -> list[strokes.Drawing]:
    npz = np.load(data / "sketchrnn" / "face.npz", encoding="latin1", allow_pickle=True)
    return [strokes.stroke3_to_drawing(s3) for split in splits for s3 in npz[split]]


def decoder_outputs(runtime: SketchRuntime, faces: Sequence[strokes.Drawing], count: int) -> list[strokes.Drawing]:
    """``count`` decoded drawings: half greedy, half sampled at SAMPLE_TEMPERATURE (noise seeds 0, 1, ...),
    from encoded faces."""
    codes = runtime.encode_stroke3(strokes.preprocess_many(faces[:count]), progress=False)
    greedy = runtime.decode(codes[: count // 2])
    rest = codes[count // 2 :]
    sampled = runtime.decode(rest, SAMPLE_TEMPERATURE, seeds=list(range(len(rest))))
    return [strokes.stroke3_to_drawing(s3) for s3 in [*greedy, *sampled] if len(s3)]


def zigzag(points: int) -> strokes.Drawing:
    """Issue 14's adversarial stroke: ``points`` points alternating between y = 0 and y = 255."""
    n = np.arange(points)
    return [np.column_stack([np.linspace(0.0, 255.0, points), np.where(n % 2 == 0, 0.0, 255.0)])]


def _served(drawing: strokes.Drawing, max_len: int) -> list[strokes.Fitted]:
    """What the server does to one drawing: preprocess, then fit to the model's maximum."""
    return strokes.fit_stroke3_many(strokes.preprocess_many([drawing]), max_len)


def _seconds(run: Callable[[], object]) -> float:
    start = time.process_time()
    try:
        run()
    except strokes.InvalidDrawingError:
        pass
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SKETCHSERVE_DATA", DEFAULT_DATA)))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--decoded", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="also write the result file here (bench/results.py)")
    args = parser.parse_args(argv)
    from results import Table, finish, new_result

    from sketchserve.runtime import SketchRuntime

    result = new_result("canonical", sys.argv[1:] if argv is None else argv)

    pairs = raw_simplified_pairs(args.data)
    agreement = compare_drawings(strokes.canonicalize_many(pairs.raws), pairs.twins)
    simplified = [
        strokes.drawing_from_xy(xy)
        for path in sorted((args.data / "simplified").glob("*.ndjson"))
        for _, xy in read_xy(path)
    ]
    runtime = SketchRuntime.load(args.model)
    decoded = decoder_outputs(runtime, face_drawings(args.data, ["train"]), args.decoded)
    measures = [
        ["identical to Google's simplified twin", f"{agreement.identical} of {agreement.pairs}"],
        ["twin's point count in every stroke", f"{agreement.same_counts} of {agreement.pairs}"],
        ["idempotent, simplified ndjson", f"{idempotent_count(simplified)} of {len(simplified)}"],
        ["idempotent, decoder outputs", f"{idempotent_count(decoded)} of {len(decoded)}"],
    ]
    faces = face_drawings(args.data, ["test", "valid"])
    moves = Table(
        ["transformation", "max mu move", f"goal ({MU_GOAL:.0%} of the median distance)", "nearest cluster changes"],
        [
            [m.transformation, f"{m.max_move:.4f}", f"{m.goal:.4f}", str(m.cluster_changes)]
            for m in mu_moves(runtime, faces)
        ],
    )
    max_len = runtime.manifest.max_seq_len
    simplified_s3 = strokes.preprocess_many(simplified)
    fitted = strokes.fit_stroke3_many(simplified_s3, max_len)
    measures.append(
        [
            f"longer than max_seq_len={max_len} after preprocessing (simplified ndjson)",
            f"{sum(f.further for f in fitted)} of {len(fitted)}; "
            f"after fitting: {sum(len(f.stroke3) > max_len for f in fitted)}",
        ]
    )
    capped = zigzag(strokes.MAX_STROKE_POINTS)
    worst = capped * (strokes.MAX_DRAWING_POINTS // strokes.MAX_STROKE_POINTS)
    for label, drawing in (
        (f"zigzag of {ZIGZAG_POINTS:,} points (refused)", zigzag(ZIGZAG_POINTS)),
        (f"zigzag of {strokes.MAX_STROKE_POINTS:,} points (the stroke cap)", capped),
        (f"{len(worst)} such strokes (the drawing cap)", worst),
    ):
        measures.append(
            [
                f"{label}: preprocess / and fitted to {max_len} rows",
                f"{_seconds(partial(strokes.preprocess, drawing)):.3f} / "
                f"{_seconds(partial(_served, drawing, max_len)):.3f} CPU s",
            ]
        )
    finish(result)
    result.tables = {"canonical": Table(["measure", "value"], measures), "mu_moves": moves}
    result.notes = [f"mu moves on the {len(faces)} test and validation faces of face.npz, through {args.model.name}."]
    if args.json is not None:
        result.write(args.json)
    machine = result.machine
    out = [f"command: {result.command}", f"load average {machine['load_before']} / {machine['load_after']}"]
    out += ["", result.tables["canonical"].markdown(), "", moves.markdown()]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
