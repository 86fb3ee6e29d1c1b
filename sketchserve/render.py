"""Pictures of stroke-3 drawings with numpy and zlib only (no Pillow), so the base
client install can write them.

- ``render_grid(drawings, ...)`` rasterizes drawings into the cells of a grid
  (row-major, ``columns`` wide) as a uint8 grayscale image: dark, anti-aliased
  strokes ``line_width`` pixels thick on white. Each drawing is fit into its cell,
  aspect ratio kept, centred, ``padding`` pixels from the cell's edges.
- ``render_png(drawings, path, ...)`` writes that grid as a PNG;
  ``drawing_to_png_bytes(drawing, ...)`` gives one drawing's PNG bytes;
  ``encode_png(image)`` is the tiny PNG encoder (8-bit grayscale, zlib).
- ``render_svg(drawing, ...)`` returns one drawing as an SVG document.

Drawings are stroke-3 arrays (see ``sketchserve.strokes``) in any units.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sketchserve import strokes

DEFAULT_CELL = 128  # pixels per grid cell: small enough for galleries of dozens of drawings
DEFAULT_PADDING = 8  # pixels between a drawing and its cell's edge
DEFAULT_LINE_WIDTH = 2.5  # pixels: reads as a pen stroke at 128-256 px cells
DEFAULT_SVG_SIZE = 256  # SVG viewBox side, in the same units as the canonical 0-255 frame
INK = 32  # gray level of strokes: near-black, softer than pure black
PAPER = 255  # white background
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAYSCALE = 0  # PNG colour type for one 8-bit gray channel
PNG_BIT_DEPTH = 8
PNG_NO_FILTER = 0  # per-row filter byte: none (zlib does the compressing)
ZLIB_LEVEL = 6  # zlib's default trade-off between speed and size
ANTIALIAS_HALF_PIXEL = 0.5  # coverage ramps over one pixel around the stroke's edge


def _fit(drawing: strokes.Drawing, size: float, padding: float) -> strokes.Drawing:
    """Scale and translate points so the drawing is centred in a ``size`` square."""
    points = np.concatenate(drawing)
    low, high = points.min(axis=0), points.max(axis=0)
    extent = float((high - low).max())
    room = max(size - 2.0 * padding, 1.0)
    scale = room / extent if extent > 0 else 1.0
    offset = (size - (high - low) * scale) / 2.0 - low * scale
    return [stroke * scale + offset for stroke in drawing]


def _segments(drawing: strokes.Drawing) -> np.ndarray:
    """``(K, 4)`` segments ``x0, y0, x1, y1``; a one-point stroke is a zero-length segment."""
    parts = [
        np.hstack([stroke[:-1], stroke[1:]]) if len(stroke) > 1 else np.hstack([stroke, stroke]) for stroke in drawing
    ]
    return np.concatenate(parts)


def _draw_segments(canvas: np.ndarray, segments: np.ndarray, line_width: float) -> None:
    """Darken ``canvas`` (float coverage 0..1, in place) along each segment."""
    half = line_width / 2.0
    reach = half + ANTIALIAS_HALF_PIXEL
    height, width = canvas.shape
    for x0, y0, x1, y1 in segments:
        left = max(int(np.floor(min(x0, x1) - reach)), 0)
        right = min(int(np.ceil(max(x0, x1) + reach)) + 1, width)
        top = max(int(np.floor(min(y0, y1) - reach)), 0)
        bottom = min(int(np.ceil(max(y0, y1) + reach)) + 1, height)
        if left >= right or top >= bottom:
            continue
        ys, xs = np.mgrid[top:bottom, left:right]
        px, py = xs + 0.5 - x0, ys + 0.5 - y0
        dx, dy = x1 - x0, y1 - y0
        length_sq = dx * dx + dy * dy
        t = np.clip((px * dx + py * dy) / length_sq, 0.0, 1.0) if length_sq > 0 else 0.0
        distance = np.hypot(px - t * dx, py - t * dy)
        coverage = np.clip(half + ANTIALIAS_HALF_PIXEL - distance, 0.0, 1.0)
        np.maximum(canvas[top:bottom, left:right], coverage, out=canvas[top:bottom, left:right])


def render_grid(
    drawings: Sequence[np.ndarray],
    *,
    columns: int = 8,
    cell: int = DEFAULT_CELL,
    padding: int = DEFAULT_PADDING,
    line_width: float = DEFAULT_LINE_WIDTH,
) -> np.ndarray:
    """A ``(rows * cell, columns * cell)`` uint8 image of the stroke-3 ``drawings``."""
    if not drawings:
        raise ValueError("no drawings to render")
    if columns < 1 or cell < 1 or padding < 0 or 2 * padding >= cell:
        raise ValueError(f"bad layout: columns={columns}, cell={cell}, padding={padding}")
    columns = min(columns, len(drawings))
    rows = -(-len(drawings) // columns)
    coverage = np.zeros((rows * cell, columns * cell))
    for index, s3 in enumerate(drawings):
        row, column = divmod(index, columns)
        fitted = _fit(strokes.stroke3_to_drawing(s3), cell, padding)
        view = coverage[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell]
        _draw_segments(view, _segments(fitted), line_width)
    return np.round(PAPER - coverage * (PAPER - INK)).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 grayscale image."""
    if image.ndim != 2 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, PNG_BIT_DEPTH, PNG_GRAYSCALE, 0, 0, 0)
    rows = np.hstack([np.full((height, 1), PNG_NO_FILTER, dtype=np.uint8), image])
    return b"".join(
        [
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), ZLIB_LEVEL)),
            _png_chunk(b"IEND", b""),
        ]
    )


def render_png(
    drawings: Sequence[np.ndarray],
    path: str | Path,
    *,
    columns: int = 8,
    cell: int = DEFAULT_CELL,
    padding: int = DEFAULT_PADDING,
    line_width: float = DEFAULT_LINE_WIDTH,
) -> Path:
    """Write a grid of stroke-3 ``drawings`` to ``path`` as PNG; returns the path."""
    image = render_grid(drawings, columns=columns, cell=cell, padding=padding, line_width=line_width)
    target = Path(path)
    target.write_bytes(encode_png(image))
    return target


def drawing_to_png_bytes(
    drawing: np.ndarray,
    *,
    size: int = DEFAULT_CELL * 2,
    padding: int = DEFAULT_PADDING,
    line_width: float = DEFAULT_LINE_WIDTH,
) -> bytes:
    """One stroke-3 drawing as PNG bytes, ``size`` pixels square."""
    return encode_png(render_grid([drawing], columns=1, cell=size, padding=padding, line_width=line_width))


def render_svg(
    drawing: np.ndarray,
    *,
    size: int = DEFAULT_SVG_SIZE,
    padding: int = DEFAULT_PADDING,
    line_width: float = DEFAULT_LINE_WIDTH,
) -> str:
    """One stroke-3 drawing as an SVG document, one polyline per stroke."""
    fitted = _fit(strokes.stroke3_to_drawing(drawing), size, padding)
    lines = []
    for stroke in fitted:
        points = stroke if len(stroke) > 1 else np.vstack([stroke, stroke])
        coords = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
        lines.append(f'  <polyline points="{coords}"/>')
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" width="{size}" height="{size}">',
            f'  <rect width="{size}" height="{size}" fill="rgb({PAPER},{PAPER},{PAPER})"/>',
            f'  <g fill="none" stroke="rgb({INK},{INK},{INK})" stroke-width="{line_width}" '
            'stroke-linecap="round" stroke-linejoin="round">',
            *lines,
            "  </g>",
            "</svg>",
            "",
        ]
    )
