"""The stroke formats of sketchserve, their conversions and canonical preprocessing.

Three formats, used by training, server and client alike (numpy only):

**Drawing** (``Drawing = list[np.ndarray]``): what Quick, Draw! ndjson and the
proto's ``Sketch`` hold: a list of strokes, each an ``(n, 2)`` float64 array of
absolute ``x, y`` points (``n >= 1``) in any units (y grows downwards).

**stroke-3** (``(N, 3)`` float32 rows ``(dx, dy, pen_lifted)``), the sketch-rnn
format of Ha & Eck (2017) and of the sketch-rnn ``.npz`` files. The drawing's
first point is the origin and has no row of its own: row ``i`` is the offset
from point ``i`` to point ``i + 1`` of the concatenated strokes, and
``pen_lifted = 1`` when point ``i + 1`` is the last point of its stroke (the
pen leaves the paper after it). This is what the real ``.npz`` files hold: their
row 0 is distributed exactly like the other in-stroke offsets (median length 25
on ``face.npz``, 81% with ``dx < 0``), not like an absolute position, and the
files encode a drawing whose first stroke is a dot as a first row ``(0, 0, 1)``.
A drawing of N + 1 points therefore has N rows. Two consequences, both
documented behaviour:

- A first stroke of a single point would lose its pen lift, so
  ``drawing_to_stroke3`` writes it as a dot of two equal points: first row
  ``(0, 0, 1)``, as the ``.npz`` files do. A one-point drawing is ``[(0, 0, 1)]``.
- The absolute position is dropped; ``stroke3_to_drawing(s3, origin=...)`` puts
  the first point at ``origin`` (default ``(0, 0)``).

**stroke-5** (``(L, 5)`` float32 rows ``(dx, dy, p_down, p_up, p_end)``), the
network's format (magenta ``sketch_rnn/utils.py`` ``to_big_strokes``): a stroke-3
row ``(dx, dy, p)`` becomes ``(dx, dy, 1 - p, p, 0)``; rows after the drawing are
the end padding ``END_ROW = (0, 0, 0, 0, 1)``. The model's input prepends
``START_TOKEN = (0, 0, 1, 0, 0)``; ``stroke3_to_stroke5`` does not (the encoder
takes stroke-5 without it, see docs/contracts.md).

**Canonical preprocessing** (``canonicalize``, ``preprocess``) redoes what Google
did to make the simplified Quick, Draw! data, so that any drawing, raw or
already simplified, reaches the model in the same frame:

1. align to the top-left: subtract the minimum x and the minimum y;
2. scale uniformly so the longer side spans 0-255 (``CANONICAL_SIZE``);
3. resample every stroke at 1-unit spacing along its arc length (the samples
   at arc lengths 0, 1, 2, ... below the stroke's length, plus its end point);
4. simplify every stroke with Ramer-Douglas-Peucker, epsilon 2.0 (the distance
   to the line through the chord; the first farthest point splits; a point is
   kept when its distance is strictly greater than epsilon);
5. round to integers.

**One canonical form** (issue 17): ``canonicalize`` is a projection,
``canonicalize(canonicalize(x)) == canonicalize(x)`` bit for bit for every drawing.
Steps 1-5 alone are not: rounding moves a kept point that lay just over epsilon
from its chord to just under it, RDP drops extreme points (the extent falls below
255: 29% of Google's drawings), and a second pass resamples the integer polyline
between its corners (on 8,600 simplified drawings steps 1-5 give back only 218,
and their own output 957). So a canonical form is defined by a property, and
steps 1-5 are only the way to one:

- it is an integer drawing inside the 0-255 box, every stroke two points or more,
  whose aligned extent ``e`` lies in ``[MIN_CANONICAL_EXTENT, 255]`` and is the
  largest such extent at which the shape has integer points;
- it is *stable*: RDP at ``STABLE_EPSILON`` on its own points keeps them all.

``canonicalize`` first asks whether the drawing is, up to shift and uniform scale,
such a stable integer drawing: after steps 1-2 it looks for the largest ``e`` in
that range at which every point is within ``INTEGER_TOLERANCE`` of an integer.
If so, that integer drawing is the canonical form (kept at its own position when
the input already is it, inside the box; else aligned). Otherwise steps 3-5 run,
and their result is stabilized (drop the points RDP at ``STABLE_EPSILON`` drops;
a drawing whose extent falls below the minimum is scaled back to 255 and rounded)
and taken at its class's largest integer extent. Both branches end in the
property, and a drawing with the property is recognized and kept, hence the
projection. Recognition is exact under float noise (far below the tolerance) and
cannot take the wrong extent (a non-integer ``y * e / e'`` misses an integer by at
least 1/255), so a canonical form shifted, scaled by any factor and rounded to
float32 canonicalizes to itself at the top-left, the same stroke-3.

**Copies of integer drawings** (issue 17 item 2): before anything else, a drawing
that is a shifted, uniformly scaled and possibly float32-rounded copy of an integer
drawing is replaced by that integer drawing, aligned at 0 and divided by the gcd
of its coordinates (``_on_lattice``). Real inputs are integers (Quick, Draw! raw
and simplified pixels, the int16 offsets of the sketch-rnn ``.npz`` files), so
every position, scale and precision of a real drawing continues from the same
exact integers and gives the bit-identical canonical form. An integer drawing
takes an exact path (its gcd). Any other is searched for the smallest integer
extent ``e <= MAX_LATTICE_EXTENT`` (2,048) at which all its aligned points, times
``e`` over its extent, lie within float32 noise of integers: ``LATTICE_HALF_ULPS``
(16) float32 half-ulps of its largest |coordinate|, at most ``MAX_LATTICE_TOLERANCE``
(0.05 units of the integer drawing). The search is vectorized over the batch:
every extent is tried on 8 coordinates spread over each drawing, the smallest
that fits them on all points, and the next ones only where it fails. Drawings
off every such lattice (decoder outputs, drawings of extent over 2,048 after a
float32 round trip, a shift so large that float32 lost the units) continue
from their own float points: after step 2 their coordinates are snapped to a
2^-20 (about 1e-6) grid (``SNAP_GRID``), so a shifted or uniformly scaled
float64 copy continues as the bit-identical array, but a float32 copy can still
cross a threshold of steps 3-5. A non-lattice drawing that happens to lie
within the tolerance of a lattice is moved onto it: by at most 16 half-ulps of
its largest |coordinate| (2.4e-4 canonical units times largest |coordinate| over
extent), far below the rounding of step 5. Through the bundled face model every
shift, scale in [0.01, 100], float32 rounding and canonical-form copy of the
300 test and validation faces of ``face.npz`` gives exactly the face's ``mu``
(bench/bench_canonical.py). Every step works on each drawing independently, so
a result does not depend on the batch.

Degenerate inputs: consecutive repeated points of a stroke count once; a
stroke whose points are all equal (a single point, or a tap) becomes a dot of
two equal points, as dots are in Google's simplified data, so every canonical
stroke has at least two points. A drawing with zero extent (all points equal)
maps every point to ``(0, 0)`` (no division by zero, no NaN).

Bounded cost (issue 14): RDP is quadratic on adversarial strokes (a zigzag peels
one point per pass), so ``canonicalize`` and ``preprocess`` refuse, before any
work, a stroke of more than ``MAX_STROKE_POINTS`` (512) raw points or a drawing
of more than ``MAX_DRAWING_POINTS`` (2,048) (``InvalidDrawingError`` naming the
drawing and the stroke; ``check_point_caps`` for callers that validate first).
The raw Quick, Draw! data has at most 335 and 634. The worst accepted drawing,
preprocessed and fitted to a model's maximum, costs about 0.15 CPU-seconds.

**Fitting to a model's maximum** (issue 12 item 2, ``fit_stroke3_many``): a model
takes at most ``max_seq_len`` stroke-3 rows. ``C_max(x)`` is ``preprocess(x)`` when
that fits; else it is simplified further, deterministically: RDP on the canonical
form at the first epsilon of ``fit_epsilons()`` (2.5, then x1.25 each step up to
the 0-255 box's diagonal) that keeps at most ``max_len + 1`` points and whose
``preprocess`` fits; when even two points a stroke are too many, the
``max_len // 2`` longest strokes (arc length) are kept as their end points. The
result is a canonical form that fits, so ``C_max`` is a projection as ``C`` is.
One RDP tree at epsilon 0 (``_rdp_thresholds``: each point's least split distance
on its path) gives RDP's result at every epsilon, so fitting costs one tree. On
the 8,600 simplified drawings, 113 are longer than 128 rows after preprocessing;
fitted, none is. The server and ``SketchRuntime.encode_stroke3`` (so ``sketchserve
cluster``, ``gallery``, ``--from-cluster``, ``sample --around``) fit; training's own
data filtering does not.

Agreement with Google: on the 266 drawings of ``../shared/data/raw/`` whose
simplified twin is present, the canonical form has the twin's point count in
every stroke for 257 (97%) and is identical to it for 239 (90%); matched points
lie 0.017 units apart on average (tests/test_strokes.py and
bench/bench_canonical.py measure it). Steps 1-5 alone give 258 and 240: the
stabilization changes one more drawing. The rest differ in RDP
decisions on points at almost exactly epsilon. Idempotence: 8,600 of the 8,600
simplified drawings and 1,000 of 1,000 decoder outputs.

Validation (``validate_drawing``, ``drawing_from_xy``) raises
``InvalidDrawingError`` naming the field, like ``strokes[2].x``, for: no strokes,
a stroke with no points, x/y of different lengths, NaN or infinite coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Drawing = list[np.ndarray]

CANONICAL_SIZE = 255.0  # the longer side of a canonical drawing spans 0..255, as in Google's simplified data
RESAMPLE_SPACING = 1.0  # arc-length spacing of the resampling step, in canonical units
RDP_EPSILON = 2.0  # Ramer-Douglas-Peucker tolerance used for the simplified Quick, Draw! data
# ~1e-6 binary grid: removes float64 noise (shifted/scaled copies stay bit-identical), keeps dyadic values exact
SNAP_GRID = 2.0**-20
# a canonical drawing keeps every point under RDP at this tolerance (no point on or next to its chord):
# Google's simplified drawings mostly do (8,600: 99.4% at 0), dense raw strokes do not
STABLE_EPSILON = 0.05
# smallest extent a canonical form keeps: Google's shrinks below 255 where RDP drops an extreme (8,600: >= 238)
MIN_CANONICAL_EXTENT = 240
# recognizing a scaled copy of an integer drawing: far above float32 noise (~3e-5 in the 0-255 frame), far below
# 1 / (2 * 255), the least by which a non-integer y * e / e' (integers, e' <= 255) misses an integer
INTEGER_TOLERANCE = 1e-3
# raw points canonicalization accepts per stroke and per drawing, checked before any work: they bound RDP's
# quadratic worst case (a zigzag peels one point per pass) to ~0.15 CPU s with fitting (bench/bench_canonical.py);
# the raw Quick, Draw! data has <= 335 and <= 634
MAX_STROKE_POINTS = 512
MAX_DRAWING_POINTS = 2048
# recognizing a shifted, scaled, float32-rounded copy of an integer drawing (issue 17): the largest integer extent
# searched for (real inputs are integer pixels: the raw Quick, Draw! data spans <= 1,448 in face.npz), and the noise
# allowed, in float32 half-ulps of the input's largest |coordinate| (one rounding of each value, and of the shift and
# the extent they are measured from, leave < 4; 16 leaves margin for a client that rounds twice)
MAX_LATTICE_EXTENT = 2048
LATTICE_HALF_ULPS = 16.0
FLOAT32_HALF_ULP = 2.0**-24
# noise allowed on a lattice point, in units of the integer drawing, at most: well below 1/2, so that no point can
# round to the wrong integer; an input noisier than this (a huge shift) is not recognized
MAX_LATTICE_TOLERANCE = 0.05
LATTICE_PROBES = 8  # distinct coordinates each candidate extent is tried on before all points are checked
MAX_EXACT_INTEGER = 2.0**31  # integer inputs up to this aligned extent take the exact (gcd) path
MAX_CUMSUM_TABLE = 2**22  # cells (32 MiB) of the padded per-stroke cumsum table before falling back to a loop
CHUNK_DRAWINGS = 256  # drawings processed together: amortizes numpy calls, bounds the padded cumsum buffer
# fitting a drawing to a model's maximum (``fit_stroke3_many``): each further simplification's RDP epsilon is this
# factor times the previous one, starting from RDP_EPSILON; fine enough that a drawing just over the maximum loses
# little (the shared data's longest need <= 3x), and <= 25 steps to the epsilon that leaves two points a stroke
FIT_EPSILON_GROWTH = 1.25
FIT_MAX_EPSILON = CANONICAL_SIZE * 2.0**0.5  # the 0-255 box's diagonal: RDP keeps only each stroke's end points
START_TOKEN = (0.0, 0.0, 1.0, 0.0, 0.0)  # stroke-5 start-of-sequence row the model prepends
END_ROW = (0.0, 0.0, 0.0, 0.0, 1.0)  # stroke-5 padding row after the drawing's last point
PEN_LIFTED_THRESHOLD = 0.5  # stroke-3 pen values above this count as lifted (tolerates float inputs)


class InvalidDrawingError(ValueError):
    """A drawing that cannot be processed; ``field`` names the offending part.

    ``index`` is the drawing's position when it came from a batch
    (``canonicalize_many``, ``preprocess_many``), else None.
    """

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        prefix = "" if index is None else f"drawing {index}: "
        super().__init__(f"{prefix}{field}: {message}")
        self.field = field
        self.message = message
        self.index = index


def _stroke_array(stroke: object, index: int, check_finite: bool = True) -> np.ndarray:
    field = f"strokes[{index}]"
    try:
        array = np.asarray(stroke, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidDrawingError(field, f"not an array of numbers ({err})") from None
    if array.ndim != 2 or array.shape[1] != 2:
        raise InvalidDrawingError(field, f"expected shape (n, 2) of x/y points, got {array.shape}")
    if array.shape[0] == 0:
        raise InvalidDrawingError(field, "stroke has no points")
    if not check_finite or np.isfinite(array).all():
        return array
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        axis = "xy"[col]
        raise InvalidDrawingError(f"{field}.{axis}", f"value {array[row, col]} at point {row} is not finite")
    return array


def validate_drawing(drawing: Sequence[np.ndarray]) -> None:
    """Raise ``InvalidDrawingError`` unless ``drawing`` is a valid Drawing."""
    _checked_strokes(drawing)


def _checked_strokes(drawing: Sequence[np.ndarray], check_finite: bool = True) -> Drawing:
    if drawing is None or len(drawing) == 0:
        raise InvalidDrawingError("strokes", "drawing has no strokes")
    return [_stroke_array(stroke, i, check_finite) for i, stroke in enumerate(drawing)]


def _checked_batch(drawings: Sequence[Sequence[np.ndarray]]) -> list[Drawing]:
    """Validated drawings; errors carry the drawing's index. Finiteness is checked
    once over all points, and only a failing batch is searched for the culprit."""
    checked = []
    for index, drawing in enumerate(drawings):
        try:
            checked.append(check_point_caps(_checked_strokes(drawing, check_finite=False)))
        except InvalidDrawingError as err:
            raise InvalidDrawingError(err.field, err.message, index) from None
    if checked and not np.isfinite(np.concatenate([s for d in checked for s in d])).all():
        for index, drawing in enumerate(checked):
            try:
                _checked_strokes(drawing)
            except InvalidDrawingError as err:
                raise InvalidDrawingError(err.field, err.message, index) from None
    return checked


def check_point_caps(drawing: Drawing) -> Drawing:
    """``drawing``, unless a stroke or the whole has more raw points than canonicalization accepts."""
    for index, stroke in enumerate(drawing):
        if len(stroke) > MAX_STROKE_POINTS:
            raise InvalidDrawingError(
                f"strokes[{index}]", f"has {len(stroke)} points, more than the {MAX_STROKE_POINTS} accepted"
            )
    total = sum(len(stroke) for stroke in drawing)
    if total > MAX_DRAWING_POINTS:
        raise InvalidDrawingError("strokes", f"has {total} points, more than the {MAX_DRAWING_POINTS} accepted")
    return drawing


def drawing_from_xy(strokes: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Drawing:
    """Build a validated Drawing from ``[(xs, ys), ...]`` (the ndjson/proto layout)."""
    if strokes is None or len(strokes) == 0:
        raise InvalidDrawingError("strokes", "drawing has no strokes")
    result: Drawing = [_xy_points(stroke, i) for i, stroke in enumerate(strokes)]
    if not np.isfinite(np.concatenate(result)).all():
        _checked_strokes(result)
    return result


def _xy_points(stroke: tuple[Sequence[float], Sequence[float]], index: int) -> np.ndarray:
    field = f"strokes[{index}]"
    if len(stroke) < 2:
        raise InvalidDrawingError(field, "expected x and y lists")
    xs, ys = stroke[0], stroke[1]
    try:
        points = np.array((xs, ys), dtype=np.float64)
    except (TypeError, ValueError):
        points = None
    if points is None or points.ndim != 2:
        for axis, values in (("x", xs), ("y", ys)):
            if np.ndim(values) != 1:
                raise InvalidDrawingError(f"{field}.{axis}", "expected a flat list of numbers")
        if len(xs) != len(ys):
            raise InvalidDrawingError(f"{field}.y", f"has {len(ys)} values but x has {len(xs)}")
        raise InvalidDrawingError(field, "x and y must be lists of numbers")
    if points.shape[1] == 0:
        raise InvalidDrawingError(field, "stroke has no points")
    return points.T


@dataclass(frozen=True)
class _Flat:
    """A batch of drawings as flat arrays (the vectorized pipeline's working form)."""

    points: np.ndarray  # (P, 2) float64, all points of all strokes of all drawings
    stroke_lengths: np.ndarray  # (S,) int64, points per stroke
    drawing_strokes: np.ndarray  # (D,) int64, strokes per drawing


class _IntegerForms(NamedTuple):
    """Drawings as integer drawings (rounded, aligned; meaningful where ``found``)."""

    points: np.ndarray  # (P, 2) float64 integers
    found: np.ndarray  # (D,) bool: the drawing is a scaled, shifted copy of an integer drawing


class _Strokes(NamedTuple):
    """Strokes as one point array and the number of points in each."""

    points: np.ndarray
    lengths: np.ndarray


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)


def _flatten(drawings: Sequence[Drawing]) -> _Flat:
    strokes = [stroke for drawing in drawings for stroke in drawing]
    return _Flat(
        points=np.concatenate(strokes, axis=0),
        stroke_lengths=np.fromiter((len(s) for s in strokes), dtype=np.int64, count=len(strokes)),
        drawing_strokes=np.fromiter((len(d) for d in drawings), dtype=np.int64, count=len(drawings)),
    )


def _unflatten(flat: _Flat) -> list[Drawing]:
    strokes = np.split(flat.points, np.cumsum(flat.stroke_lengths)[:-1])
    bounds = np.concatenate(([0], np.cumsum(flat.drawing_strokes))).tolist()
    return [strokes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _snap(values: np.ndarray) -> np.ndarray:
    return np.round(values / SNAP_GRID) * SNAP_GRID


def _segmented_cumsum(values: np.ndarray, lengths: np.ndarray, max_table: int = MAX_CUMSUM_TABLE) -> np.ndarray:
    """Cumulative sums restarting at each segment, bit-identical to summing each alone.

    Rows of a zero-padded table are summed at once; when one long segment would
    make that table too large, the segments are summed one by one instead.
    """
    starts = _starts(lengths)
    width = int(lengths.max())
    if len(lengths) * width > max_table:
        return np.concatenate([np.cumsum(values[a : a + n]) for a, n in zip(starts.tolist(), lengths.tolist())])
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(starts, lengths)
    table = np.zeros((len(lengths), width), dtype=values.dtype)
    table[rows, cols] = values
    np.cumsum(table, axis=1, out=table)
    return table[rows, cols]


def _normalize(flat: _Flat) -> np.ndarray:
    point_counts = np.add.reduceat(flat.stroke_lengths, _starts(flat.drawing_strokes))
    point_starts = _starts(point_counts)
    mins = np.minimum.reduceat(flat.points, point_starts, axis=0)
    extent = (np.maximum.reduceat(flat.points, point_starts, axis=0) - mins).max(axis=1)
    positive = extent > 0
    scale = np.zeros_like(extent)
    scale[positive] = CANONICAL_SIZE / extent[positive]
    shifted = flat.points - np.repeat(mins, point_counts, axis=0)
    return _snap(shifted * np.repeat(scale, point_counts)[:, None])


def _dedupe(points: np.ndarray, stroke_lengths: np.ndarray) -> _Strokes:
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    keep[_starts(stroke_lengths)] = True
    return _Strokes(points[keep], np.add.reduceat(keep, _starts(stroke_lengths)).astype(np.int64))


def _resample_candidates(points: np.ndarray, stroke_lengths: np.ndarray) -> _Strokes:
    """The 1-unit resampling of every stroke, reduced to the samples RDP can keep.

    The full resampling has the samples at arc lengths 0, 1, 2, ... < L plus the
    end point. A sample's distance to any chord is |linear| along the input
    segment it lies on, so its maximum over that segment's samples is at the
    first or the last of them: RDP on the first and last sample of every input
    segment (plus the end point) keeps exactly the points it keeps on all samples,
    computed by the same formula, at a fraction of the cost.
    """
    starts = _starts(stroke_lengths)
    ends = starts + stroke_lengths - 1
    steps = np.zeros(len(points))
    steps[1:] = np.hypot(points[1:, 0] - points[:-1, 0], points[1:, 1] - points[:-1, 1])
    steps[starts] = 0.0
    arc = _segmented_cumsum(steps, stroke_lengths)
    is_end = np.zeros(len(points), dtype=bool)
    is_end[ends] = True
    next_arc = np.where(is_end, 0.0, np.roll(arc, -1))
    first = np.ceil(arc / RESAMPLE_SPACING)
    last = np.ceil(next_arc / RESAMPLE_SPACING) - 1.0
    counts = np.where(is_end, 1, np.clip(last - first + 1.0, 0.0, 2.0).astype(np.int64))
    vertex = np.repeat(np.arange(len(points)), counts)
    second = np.zeros(len(vertex), dtype=bool)
    second[1:] = vertex[1:] == vertex[:-1]
    k = np.where(second, last[vertex], first[vertex]) * RESAMPLE_SPACING
    sample = ~is_end[vertex]
    out = points[vertex].copy()
    seg = vertex[sample]
    fraction = (k[sample] - arc[seg]) / steps[seg + 1]
    out[sample] = points[seg] + fraction[:, None] * (points[seg + 1] - points[seg])
    return _Strokes(out, np.add.reduceat(counts, starts).astype(np.int64))


def _rdp_keep(points: np.ndarray, stroke_lengths: np.ndarray, epsilon: float) -> np.ndarray:
    """(P,) bool: the points Ramer-Douglas-Peucker at ``epsilon`` keeps in every stroke."""
    return _rdp_thresholds(points, stroke_lengths, epsilon) > epsilon


def _rdp_thresholds(points: np.ndarray, stroke_lengths: np.ndarray, epsilon: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on every stroke at once, one tree level per pass.

    Each pass takes every open chord ``(a, b)`` of every stroke, measures the
    distance of the points between them to the line through the chord, and
    splits the chords whose farthest point (the first, on ties) lies farther
    than ``epsilon`` at that point. The farthest point does not depend on
    epsilon, only whether it splits, so one tree serves every larger epsilon:
    each point's threshold is the least split distance on its path from the
    stroke's chord (end points: infinity; points never split: 0), and RDP at any
    ``e >= epsilon`` keeps exactly the points whose threshold exceeds ``e``.
    """
    x, y = np.ascontiguousarray(points[:, 0]), np.ascontiguousarray(points[:, 1])
    starts = _starts(stroke_lengths)
    ends = starts + stroke_lengths - 1
    thresholds = np.zeros(len(points))
    thresholds[starts] = np.inf
    thresholds[ends] = np.inf
    a, b = starts[stroke_lengths >= 3], ends[stroke_lengths >= 3]
    bound = np.full(len(a), np.inf)
    while a.size:
        counts = b - a - 1
        offsets = np.cumsum(counts) - counts
        owner = np.repeat(np.arange(len(a)), counts)
        idx = (a + 1 - offsets)[owner] + np.arange(len(owner))
        ax, ay = x[a], y[a]
        chord_x, chord_y = x[b] - ax, y[b] - ay
        rel_x = x[idx] - ax[owner]
        rel_y = y[idx] - ay[owner]
        chord_len = np.hypot(chord_x, chord_y)
        degenerate = chord_len == 0
        dist = np.abs(chord_x[owner] * rel_y - chord_y[owner] * rel_x) / np.where(degenerate, 1.0, chord_len)[owner]
        if degenerate.any():
            at_point = degenerate[owner]
            dist[at_point] = np.hypot(rel_x[at_point], rel_y[at_point])
        peak = np.maximum.reduceat(dist, offsets)
        split = peak > epsilon
        at_peak = np.where(dist == peak[owner], idx, len(points))
        mids = np.minimum.reduceat(at_peak, offsets)[split]
        inherited = np.minimum(bound[split], peak[split])
        thresholds[mids] = inherited
        new_a = np.concatenate((a[split], mids))
        new_b = np.concatenate((mids, b[split]))
        new_bound = np.concatenate((inherited, inherited))
        wide = new_b - new_a >= 2
        a, b, bound = new_a[wide], new_b[wide], new_bound[wide]
    return thresholds


def _point_counts(stroke_lengths: np.ndarray, drawing_strokes: np.ndarray) -> np.ndarray:
    return np.add.reduceat(stroke_lengths, _starts(drawing_strokes)).astype(np.int64)


def _google_simplification(flat: _Flat) -> _Flat:
    """Steps 3-5 (resample, RDP at ``RDP_EPSILON``, round) of normalized drawings, dots doubled."""
    points, lengths = _dedupe(flat.points, flat.stroke_lengths)
    points, lengths = _resample_candidates(points, lengths)
    keep = _rdp_keep(points, lengths, RDP_EPSILON)
    kept_lengths = np.add.reduceat(keep, _starts(lengths)).astype(np.int64)
    dots = kept_lengths == 1
    repeats = np.ones(int(kept_lengths.sum()), dtype=np.int64)
    repeats[_starts(kept_lengths)[dots]] = 2
    final = np.repeat(np.round(_snap(points[keep])), repeats, axis=0)
    return _Flat(final, kept_lengths + dots, flat.drawing_strokes)


def _integer_forms(normalized: np.ndarray, point_counts: np.ndarray) -> _IntegerForms:
    """Each normalized drawing as the integer drawing of the largest extent in
    ``[MIN_CANONICAL_EXTENT, 255]`` it is a scaled copy of, where there is one."""
    starts = _starts(point_counts)
    best = np.zeros(len(point_counts))
    for extent in range(MIN_CANONICAL_EXTENT, int(CANONICAL_SIZE) + 1):
        scaled = normalized * (extent / CANONICAL_SIZE)
        error = np.abs(scaled - np.round(scaled)).max(axis=1)
        best[np.maximum.reduceat(error, starts) <= INTEGER_TOLERANCE] = extent
    points = np.round(normalized * np.repeat(best / CANONICAL_SIZE, point_counts)[:, None])
    return _IntegerForms(points, best > 0)


def _stable(flat: _Flat) -> np.ndarray:
    """(D,) bool: every stroke has two points or more and RDP at ``STABLE_EPSILON`` keeps every point."""
    keep = _rdp_keep(flat.points, flat.stroke_lengths, STABLE_EPSILON)
    short = np.repeat(flat.stroke_lengths < 2, flat.stroke_lengths)
    dropped = np.add.reduceat(~keep | short, _starts(_point_counts(flat.stroke_lengths, flat.drawing_strokes)))
    return dropped == 0


def _rescale_small(flat: _Flat) -> _Flat:
    """Integer drawings whose extent fell below ``MIN_CANONICAL_EXTENT`` scaled back to 255 and rounded."""
    counts = _point_counts(flat.stroke_lengths, flat.drawing_strokes)
    starts = _starts(counts)
    mins = np.minimum.reduceat(flat.points, starts, axis=0)
    extent = (np.maximum.reduceat(flat.points, starts, axis=0) - mins).max(axis=1)
    small = (extent > 0) & (extent < MIN_CANONICAL_EXTENT)
    if not small.any():
        return flat
    scale = np.where(small, CANONICAL_SIZE / np.where(small, extent, 1.0), 1.0)
    shift = np.where(small[:, None], mins, 0.0)
    points = np.round((flat.points - np.repeat(shift, counts, axis=0)) * np.repeat(scale, counts)[:, None])
    return _Flat(points, flat.stroke_lengths, flat.drawing_strokes)


def _stabilize(flat: _Flat) -> _Flat:
    """Integer drawings made stable: drop the points RDP at ``STABLE_EPSILON`` drops
    until it drops none, rescaling a drawing whose extent falls below the minimum.
    Every pass but the last drops a point, so it ends after at most P + 1 passes."""
    while True:
        flat = _rescale_small(flat)
        keep = _rdp_keep(flat.points, flat.stroke_lengths, STABLE_EPSILON)
        if keep.all():
            return flat
        lengths = np.add.reduceat(keep, _starts(flat.stroke_lengths)).astype(np.int64)
        flat = _Flat(flat.points[keep], lengths, flat.drawing_strokes)


def _with_position(original: _Flat, forms: np.ndarray) -> np.ndarray:
    """``forms`` (aligned integer drawings), except where the original is the same
    integer drawing inside the 0-255 box at another position: there the original."""
    counts = _point_counts(original.stroke_lengths, original.drawing_strokes)
    starts = _starts(counts)
    points = original.points
    inside = (points >= 0) & (points <= CANONICAL_SIZE) & (points == np.round(points))
    same = np.all((points - np.repeat(np.minimum.reduceat(points, starts, axis=0), counts, axis=0)) == forms, axis=1)
    keep_original = np.minimum.reduceat((inside.all(axis=1) & same).astype(np.int8), starts) == 1
    return np.where(np.repeat(keep_original, counts)[:, None], points, forms)


def _select(flat: _Flat, points: np.ndarray, chosen: np.ndarray) -> _Flat:
    """The drawings ``chosen`` ((D,) bool) of a batch, with ``points`` in place of its points."""
    counts = _point_counts(flat.stroke_lengths, flat.drawing_strokes)
    stroke_owner = np.repeat(np.arange(len(chosen)), flat.drawing_strokes)
    return _Flat(
        points[np.repeat(chosen, counts)],
        flat.stroke_lengths[chosen[stroke_owner]],
        flat.drawing_strokes[chosen],
    )


def _canonical_forms(flat: _Flat) -> _Flat:
    """Integer drawings as the canonical forms of their own similarity class."""
    stable = _stabilize(flat)
    counts = _point_counts(stable.stroke_lengths, stable.drawing_strokes)
    forms = _integer_forms(_normalize(stable), counts)
    return _Flat(_with_position(stable, forms.points), stable.stroke_lengths, stable.drawing_strokes)


def _primitive(integers: np.ndarray, point_counts: np.ndarray) -> np.ndarray:
    """Aligned integer drawings, each divided by the gcd of its coordinates (unchanged when all are 0)."""
    divisors = np.gcd.reduceat(np.gcd.reduce(integers.astype(np.int64), axis=1), _starts(point_counts))
    return integers / np.repeat(np.maximum(divisors, 1), point_counts)[:, None]


class _Candidates(NamedTuple):
    """Integer extents that fit every probe of a drawing: ``(drawing, extent - 1)`` pairs, by drawing then extent."""

    drawing: np.ndarray
    extent_index: np.ndarray


def _probe_candidates(ratios: np.ndarray, coord_counts: np.ndarray, tolerances: np.ndarray) -> _Candidates:
    """The extents ``e`` at which ``LATTICE_PROBES`` coordinates of each drawing, spread over it, times ``e`` lie
    within ``tolerances[d, e - 1]`` of integers: one probe over all extents, the next only where those fit."""
    spread = (np.arange(LATTICE_PROBES) + 0.5) / LATTICE_PROBES
    probes = ratios[_starts(coord_counts)[:, None] + (spread[None, :] * coord_counts[:, None]).astype(np.int64)]
    extents = np.arange(1, MAX_LATTICE_EXTENT + 1, dtype=np.float64)
    first = probes[:, :1] * extents[None, :]
    drawing, extent_index = np.nonzero(np.abs(first - np.round(first)) <= tolerances)
    for k in range(1, LATTICE_PROBES):
        values = probes[drawing, k] * extents[extent_index]
        fits = np.abs(values - np.round(values)) <= tolerances[drawing, extent_index]
        drawing, extent_index = drawing[fits], extent_index[fits]
    return _Candidates(drawing, extent_index)


def _lattice_extents(ratios: np.ndarray, coord_counts: np.ndarray, tolerance_per_unit: np.ndarray) -> np.ndarray:
    """(D,): for each drawing (its coordinates over its extent, ``coord_counts`` of them), the smallest integer
    extent ``e <= MAX_LATTICE_EXTENT`` at which every coordinate times ``e`` lies within ``tolerance_per_unit * e``
    (at most ``MAX_LATTICE_TOLERANCE``) of an integer; 0 where there is none. Vectorized over the drawings: the
    probes leave few candidates, the smallest is checked on all coordinates, and only a drawing whose smallest
    fails goes on, one candidate at a time."""
    extents = np.arange(1, MAX_LATTICE_EXTENT + 1, dtype=np.float64)
    tolerances = np.minimum(tolerance_per_unit[:, None] * extents[None, :], MAX_LATTICE_TOLERANCE)
    candidates = _probe_candidates(ratios, coord_counts, tolerances)
    result = np.zeros(len(coord_counts), dtype=np.int64)
    owners, first = np.unique(candidates.drawing, return_index=True)
    result[owners] = candidates.extent_index[first] + 1
    coord_starts = _starts(coord_counts)
    scaled = ratios * np.repeat(result, coord_counts)
    allowed = np.repeat(tolerances[np.arange(len(result)), np.maximum(result - 1, 0)], coord_counts)
    fits = np.minimum.reduceat((np.abs(scaled - np.round(scaled)) <= allowed).astype(np.int8), coord_starts) == 1
    for index in np.flatnonzero((result > 0) & ~fits).tolist():
        values = ratios[coord_starts[index] : coord_starts[index] + coord_counts[index]]
        result[index] = 0
        for extent_index in candidates.extent_index[candidates.drawing == index][1:].tolist():
            error = np.abs(values * (extent_index + 1) - np.round(values * (extent_index + 1))).max()
            if error <= tolerances[index, extent_index]:
                result[index] = extent_index + 1
                break
    return result


def _on_lattice(flat: _Flat) -> np.ndarray:
    """Every drawing that is a shifted, uniformly scaled (and float32-rounded) copy of an integer drawing, as that
    integer drawing aligned at 0 with coprime coordinates, so that all such copies continue bit-identical; the
    other drawings unchanged. Integer drawings take an exact path (divide by the gcd); others are searched for the
    integer extent ``e <= MAX_LATTICE_EXTENT`` their points fit within float32 noise (``_lattice_extents``)."""
    counts = _point_counts(flat.stroke_lengths, flat.drawing_strokes)
    starts = _starts(counts)
    mins = np.minimum.reduceat(flat.points, starts, axis=0)
    aligned = flat.points - np.repeat(mins, counts, axis=0)
    extent = np.maximum.reduceat(aligned, starts, axis=0).max(axis=1)
    magnitude = np.maximum.reduceat(np.abs(flat.points), starts, axis=0).max(axis=1)
    integral = np.minimum.reduceat((aligned == np.round(aligned)).all(axis=1).astype(np.int8), starts) == 1
    exact = integral & (extent < MAX_EXACT_INTEGER)
    searched = ~exact & (extent > 0)
    if searched.any():
        rows = np.repeat(searched, counts)
        noise = LATTICE_HALF_ULPS * FLOAT32_HALF_ULP * magnitude[searched] / extent[searched]
        ratios = aligned[rows] / np.repeat(extent[searched], counts[searched])[:, None]
        found = np.zeros(len(counts), dtype=np.int64)
        found[searched] = _lattice_extents(ratios.ravel(), 2 * counts[searched], noise)
        aligned[rows] = np.round(ratios * np.repeat(found[searched], counts[searched])[:, None])
        exact |= found > 0
    result = flat.points.copy()
    if exact.any():
        rows = np.repeat(exact, counts)
        result[rows] = _primitive(aligned[rows], counts[exact])
    return result


def _canonical_flat(drawings: Sequence[Drawing]) -> _Flat:
    original = _flatten(drawings)
    flat = _Flat(_on_lattice(original), original.stroke_lengths, original.drawing_strokes)
    normalized = _normalize(flat)
    counts = _point_counts(flat.stroke_lengths, flat.drawing_strokes)
    forms = _integer_forms(normalized, counts)
    taken = forms.found.copy()
    if taken.any():
        taken[taken] = _stable(_select(flat, forms.points, taken))
    if taken.all():
        return _Flat(_with_position(original, forms.points), flat.stroke_lengths, flat.drawing_strokes)
    simplified = _canonical_forms(_google_simplification(_select(flat, normalized, ~taken)))
    result = _unflatten(_Flat(_with_position(original, forms.points), flat.stroke_lengths, flat.drawing_strokes))
    for index, drawing in zip(np.flatnonzero(~taken).tolist(), _unflatten(simplified)):
        result[index] = drawing
    return _flatten(result)


def _chunks(items: Sequence[Drawing]) -> list[Sequence[Drawing]]:
    return [items[i : i + CHUNK_DRAWINGS] for i in range(0, len(items), CHUNK_DRAWINGS)]


def canonicalize(drawing: Sequence[np.ndarray]) -> Drawing:
    """Google's simplification of one drawing (see the module docstring)."""
    return canonicalize_many([drawing])[0]


def canonicalize_many(drawings: Sequence[Sequence[np.ndarray]]) -> list[Drawing]:
    """``canonicalize`` of every drawing, vectorized across the batch; same results."""
    checked = _checked_batch(drawings)
    return [d for chunk in _chunks(checked) for d in _unflatten(_canonical_flat(chunk))]


def _flat_to_stroke3(flat: _Flat) -> list[np.ndarray]:
    first_strokes = _starts(flat.drawing_strokes)
    dot_first = np.zeros(len(flat.stroke_lengths), dtype=np.int64)
    dot_first[first_strokes] = flat.stroke_lengths[first_strokes] == 1
    repeats = np.ones(len(flat.points), dtype=np.int64)
    repeats[_starts(flat.stroke_lengths)] += dot_first
    points = np.repeat(flat.points, repeats, axis=0)
    lengths = flat.stroke_lengths + dot_first
    rows = np.zeros((len(points), 3))
    rows[1:, :2] = points[1:] - points[:-1]
    rows[np.cumsum(lengths) - 1, 2] = 1.0
    drawing_points = np.add.reduceat(lengths, first_strokes)
    real = np.ones(len(points), dtype=bool)
    real[_starts(drawing_points)] = False
    return np.split(rows[real].astype(np.float32), np.cumsum(drawing_points - 1)[:-1])


def drawing_to_stroke3(drawing: Sequence[np.ndarray]) -> np.ndarray:
    """A Drawing as stroke-3 (first point at the origin; see the module docstring)."""
    checked = _checked_strokes(drawing)
    return _flat_to_stroke3(_flatten([checked]))[0]


def check_stroke3(s3: np.ndarray) -> np.ndarray:
    array = np.asarray(s3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"stroke-3 must have shape (N, 3), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("stroke-3 holds NaN or infinite values")
    return array


def stroke3_to_drawing(s3: np.ndarray, origin: tuple[float, float] = (0.0, 0.0)) -> Drawing:
    """A stroke-3 as a Drawing whose first point is ``origin``; N rows give N + 1 points."""
    array = check_stroke3(s3)
    points = np.zeros((len(array) + 1, 2))
    points[0] = origin
    points[1:] = np.asarray(origin, dtype=np.float64) + np.cumsum(array[:, :2].astype(np.float64), axis=0)
    lift_after = np.flatnonzero(array[:, 2] > PEN_LIFTED_THRESHOLD) + 2
    bounds = lift_after[lift_after < len(points)]
    return [stroke for stroke in np.split(points, bounds) if len(stroke)]


def preprocess(drawing: Sequence[np.ndarray]) -> np.ndarray:
    """The canonical stroke-3 of a drawing: ``drawing_to_stroke3(canonicalize(drawing))``."""
    return preprocess_many([drawing])[0]


def preprocess_many(drawings: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """``preprocess`` of every drawing, vectorized across the batch; same results."""
    checked = _checked_batch(drawings)
    return [s3 for chunk in _chunks(checked) for s3 in _flat_to_stroke3(_canonical_flat(chunk))]


class Fitted(NamedTuple):
    """A canonical stroke-3 fitted to a model's maximum; ``further``: it was simplified further to fit."""

    stroke3: np.ndarray
    further: bool


def fit_epsilons() -> list[float]:
    """The RDP tolerances ``fit_stroke3_many`` tries, in order, ending at ``FIT_MAX_EPSILON``."""
    steps = int(np.ceil(np.log(FIT_MAX_EPSILON / RDP_EPSILON) / np.log(FIT_EPSILON_GROWTH)))
    return [min(RDP_EPSILON * FIT_EPSILON_GROWTH**k, FIT_MAX_EPSILON) for k in range(1, steps + 1)]


def _longest_strokes(drawing: Drawing, count: int) -> Drawing:
    """The ``count`` strokes of greatest arc length (the earlier on ties), in drawing order."""
    lengths = [float(np.hypot(*np.diff(stroke, axis=0).T).sum()) for stroke in drawing]
    chosen = sorted(sorted(range(len(drawing)), key=lambda i: -lengths[i])[:count])
    return [drawing[i] for i in chosen]


def _canonical_stroke3(flat: _Flat) -> np.ndarray:
    """``preprocess`` of one validated drawing without the point caps: fitting's candidates have at most
    ``max_len + 1`` points, and a canonical form over the stroke cap (resampling can keep more points than
    the input had) must still be fitted."""
    return _flat_to_stroke3(_canonical_flat(_unflatten(flat)))[0]


def _fit_one(s3: np.ndarray, max_len: int) -> np.ndarray:
    """``s3`` (canonical, longer than ``max_len``) simplified further: see ``fit_stroke3_many``."""
    flat = _flatten([stroke3_to_drawing(s3)])
    thresholds = _rdp_thresholds(flat.points, flat.stroke_lengths, 0.0)
    for epsilon in fit_epsilons():
        keep = thresholds > epsilon
        if int(keep.sum()) - 1 > max_len:
            continue
        lengths = np.add.reduceat(keep, _starts(flat.stroke_lengths)).astype(np.int64)
        candidate = _canonical_stroke3(_Flat(flat.points[keep], lengths, flat.drawing_strokes))
        if len(candidate) <= max_len:
            return candidate
    ends = [stroke[[0, -1]] for stroke in _longest_strokes(_unflatten(flat)[0], max_len // 2)]
    return _canonical_stroke3(_flatten([ends]))


def fit_stroke3_many(strokes3: Sequence[np.ndarray], max_len: int) -> list[Fitted]:
    """``C_max``: canonical stroke-3 sketches (``preprocess_many``'s), each fitted to ``max_len`` rows.

    A sketch of ``max_len`` rows or fewer is returned as it is. A longer one is
    simplified further, deterministically: ``preprocess(RDP_eps(d))`` (``d`` its
    drawing) at the first ``eps`` of ``fit_epsilons()`` where RDP keeps at most
    ``max_len + 1`` points and the result fits. When even two points a stroke are
    too many (more than ``max_len // 2`` strokes), the ``max_len // 2`` longest
    strokes are kept as their two end points, which always fits. Every result is
    a canonical form that fits, so it comes back unchanged: fitting is a
    projection too, ``C_max(C_max(x)) == C_max(x)``. Cost: one RDP tree of the
    canonical form (``_rdp_thresholds``) serves every epsilon; only candidates
    that fit are canonicalized again.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 (one stroke of two points), got {max_len}")
    return [Fitted(s3, False) if len(s3) <= max_len else Fitted(_fit_one(s3, max_len), True) for s3 in strokes3]


def stroke3_to_stroke5(s3: np.ndarray, max_len: int) -> np.ndarray:
    """``(max_len, 5)`` stroke-5 without the start token, padded with ``END_ROW``."""
    array = check_stroke3(s3)
    if len(array) > max_len:
        raise ValueError(f"stroke-3 has {len(array)} points, more than max_len={max_len}")
    result = np.zeros((max_len, 5), dtype=np.float32)
    lifted = (array[:, 2] > PEN_LIFTED_THRESHOLD).astype(np.float32)
    result[: len(array), :2] = array[:, :2]
    result[: len(array), 2] = 1.0 - lifted
    result[: len(array), 3] = lifted
    result[len(array) :] = END_ROW
    return result


class PaddedStroke5(NamedTuple):
    """A batch of sketches as the model takes them: stroke-5 ``x`` ``(B, T, 5)`` float32, ``lengths`` ``(B,)`` int64."""

    x: np.ndarray
    lengths: np.ndarray


def pad_stroke5(sketches: Sequence[np.ndarray]) -> PaddedStroke5:
    """Stroke-3 sketches as one stroke-5 batch, padded with ``END_ROW`` to the longest."""
    lengths = np.array([len(s) for s in sketches], dtype=np.int64)
    width = int(lengths.max())
    return PaddedStroke5(np.stack([stroke3_to_stroke5(s, width) for s in sketches]), lengths)


def stroke5_to_stroke3(s5: np.ndarray) -> np.ndarray:
    """Stroke-3 of the rows before the first end row (pen state = the largest of the three)."""
    array = np.asarray(s5)
    if array.ndim != 2 or array.shape[1] != 5:
        raise ValueError(f"stroke-5 must have shape (L, 5), got {array.shape}")
    state = np.argmax(array[:, 2:], axis=1)
    ends = np.flatnonzero(state == 2)
    length = int(ends[0]) if ends.size else len(array)
    result = np.zeros((length, 3), dtype=np.float32)
    result[:, :2] = array[:length, :2]
    result[:, 2] = state[:length] == 1
    return result
