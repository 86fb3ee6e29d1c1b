"""The packed sketch form of the wire contract (proto ``sketch.v1.PackedSketches``): numpy only.

A request's sketches as one buffer and two count lists, instead of one protobuf
message per stroke and one float field per coordinate:

- ``points``: every point of every stroke of every sketch, in order, as
  little-endian float32 pairs ``x, y`` (``POINT_BYTES`` = 8 bytes a point);
- ``stroke_points``: the number of points of each stroke, in order over all
  sketches (each >= 1; they sum to the number of points);
- ``sketch_strokes``: the number of strokes of each sketch (each >= 1; they sum
  to the number of strokes);
- ``ids``: none, or one caller-chosen id per sketch.

Coordinates mean what a readable ``Sketch``'s do (absolute x/y in any unit).
``unpack`` checks everything with vectorised numpy (no per-point Python) and
names the sketch and stroke at fault exactly as the readable form's checks do
(``sketches[3].strokes[1].y: value nan at point 4 is not finite``), so callers
see one error language whichever form they send.

Embeddings (``mu``, ``sigma``) travel packed as little-endian float32 rows of
the model's latent size (``pack_rows`` / ``unpack_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sketchserve.strokes import Drawing

POINT_DTYPE = np.dtype("<f4")  # little-endian float32, whatever the host's byte order
POINT_BYTES = 2 * POINT_DTYPE.itemsize  # x and y
COUNT_DTYPE = np.int64  # counts are summed and compared; int64 cannot overflow at any message size


class PackedFormatError(ValueError):
    """A packed buffer that does not describe sketches: ``field`` names the part, ``sketch`` the sketch if known."""

    def __init__(self, field: str, message: str, sketch: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.sketch = sketch


@dataclass(frozen=True)
class PackedSketches:
    points: bytes
    stroke_points: np.ndarray  # (S,) points per stroke
    sketch_strokes: np.ndarray  # (D,) strokes per sketch
    ids: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.sketch_strokes)


def pack(drawings: Sequence[Drawing], ids: Sequence[str] = ()) -> PackedSketches:
    """Drawings (lists of ``(n, 2)`` arrays) as one packed buffer; ``ids``: none, or one per drawing."""
    if ids and len(ids) != len(drawings):
        raise ValueError(f"{len(ids)} ids for {len(drawings)} sketches (give none or one per sketch)")
    strokes = [stroke for drawing in drawings for stroke in drawing]
    points = np.concatenate(strokes).astype(POINT_DTYPE) if strokes else np.zeros((0, 2), POINT_DTYPE)
    return PackedSketches(
        points=points.tobytes(),
        stroke_points=np.array([len(s) for s in strokes], dtype=COUNT_DTYPE),
        sketch_strokes=np.array([len(d) for d in drawings], dtype=COUNT_DTYPE),
        ids=tuple(ids),
    )


def _counts(values: Sequence[int] | np.ndarray, field: str) -> np.ndarray:
    counts = np.asarray(values, dtype=COUNT_DTYPE).reshape(-1)
    if len(counts) and counts.min() < 1:
        index = int(np.argmax(counts < 1))
        raise PackedFormatError(f"{field}[{index}]", f"is {int(counts[index])}; every count must be at least 1")
    return counts


def _stroke_owner(stroke: int, sketch_starts: np.ndarray) -> tuple[int, int]:
    """(sketch, stroke within it) of global stroke index ``stroke``."""
    sketch = int(np.searchsorted(sketch_starts, stroke, side="right") - 1)
    return sketch, stroke - int(sketch_starts[sketch])


def unpack(packed: PackedSketches) -> list[Drawing]:
    """The drawings a packed buffer holds (float64 ``(n, 2)`` strokes), or ``PackedFormatError`` naming the fault."""
    stroke_points = _counts(packed.stroke_points, "packed.stroke_points")
    sketch_strokes = _counts(packed.sketch_strokes, "packed.sketch_strokes")
    if len(packed.points) % POINT_BYTES:
        raise PackedFormatError(
            "packed.points", f"{len(packed.points)} bytes is not a whole number of {POINT_BYTES}-byte x/y points"
        )
    n_points = len(packed.points) // POINT_BYTES
    if int(stroke_points.sum()) != n_points:
        raise PackedFormatError(
            "packed.stroke_points", f"counts {int(stroke_points.sum())} points but points holds {n_points}"
        )
    if int(sketch_strokes.sum()) != len(stroke_points):
        raise PackedFormatError(
            "packed.sketch_strokes",
            f"counts {int(sketch_strokes.sum())} strokes but stroke_points has {len(stroke_points)}",
        )
    if packed.ids and len(packed.ids) != len(sketch_strokes):
        raise PackedFormatError("packed.ids", f"has {len(packed.ids)} ids for {len(sketch_strokes)} sketches")
    points = np.frombuffer(packed.points, dtype=POINT_DTYPE).reshape(n_points, 2).astype(np.float64)
    stroke_starts = np.concatenate(([0], np.cumsum(stroke_points)[:-1]))
    sketch_starts = np.concatenate(([0], np.cumsum(sketch_strokes)[:-1]))
    finite = np.isfinite(points)
    if not finite.all():
        point, axis = (int(v) for v in np.argwhere(~finite)[0])
        stroke = int(np.searchsorted(stroke_starts, point, side="right") - 1)
        sketch, local = _stroke_owner(stroke, sketch_starts)
        raise PackedFormatError(
            f"sketches[{sketch}].strokes[{local}].{'xy'[axis]}",
            f"value {points[point, axis]} at point {point - int(stroke_starts[stroke])} is not finite",
            sketch,
        )
    strokes = np.split(points, stroke_starts[1:])
    return [
        list(strokes[start : start + count]) for start, count in zip(sketch_starts.tolist(), sketch_strokes.tolist())
    ]


def pack_rows(rows: np.ndarray) -> bytes:
    """An ``(N, width)`` matrix as little-endian float32 bytes, row after row."""
    return np.ascontiguousarray(rows, dtype=POINT_DTYPE).tobytes()


def unpack_rows(data: bytes, width: int, field: str) -> np.ndarray:
    """``(N, width)`` float32 rows from ``pack_rows`` bytes, or ``PackedFormatError`` naming ``field``."""
    row_bytes = width * POINT_DTYPE.itemsize
    if width < 1 or len(data) % row_bytes:
        raise PackedFormatError(field, f"{len(data)} bytes is not a whole number of rows of {width} float32 values")
    return np.frombuffer(data, dtype=POINT_DTYPE).reshape(-1, width).astype(np.float32)
