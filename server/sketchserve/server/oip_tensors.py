"""Open Inference Protocol tensors <-> numpy, and the ragged sketch layout (numpy only, no torch).

**Tensors.** An input's data is either its entry of ``raw_input_contents``
(little-endian, row-major bytes of the tensor; when a request uses raw contents,
every input has one, in the order of ``inputs``) or its typed ``contents``
(``fp32_contents`` for FP32, ``int64_contents`` for INT64, ...). An output goes
back the way the request came in: raw when the request sent raw contents, typed
otherwise. Only the numeric datatypes of :data:`DATATYPES` are served (no BYTES).

**Ragged sketches** (Triton's ragged-batching layout: the sketches' rows
concatenated, and a per-sketch count). A request holds ``N`` rows of 3 values in
one of two formats, and ``lengths`` (``S`` integers summing to ``N``) tells
which rows belong to which sketch; without ``lengths`` all rows are one sketch.

- ``points``: absolute points ``(x, y, end_of_stroke)``: ``end_of_stroke`` is 1
  on a stroke's last point (the pen lifts after it), 0 otherwise; a sketch's last
  point always ends its stroke. This is the ``Sketch`` message of sketch.proto
  (strokes of absolute x/y in any units) flattened.
- ``stroke3``: the core's stroke-3 rows ``(dx, dy, pen_lifted)`` (``sketchserve.strokes``).

Values above ``PEN_LIFTED_THRESHOLD`` count as 1, as the core reads stroke-3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.server.errors import InvalidRequest
from sketchserve.strokes import PEN_LIFTED_THRESHOLD, Drawing, InvalidDrawingError, stroke3_to_drawing, validate_drawing

# The datatypes served: name -> (numpy dtype, the InferTensorContents field that holds it).
DATATYPES: dict[str, tuple[np.dtype, str]] = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
}
FLOAT_TYPES = ("FP32", "FP64")
INTEGER_TYPES = ("INT32", "INT64", "UINT32", "UINT64")
# Values per row of both ragged sketch formats.
ROW_WIDTH = 3


@dataclass(frozen=True)
class Tensor:
    """One decoded input: its name, datatype and data (shape as declared)."""

    name: str
    datatype: str
    array: np.ndarray


def read_inputs(request: oip_pb2.ModelInferRequest) -> dict[str, Tensor]:
    """Every input of the request, by name; InvalidRequest names the input at fault."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            "raw_input_contents", f"has {len(raw)} entries for {len(request.inputs)} inputs; give one per input"
        )
    tensors: dict[str, Tensor] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise InvalidRequest(f"inputs[{index}]", f"input {tensor.name!r} is given twice")
        tensors[tensor.name] = _read_input(tensor, raw[index] if raw else None)
    return tensors


def _read_input(tensor: oip_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Tensor:
    field = f"inputs[{tensor.name!r}]"
    if tensor.datatype not in DATATYPES:
        raise InvalidRequest(f"{field}.datatype", f"{tensor.datatype!r} is not served; use one of {sorted(DATATYPES)}")
    dtype, contents_field = DATATYPES[tensor.datatype]
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"{field}.shape", f"{list(shape)} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidRequest(f"{field}.contents", "give raw_input_contents or typed contents, not both")
        if len(raw) != count * dtype.itemsize:
            raise InvalidRequest(
                f"{field}",
                f"raw contents hold {len(raw)} bytes; shape {list(shape)} of {tensor.datatype} "
                f"needs {count * dtype.itemsize}",
            )
        flat = np.frombuffer(raw, dtype=dtype)
    else:
        values = getattr(tensor.contents, contents_field)
        if len(values) != count:
            raise InvalidRequest(
                f"{field}.contents.{contents_field}", f"has {len(values)} values, shape {list(shape)} needs {count}"
            )
        flat = np.asarray(values, dtype=dtype)
    return Tensor(tensor.name, tensor.datatype, flat.reshape(shape))


def checked_tensor(tensor: Tensor, datatypes: Sequence[str], rank: int, width: int | None = None) -> np.ndarray:
    """The tensor's data if its datatype is one of ``datatypes``, it has ``rank`` dimensions
    and (when given) its last dimension is ``width``; else InvalidRequest naming the input."""
    field = f"inputs[{tensor.name!r}]"
    if tensor.datatype not in datatypes:
        raise InvalidRequest(f"{field}.datatype", f"is {tensor.datatype}, expected one of {list(datatypes)}")
    shape = list(tensor.array.shape)
    if len(shape) != rank or (width is not None and shape[-1] != width):
        expected = ["-1"] * (rank - 1) + [str(width) if width is not None else "-1"]
        raise InvalidRequest(f"{field}.shape", f"is {shape}, expected [{', '.join(expected)}]")
    return tensor.array


def sketch_lengths(lengths: Tensor | None, rows: int, input_name: str) -> list[int]:
    """Rows per sketch from the ``lengths`` input (all rows are one sketch without it)."""
    if lengths is None:
        return [rows] if rows else []
    counts = checked_tensor(lengths, INTEGER_TYPES, rank=1).astype(np.int64)
    for index, count in enumerate(counts.tolist()):
        if count < 1:
            raise InvalidRequest(f"lengths[{index}]", f"is {count}; every sketch needs at least one row")
    total = int(counts.sum())
    if total != rows:
        raise InvalidRequest("lengths", f"sum to {total}, but {input_name} has {rows} rows")
    return [int(c) for c in counts]


def split_rows(rows: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    return np.split(rows, np.cumsum(lengths)[:-1]) if len(lengths) else []


def points_to_drawing(rows: np.ndarray, index: int) -> Drawing:
    """One sketch's ``points`` rows as a validated Drawing; errors name ``points: sketches[i]...``."""
    ends = np.flatnonzero(rows[:, 2] > PEN_LIFTED_THRESHOLD) + 1
    strokes = [s for s in np.split(rows[:, :2].astype(np.float64), ends[ends < len(rows)]) if len(s)]
    try:
        validate_drawing(strokes)
        return strokes
    except InvalidDrawingError as err:
        raise InvalidRequest(f"points: sketches[{index}].{err.field}", err.message) from None


def stroke3_rows_to_drawing(rows: np.ndarray, index: int) -> Drawing:
    """One sketch's ``stroke3`` rows as a Drawing (first point at the origin)."""
    if not np.isfinite(rows).all():
        row = int(np.argwhere(~np.isfinite(rows))[0][0])
        raise InvalidRequest(f"stroke3: sketches[{index}]", f"row {row} holds NaN or infinite values")
    return stroke3_to_drawing(rows)


class RaggedRows(NamedTuple):
    """Sketches in the ragged layout: ``rows`` ``(N, 3)`` float32 and ``lengths`` ``(S,)`` int64."""

    rows: np.ndarray
    lengths: np.ndarray


def drawings_to_points(drawings: Sequence[Drawing]) -> RaggedRows:
    """Drawings as ``points`` rows and ``lengths``: the layout a client sends (the inverse of the readers)."""
    sketches = []
    for drawing in drawings:
        strokes = []
        for stroke in drawing:
            rows = np.zeros((len(stroke), ROW_WIDTH), dtype=np.float32)
            rows[:, :2] = stroke
            rows[-1, 2] = 1.0
            strokes.append(rows)
        sketches.append(np.concatenate(strokes))
    lengths = np.array([len(s) for s in sketches], dtype=np.int64)
    rows = np.concatenate(sketches) if sketches else np.zeros((0, ROW_WIDTH), np.float32)
    return RaggedRows(rows, lengths)


def add_output(response: oip_pb2.ModelInferResponse, name: str, array: np.ndarray, datatype: str, raw: bool) -> None:
    """Append an output to the response: its bytes to ``raw_output_contents`` when ``raw``, else typed ``contents``."""
    dtype, contents_field = DATATYPES[datatype]
    data = np.ascontiguousarray(array, dtype=dtype)
    tensor = response.outputs.add(name=name, datatype=datatype, shape=list(data.shape))
    if raw:
        response.raw_output_contents.append(data.tobytes())
    else:
        values: Any = getattr(tensor.contents, contents_field)
        values.extend(data.ravel().tolist())
