"""Pure conversions between the caller's numpy data and the protobuf messages.

A sketch given to the client is one of:
- a :class:`~sketchserve.client.types.Sketch`,
- a Drawing: a sequence of ``(n, 2)`` arrays of absolute x/y points, one per stroke,
- a stroke-3 array ``(N, 3)`` of rows ``(dx, dy, pen_lifted)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sketchserve import packed
from sketchserve.client.types import Cluster, ModelInfo, Sketch
from sketchserve.pb.sketch.v1 import sketch_pb2

SketchInput = Sketch | np.ndarray | Sequence[np.ndarray]

STROKE3_COLUMNS = 3
POINT_COLUMNS = 2


def _stroke_array(stroke: object, where: str) -> np.ndarray:
    try:
        array = np.asarray(stroke, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not an array of x/y points ({exc})") from None
    if array.ndim != 2 or array.shape[1] != POINT_COLUMNS:
        raise ValueError(f"{where}: expected an (n, 2) array of x/y points, got shape {array.shape}")
    return array


def as_sketch(item: SketchInput, index: int) -> Sketch:
    """Normalize one input sketch; errors name it as ``sketches[index]``."""
    where = f"sketches[{index}]"
    if isinstance(item, Sketch):
        return item
    if isinstance(item, np.ndarray):
        if item.ndim != 2 or item.shape[1] != STROKE3_COLUMNS:
            raise ValueError(
                f"{where}: expected a stroke-3 array of shape (N, 3) or a list of (n, 2) stroke arrays, "
                f"got an array of shape {item.shape}"
            )
        if len(item) == 0:
            raise ValueError(f"{where}: the stroke-3 array is empty")
        return Sketch.from_stroke3(item)
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence):
        kind = type(item).__name__
        raise ValueError(f"{where}: expected a Sketch, a stroke-3 array or a list of strokes, got {kind}")
    return Sketch(tuple(_stroke_array(stroke, f"{where}.strokes[{i}]") for i, stroke in enumerate(item)))


def as_sketches(items: Sequence[SketchInput]) -> list[Sketch]:
    """Normalize the caller's input; a bare array is refused as ambiguous."""
    if isinstance(items, np.ndarray):
        raise ValueError("sketches must be a sequence of sketches; wrap a single stroke-3 array in a list")
    sketches = [as_sketch(item, i) for i, item in enumerate(items)]
    if not sketches:
        raise ValueError("no sketches given")
    return sketches


def sketch_to_pb(sketch: Sketch) -> sketch_pb2.Sketch:
    return sketch_pb2.Sketch(
        strokes=[sketch_pb2.Stroke(x=stroke[:, 0].tolist(), y=stroke[:, 1].tolist()) for stroke in sketch.strokes],
        id=sketch.id,
    )


def sketches_to_packed_pb(sketches: Sequence[Sketch]) -> sketch_pb2.PackedSketches:
    """Sketches in the proto's packed form (``sketchserve.packed``); ids only when some sketch has one."""
    ids = [s.id for s in sketches] if any(s.id for s in sketches) else []
    parts = packed.pack([list(s.strokes) for s in sketches], ids)
    return sketch_pb2.PackedSketches(
        points=parts.points,
        stroke_points=parts.stroke_points.tolist(),
        sketch_strokes=parts.sketch_strokes.tolist(),
        ids=list(parts.ids),
    )


class Embeddings(NamedTuple):
    mu: np.ndarray  # (N, latent_size) float32
    sigma: np.ndarray


def embeddings_from_pb(response: sketch_pb2.EncodeResponse) -> Embeddings:
    """The embeddings of an EncodeResponse, packed or readable."""
    if response.HasField("packed"):
        width = response.packed.latent_size
        return Embeddings(
            packed.unpack_rows(response.packed.mu, width, "packed.mu"),
            packed.unpack_rows(response.packed.sigma, width, "packed.sigma"),
        )
    return Embeddings(
        float_matrix([e.mu for e in response.embeddings]),
        float_matrix([e.sigma for e in response.embeddings]),
    )


def sketch_from_pb(message: sketch_pb2.Sketch) -> Sketch:
    return Sketch(
        tuple(np.column_stack([np.asarray(s.x, np.float64), np.asarray(s.y, np.float64)]) for s in message.strokes),
        message.id,
    )


def latents_to_pb(latents: np.ndarray) -> list[sketch_pb2.Embedding]:
    return [sketch_pb2.Embedding(mu=row.tolist()) for row in latents]


def as_latents(latents: object) -> np.ndarray:
    """A ``(N, latent_size)`` float32 matrix of codes to decode."""
    try:
        array = np.asarray(latents, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"latents: not a numeric matrix ({exc})") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"latents: expected a non-empty (N, latent_size) matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("latents: values must be finite")
    return array


def float_matrix(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack repeated-float fields into an ``(N, width)`` float32 matrix."""
    return np.array([list(row) for row in rows], dtype=np.float32).reshape(len(rows), -1)


def model_info_from_pb(message: sketch_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        version=message.version,
        name=message.name,
        latent_size=message.latent_size,
        cluster_count=message.cluster_count,
        max_points=message.max_points,
        device=message.device,
        categories=tuple(message.categories),
        data_files=tuple(message.data_files),
        training_drawings=message.training_drawings,
        max_sketches_per_request=message.max_sketches_per_request,
        manifest=json.loads(message.manifest_json) if message.manifest_json else {},
    )


def cluster_from_pb(message: sketch_pb2.Cluster) -> Cluster:
    return Cluster(
        id=message.id,
        size=message.size,
        centroid=np.asarray(message.centroid, dtype=np.float32),
        exemplars=tuple(sketch_from_pb(s) for s in message.exemplars),
        prototype=sketch_from_pb(message.prototype) if message.prototype.strokes else None,
    )
