"""Streaming loaders for the Quick, Draw! formats sketchserve trains and tests on.

``iter_drawings(paths, ...)`` yields one ``DrawingRecord`` per drawing from any
mix of these files (a directory stands for its ``.npz`` and ``.ndjson`` files):

- **sketch-rnn ``.npz``** (``quickdraw_dataset/sketchrnn/<category>.npz``): keys
  ``train``/``valid``/``test``, each a 1-D object array of int16 ``(N, 3)``
  stroke-3 arrays; the category is the file's stem. Loaded with
  ``np.load(path, encoding="latin1", allow_pickle=True)``, one split at a time.
  These drawings are RDP-simplified but NOT in the canonical 0-255 frame: on
  ``face.npz`` the longer side spans 98-1334 units (median 357), on ``pig.npz``
  98-1514 (median 390). So that training data and the drawings a server receives
  (which it canonicalizes) share one frame, their ``stroke3`` is canonicalized
  too (``canonical=True``, the default); ``canonical=False`` gives the stored rows.
- **simplified ndjson**: one JSON object a line with ``word``, ``countrycode``,
  ``timestamp``, ``recognized``, ``key_id`` and ``drawing`` = ``[[xs, ys], ...]``.
- **raw ndjson**: as simplified, with strokes ``[xs, ys, ts]`` in canvas pixels.

ndjson files are read line by line, never whole, and their drawings pass
through ``strokes.preprocess`` (``canonical=False``: plain ``drawing_to_stroke3``).
They have no stored split; a record's ``split`` is ``deterministic_split(key_id)``,
a hash of the key, so ``split="train"`` works for every format.

Every problem in a file's content raises ``DataFormatError`` naming the file and
the line (ndjson) or ``split[index]`` (npz) and what is wrong. With
``on_error="skip"`` bad lines, drawings and unreadable files are skipped and
counted in a ``SkipCounter`` instead; a missing path or an unknown file type
always raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from sketchserve import strokes

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT_FRACTIONS = (0.85, 0.075, 0.075)  # the sketch-rnn npz proportions (e.g. 1700/150/150)
NPZ_SUFFIX = ".npz"
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
BATCH_DRAWINGS = 256  # drawings canonicalized together (strokes.preprocess_many amortizes numpy calls)
SKIP_EXAMPLES = 5  # skip messages a SkipCounter keeps for the report
HASH_BYTES = 4  # digest bytes deterministic_split reads: 2**32 buckets, far finer than any split
HASH_BUCKETS = 2 ** (8 * HASH_BYTES)

OnError = Literal["raise", "skip"]


class DataFormatError(ValueError):
    """Bad data in a file: ``path``, ``location`` (a line number, ``split[index]`` or None) and ``message``."""

    def __init__(self, path: str | Path, location: int | str | None, message: str) -> None:
        where = str(path) if location is None else f"{path}:{location}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.location = location
        self.message = message


@dataclass
class SkipCounter:
    """What ``on_error="skip"`` left out: a count and the first few reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, error: DataFormatError) -> None:
        self.count += 1
        if len(self.examples) < SKIP_EXAMPLES:
            self.examples.append(str(error))
        logger.debug("skipped %s", error)


@dataclass(frozen=True, eq=False)
class DrawingRecord:
    """One drawing: its stroke-3 (float32, canonical unless asked otherwise) and metadata."""

    stroke3: np.ndarray
    word: str
    recognized: bool | None
    key_id: str | None
    source: str
    split: str | None
    countrycode: str | None = None
    timestamp: str | None = None


def deterministic_split(key: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """``"train"``, ``"valid"`` or ``"test"`` for ``key``, stable across runs and machines."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers, got {list(fractions)}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    position = int.from_bytes(digest[:HASH_BYTES], "big") / HASH_BUCKETS * sum(fractions)
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if position < cumulative:
            return name
    return next(name for name, fraction in zip(reversed(SPLITS), reversed(fractions)) if fraction > 0)


@dataclass(frozen=True)
class _Options:
    splits: frozenset[str] | None
    categories: frozenset[str] | None
    on_error: OnError
    skipped: SkipCounter
    canonical: bool
    split_fractions: tuple[float, ...]


def _as_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def expand_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files named by ``paths``; a directory stands for its .npz/.ndjson files, sorted."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    result: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            result += sorted(p for p in item.iterdir() if p.suffix in (NPZ_SUFFIX, *NDJSON_SUFFIXES))
        elif item.exists():
            result.append(item)
        else:
            raise DataFormatError(item, None, "no such file or directory")
    return result


def iter_drawings(
    paths: str | Path | Iterable[str | Path],
    *,
    split: str | Iterable[str] | None = None,
    categories: str | Iterable[str] | None = None,
    on_error: OnError = "raise",
    skipped: SkipCounter | None = None,
    canonical: bool = True,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> Iterator[DrawingRecord]:
    """Stream the drawings of ``paths`` (see the module docstring), file by file in order."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    splits = _as_set(split)
    if splits is not None and not splits <= set(SPLITS):
        raise ValueError(f"split must be among {SPLITS}, got {sorted(splits)}")
    options = _Options(
        splits, _as_set(categories), on_error, skipped or SkipCounter(), canonical, tuple(split_fractions)
    )
    pending: list[_Pending] = []
    try:
        for item in _iter_pending(paths, options):
            pending.append(item)
            if len(pending) == BATCH_DRAWINGS:
                yield from _finish(pending, options)
                pending = []
    except DataFormatError:
        yield from _finish(pending, options)
        raise
    yield from _finish(pending, options)


@dataclass(frozen=True)
class _Pending:
    """A record waiting for its stroke-3: ``drawing`` (ndjson) or the stored rows (npz)."""

    record: DrawingRecord
    drawing: strokes.Drawing | None


def _iter_pending(paths: str | Path | Iterable[str | Path], options: _Options) -> Iterator[_Pending]:
    for path in expand_paths(paths):
        if path.suffix == NPZ_SUFFIX:
            yield from _iter_npz(path, options)
        elif path.suffix in NDJSON_SUFFIXES:
            yield from _iter_ndjson(path, options)
        else:
            raise DataFormatError(path, None, f"unknown file type {path.suffix!r} (expected .npz or .ndjson)")


def _finish(items: list[_Pending], options: _Options) -> Iterator[DrawingRecord]:
    """Records with their stroke-3, canonicalized together (one batch across files)."""
    if not items:
        return
    if options.canonical:
        drawings = [
            strokes.stroke3_to_drawing(item.record.stroke3) if item.drawing is None else item.drawing for item in items
        ]
        rows = strokes.preprocess_many(drawings)
    else:
        rows = [
            item.record.stroke3 if item.drawing is None else strokes.drawing_to_stroke3(item.drawing) for item in items
        ]
    for item, s3 in zip(items, rows):
        yield replace(item.record, stroke3=s3)


def _fail(error: DataFormatError, options: _Options) -> None:
    if options.on_error == "raise":
        raise error
    options.skipped.add(error)


def _stroke3_rows(value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.shape[1] != 3:
        shape = getattr(value, "shape", type(value).__name__)
        raise ValueError(f"expected an (N, 3) stroke-3 array, got {shape}")
    if value.shape[0] == 0:
        raise ValueError("empty drawing (no points)")
    if not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"expected numbers, got dtype {value.dtype}")
    rows = value.astype(np.float32)
    if not np.isfinite(rows).all():
        raise ValueError("holds NaN or infinite values")
    return rows


_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)


def _read_split(path: Path, archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    try:
        array = archive[name]
    except _NPZ_READ_ERRORS as err:
        raise DataFormatError(path, name, f"not a readable sketch-rnn .npz split ({err})") from None
    if not isinstance(array, np.ndarray):
        raise DataFormatError(path, name, "not a readable sketch-rnn .npz split (not a .npy array)")
    if array.ndim != 1:
        raise DataFormatError(path, name, f"expected a 1-D array of drawings, got shape {array.shape}")
    return array


def _iter_npz(path: Path, options: _Options) -> Iterator[_Pending]:
    word = path.stem
    if options.categories is not None and word not in options.categories:
        return
    try:
        archive = np.load(path, encoding="latin1", allow_pickle=True)
    except _NPZ_READ_ERRORS as err:
        _fail(DataFormatError(path, None, f"not a readable sketch-rnn .npz ({err})"), options)
        return
    if not isinstance(archive, np.lib.npyio.NpzFile):
        _fail(DataFormatError(path, None, "not a readable sketch-rnn .npz (not a zip archive of arrays)"), options)
        return
    with archive:
        present = [name for name in SPLITS if name in archive.files]
        if not present:
            _fail(DataFormatError(path, None, f"none of the keys {SPLITS} present"), options)
            return
        for name in present:
            if options.splits is None or name in options.splits:
                yield from _iter_npz_split(path, archive, name, options)


def _iter_npz_split(path: Path, archive: np.lib.npyio.NpzFile, name: str, options: _Options) -> Iterator[_Pending]:
    try:
        array = _read_split(path, archive, name)
    except DataFormatError as err:
        _fail(err, options)
        return
    for index, value in enumerate(array):
        location = f"{name}[{index}]"
        try:
            rows = _stroke3_rows(value)
        except ValueError as err:
            _fail(DataFormatError(path, location, str(err)), options)
            continue
        yield _Pending(DrawingRecord(rows, path.stem, None, None, f"{path}:{location}", name), None)


@dataclass(frozen=True)
class _Parsed:
    line: int
    drawing: strokes.Drawing
    word: str
    recognized: bool | None
    key_id: str | None
    countrycode: str | None
    timestamp: str | None


def _optional_str(obj: dict[str, object], key: str, line: int, path: Path) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    if key == "key_id" and isinstance(value, int):
        return str(value)
    raise DataFormatError(path, line, f"{key!r} must be a string, got {type(value).__name__}")


def _parse_line(path: Path, line: int, text: str) -> _Parsed:
    body = text.rstrip("\r\n")  # the line's own terminator is not part of its JSON (and would move the error's column)
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        column = err.pos + 1  # one line of JSON: the character position is the column, counted from 1
        if err.pos >= len(body.rstrip()):
            raise DataFormatError(
                path, line, f"invalid JSON: the line ends at column {column} before the object does (truncated?)"
            ) from None
        raise DataFormatError(path, line, f"invalid JSON ({err.msg} at column {column})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    for key in ("word", "drawing"):
        if key not in obj:
            raise DataFormatError(path, line, f"missing key {key!r}")
    if not isinstance(obj["word"], str):
        raise DataFormatError(path, line, "'word' must be a string")
    recognized = obj.get("recognized")
    if recognized is not None and not isinstance(recognized, bool):
        raise DataFormatError(path, line, "'recognized' must be true or false")
    return _Parsed(
        line=line,
        drawing=_parse_drawing(path, line, obj["drawing"]),
        word=obj["word"],
        recognized=recognized,
        key_id=_optional_str(obj, "key_id", line, path),
        countrycode=_optional_str(obj, "countrycode", line, path),
        timestamp=_optional_str(obj, "timestamp", line, path),
    )


def _parse_drawing(path: Path, line: int, value: object) -> strokes.Drawing:
    if not isinstance(value, list):
        raise DataFormatError(path, line, f"'drawing' must be a list of strokes, got {type(value).__name__}")
    for i, stroke in enumerate(value):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3) or not all(isinstance(v, list) for v in stroke):
            raise DataFormatError(path, line, f"drawing: strokes[{i}]: expected [xs, ys] or [xs, ys, ts] lists")
        if len(stroke) == 3 and len(stroke[2]) != len(stroke[0]):
            raise DataFormatError(
                path, line, f"drawing: strokes[{i}].t: has {len(stroke[2])} values but x has {len(stroke[0])}"
            )
    try:
        return strokes.drawing_from_xy([(stroke[0], stroke[1]) for stroke in value])
    except strokes.InvalidDrawingError as err:
        raise DataFormatError(path, line, f"drawing: {err}") from None


def _iter_ndjson(path: Path, options: _Options) -> Iterator[_Pending]:
    try:
        with path.open("rb") as handle:
            for line, raw in enumerate(handle, start=1):
                try:
                    text = _decode(path, line, raw)
                    if not text.strip():
                        continue
                    parsed = _parse_line(path, line, text)
                except DataFormatError as err:
                    _fail(err, options)
                    continue
                if _wanted(parsed, options):
                    yield _Pending(_ndjson_record(path, parsed, options), parsed.drawing)
    except OSError as err:
        _fail(DataFormatError(path, None, f"cannot read ({err.strerror or err})"), options)


def _decode(path: Path, line: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, line, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _record_split(parsed: _Parsed, options: _Options) -> str | None:
    if parsed.key_id is None:
        return None
    return deterministic_split(parsed.key_id, options.split_fractions)


def _wanted(parsed: _Parsed, options: _Options) -> bool:
    if options.categories is not None and parsed.word not in options.categories:
        return False
    return options.splits is None or _record_split(parsed, options) in options.splits


def _ndjson_record(path: Path, item: _Parsed, options: _Options) -> DrawingRecord:
    return DrawingRecord(
        stroke3=np.zeros((0, 3), dtype=np.float32),
        word=item.word,
        recognized=item.recognized,
        key_id=item.key_id,
        source=f"{path}:{item.line}",
        split=_record_split(item, options),
        countrycode=item.countrycode,
        timestamp=item.timestamp,
    )
