"""Rendering: the PNG encoder, the raster grid and the SVG, checked by decoding them."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchserve import render, strokes
from sketchserve.data import iter_drawings

HORIZONTAL = np.array([[100, 0, 1]], dtype=np.float32)  # one stroke from (0, 0) to (100, 0)
TALL_BOX = strokes.drawing_to_stroke3([np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 100.0], [0.0, 100.0], [0.0, 0.0]])])
SVG = "{http://www.w3.org/2000/svg}"


def decode_png(data: bytes) -> np.ndarray:
    """Our own minimal decoder for 8-bit grayscale, unfiltered PNGs (checks every CRC)."""
    assert data[:8] == render.PNG_SIGNATURE
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:]


def test_png_round_trips_through_our_decoder_and_pillow() -> None:
    image = np.arange(7 * 5, dtype=np.uint8).reshape(7, 5) * 7
    data = render.encode_png(image)
    assert np.array_equal(decode_png(data), image)
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), image)


def test_encode_png_rejects_other_images() -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        render.encode_png(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        render.encode_png(np.zeros((4, 4), dtype=np.float32))


def test_horizontal_line_is_a_dark_band_across_the_cell() -> None:
    image = render.render_grid([HORIZONTAL], columns=1, cell=64, padding=4, line_width=3.0)
    assert image.shape == (64, 64)
    dark_rows = np.flatnonzero((image < 128).any(axis=1))
    dark_cols = np.flatnonzero((image < 128).any(axis=0))
    assert 29 <= dark_rows.min() and dark_rows.max() <= 34  # centred vertically, ~3 px thick
    assert dark_cols.min() <= 5 and dark_cols.max() >= 58  # spans the padded width
    assert image.min() == render.INK and image.max() == render.PAPER
    assert len(np.unique(image)) > 2  # anti-aliased edges


def test_aspect_ratio_is_kept() -> None:
    image = render.render_grid([TALL_BOX], columns=1, cell=100, padding=10, line_width=1.0)
    ys, xs = np.nonzero(image < 200)
    assert ys.min() <= 11 and ys.max() >= 88  # the long side fills the padded cell
    assert xs.max() - xs.min() <= 12  # the short side keeps its 1:10 proportion
    assert abs((xs.min() + xs.max()) / 2 - 50) <= 1.5  # centred


def test_grid_layout_and_png_file(tmp_path: Path) -> None:
    drawings = [HORIZONTAL, TALL_BOX, HORIZONTAL, TALL_BOX, HORIZONTAL]
    path = render.render_png(drawings, tmp_path / "grid.png", columns=2, cell=32, padding=2)
    image = decode_png(path.read_bytes())
    assert image.shape == (3 * 32, 2 * 32)
    cells = [image[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] for r in range(3) for c in range(2)]
    assert all((cell < 128).any() for cell in cells[:5])
    assert (cells[5] == render.PAPER).all()  # the empty last cell stays white
    assert np.array_equal(cells[0], cells[2]) and np.array_equal(cells[1], cells[3])


def test_degenerate_drawings_render_without_errors() -> None:
    dot = strokes.drawing_to_stroke3([np.array([[5.0, 5.0]])])
    image = render.render_grid([dot], columns=1, cell=32, padding=4)
    assert (image < 128).sum() >= 1


def test_bad_layouts_are_rejected() -> None:
    with pytest.raises(ValueError, match="no drawings"):
        render.render_grid([])
    with pytest.raises(ValueError, match="bad layout"):
        render.render_grid([HORIZONTAL], cell=16, padding=8)


def test_svg_has_one_polyline_per_stroke_inside_the_view() -> None:
    drawing = strokes.drawing_to_stroke3([np.array([[0.0, 0.0], [50.0, 20.0]]), np.array([[10.0, 40.0], [30.0, 40.0]])])
    root = ET.fromstring(render.render_svg(drawing, size=200, padding=10))
    polylines = root.findall(f"{SVG}g/{SVG}polyline")
    assert len(polylines) == 2
    coords = np.array([[float(v) for v in pair.split(",")] for p in polylines for pair in p.get("points").split()])
    assert coords.min() >= 10 - 1e-6 and coords.max() <= 190 + 1e-6
    assert coords[:, 0].max() - coords[:, 0].min() == pytest.approx(180)


def test_real_drawings_render(data_dir: Path, tmp_path: Path) -> None:
    records = iter_drawings(data_dir / "sketchrnn" / "face.npz", split="test")
    drawings = [next(records).stroke3 for _ in range(4)]
    data = render.drawing_to_png_bytes(drawings[0], size=96)
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.size == (96, 96)
    image = decode_png(render.render_png(drawings, tmp_path / "faces.png", columns=4, cell=64).read_bytes())
    ink = (image < 128).mean()
    assert 0.01 < ink < 0.3  # strokes, not an empty or a filled picture
