"""The `sketchserve` data commands write the server's answers: each value checked against
SketchClient on the same drawings (read here straight from the ndjson), and --skip-bad and
--category keep exactly the drawings they name."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_fixtures import SHARED_MAX_SKETCHES, RunningServer
from test_client_cli import jsonl, run, target_args

from sketchserve.client.plans import Sampling
from sketchserve.client.sync import SketchClient
from sketchserve.render import DEFAULT_CELL

pytestmark = pytest.mark.timeout(120)

# Real drawings short enough for the tiny model (at most 30 points after preprocessing).
CIRCLES = Path("simplified") / "circle.ndjson"
# The CLI writes 6 decimals; float32 codes carry about 7 significant digits.
VALUE_TOLERANCE = 1e-6
# Likelihoods are sums over points: a few float32 ulps of a value in the hundreds.
SCORE_RTOL = 1e-5
RECONSTRUCT_LIMIT = 4
PNG_IHDR = struct.Struct(">II")  # width, height: the first fields of a PNG's IHDR chunk
PNG_IHDR_OFFSET = 16


def ndjson_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strokes(record: dict[str, Any]) -> list[np.ndarray]:
    """A simplified-ndjson drawing as (n, 2) strokes, as a SketchClient caller passes it."""
    return [np.column_stack([xs, ys]).astype(np.float64) for xs, ys in record["drawing"]]


def client(server: RunningServer) -> SketchClient:
    return SketchClient(server.target, max_sketches_per_call=SHARED_MAX_SKETCHES)


def test_encode_npy_and_jsonl_hold_the_clients_codes(
    clustered_server: RunningServer, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data_dir / CIRCLES
    with client(clustered_server) as reference:
        expected = reference.encode([strokes(r) for r in ndjson_records(path)])
    npy = tmp_path / "codes.npy"
    code, _, err = run(capsys, "encode", *target_args(clustered_server), "--out", str(npy), str(path))
    assert code == 0, err
    np.testing.assert_allclose(np.load(npy), expected.mu, atol=VALUE_TOLERANCE)
    code, out, err = run(capsys, "encode", *target_args(clustered_server), str(path))
    assert code == 0, err
    rows = jsonl(out)
    np.testing.assert_allclose([r["mu"] for r in rows], expected.mu, atol=VALUE_TOLERANCE)
    np.testing.assert_allclose([r["sigma"] for r in rows], expected.sigma, atol=VALUE_TOLERANCE)


def test_assign_and_score_hold_the_clients_answers(
    clustered_server: RunningServer, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data_dir / CIRCLES
    drawings = [strokes(r) for r in ndjson_records(path)]
    with client(clustered_server) as reference:
        assigned = reference.assign(drawings, top_k=2)
        scored = reference.score(drawings)
    code, out, err = run(capsys, "assign", *target_args(clustered_server), "--top-k", "2", str(path))
    assert code == 0, err
    rows = jsonl(out)
    assert [r["cluster"] for r in rows] == assigned.cluster.tolist()
    assert [[pair[0] for pair in r["nearest"]] for r in rows] == assigned.nearest_cluster.tolist()
    np.testing.assert_allclose([r["distance"] for r in rows], assigned.distance, atol=VALUE_TOLERANCE)
    code, out, err = run(capsys, "score", *target_args(clustered_server), str(path))
    assert code == 0, err
    rows = jsonl(out)
    np.testing.assert_allclose([r["kl"] for r in rows], scored.kl, rtol=SCORE_RTOL)
    np.testing.assert_allclose([r["reconstruction_nll"] for r in rows], scored.reconstruction_nll, rtol=SCORE_RTOL)


def test_reconstruct_writes_the_clients_drawings_and_one_png_row_per_drawing(
    clustered_server: RunningServer, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data_dir / CIRCLES
    drawings = [strokes(r) for r in ndjson_records(path)[:RECONSTRUCT_LIMIT]]
    sampling = Sampling(temperature=0.5, max_points=20, seed=3)
    with client(clustered_server) as reference:
        expected = reference.reconstruct(drawings, sampling=sampling).sketches
    out, png = tmp_path / "redrawn.ndjson", tmp_path / "redrawn.png"
    argv = ["reconstruct", *target_args(clustered_server), "--limit", str(RECONSTRUCT_LIMIT), "--max-points", "20"]
    argv += ["--temperature", "0.5", "--seed", "3", "--out", str(out), "--png", str(png), str(path)]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    rows = jsonl(out.read_text())
    assert len(rows) == RECONSTRUCT_LIMIT
    for row, sketch in zip(rows, expected):
        assert len(row["drawing"]) == len(sketch.strokes)
        for (xs, ys), stroke in zip(row["drawing"], sketch.strokes):
            np.testing.assert_allclose(np.column_stack([xs, ys]), stroke, atol=VALUE_TOLERANCE)
    width, height = PNG_IHDR.unpack_from(png.read_bytes(), PNG_IHDR_OFFSET)
    assert (width, height) == (2 * DEFAULT_CELL, RECONSTRUCT_LIMIT * DEFAULT_CELL)  # input | reconstruction rows


def test_skip_bad_keeps_exactly_the_good_drawings(
    clustered_server: RunningServer, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ndjson_records(data_dir / CIRCLES)[:3]
    uneven = dict(good[0], key_id="uneven", drawing=[[[0, 1, 2], [0, 1]]])
    lines = [json.dumps(good[0]), json.dumps(uneven), json.dumps(good[1]), "{not json", json.dumps(good[2])]
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, "encode", *target_args(clustered_server), str(mixed))
    assert code == 1 and f"{mixed}:2" in err
    code, out, err = run(capsys, "encode", *target_args(clustered_server), "--skip-bad", str(mixed))
    assert code == 0, err
    rows = jsonl(out)
    assert [r["source"] for r in rows] == [f"{mixed}:{n}" for n in (1, 3, 5)]
    assert [r["key_id"] for r in rows] == [r["key_id"] for r in good]
    assert f"skipped 2 bad drawings (first: {mixed}:2" in err
    with client(clustered_server) as reference:
        expected = reference.encode([strokes(r) for r in good])
    np.testing.assert_allclose([r["mu"] for r in rows], expected.mu, atol=VALUE_TOLERANCE)


def test_category_keeps_only_the_named_words(
    clustered_server: RunningServer, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = ndjson_records(data_dir / CIRCLES)[:8]
    relabelled = [dict(r, word="oval") if i % 2 else r for i, r in enumerate(records)]
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in relabelled))
    ovals = [r for r in relabelled if r["word"] == "oval"]
    code, out, err = run(capsys, "encode", *target_args(clustered_server), "--category", "oval", str(mixed))
    assert code == 0, err
    rows = jsonl(out)
    assert [r["source"] for r in rows] == [f"{mixed}:{n}" for n in (2, 4, 6, 8)]
    assert [(r["word"], r["key_id"]) for r in rows] == [("oval", r["key_id"]) for r in ovals]
    with client(clustered_server) as reference:
        expected = reference.encode([strokes(r) for r in ovals])
    np.testing.assert_allclose([r["mu"] for r in rows], expected.mu, atol=VALUE_TOLERANCE)
    argv = ["encode", *target_args(clustered_server), "--category", "oval", "--category", "circle", str(mixed)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert [r["key_id"] for r in jsonl(out)] == [r["key_id"] for r in relabelled]
    code, _, err = run(capsys, "encode", *target_args(clustered_server), "--category", "square", str(mixed))
    assert code == 1 and "no drawings found" in err
