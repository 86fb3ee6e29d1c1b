"""`sketchserve encode|assign|reconstruct|score|info|clusters` against a real server on port 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import SHARED_MAX_SKETCHES, TEST_CLUSTERS, RunningServer

from sketchserve import cli as dispatcher
from sketchserve.client import cli
from sketchserve.strokes import MAX_STROKE_POINTS

pytestmark = pytest.mark.timeout(120)

# Real drawings short enough for the tiny model (at most 30 points after preprocessing).
SHORT_DRAWINGS = Path("simplified") / "circle.ndjson"
CIRCLES = 25


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = dispatcher.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def target_args(server: RunningServer) -> list[str]:
    return ["--target", server.target, "--batch-size", str(SHARED_MAX_SKETCHES)]


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_encode_real_file_to_jsonl_with_progress(
    clustered_server: RunningServer,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "READ_CHUNK", 10)  # three chunks: a "large" input that shows progress
    path = data_dir / SHORT_DRAWINGS
    code, out, err = run(capsys, "encode", *target_args(clustered_server), str(path))
    assert code == 0, err
    rows = jsonl(out)
    assert len(rows) == CIRCLES
    assert rows[3]["source"] == f"{path}:4" and rows[3]["word"] == "circle" and rows[3]["key_id"]
    assert len(rows[0]["mu"]) == len(rows[0]["sigma"]) > 0
    assert f"sketchserve encode  {CIRCLES}" in err  # the progress bar's last line


def test_encode_npz_split_to_npy(
    clustered_server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(0)

    def drawings(count: int) -> np.ndarray:
        items = np.empty(count, dtype=object)
        for i in range(count):
            s3 = rng.integers(-20, 20, size=(12, 3)).astype(np.int16)
            s3[:, 2] = 0
            s3[5, 2] = s3[-1, 2] = 1
            items[i] = s3
        return items

    npz = tmp_path / "blobs.npz"
    np.savez(npz, train=drawings(4), valid=drawings(21), test=drawings(3))
    out = tmp_path / "codes.npy"
    argv = ["encode", *target_args(clustered_server), str(npz), "--split", "valid", "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    mu = np.load(out)
    assert mu.shape[0] == 21 and mu.dtype == np.float32 and np.all(np.isfinite(mu))


def test_assign_and_score(
    clustered_server: RunningServer,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(data_dir / SHORT_DRAWINGS)
    code, out, err = run(capsys, "assign", *target_args(clustered_server), "--top-k", "2", "--limit", "5", path)
    assert code == 0, err
    rows = jsonl(out)
    assert len(rows) == 5
    assert all(0 <= r["cluster"] < TEST_CLUSTERS and r["nearest"][0] == [r["cluster"], r["distance"]] for r in rows)
    code, out, err = run(capsys, "score", *target_args(clustered_server), "--limit", "3", path)
    assert code == 0, err
    fields = ["key_id", "kl", "model_version", "reconstruction_nll", "source", "word"]
    assert [sorted(r) for r in jsonl(out)] == [fields] * 3


def test_reconstruct_to_ndjson_and_png(
    clustered_server: RunningServer,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, png = tmp_path / "redrawn.ndjson", tmp_path / "redrawn.png"
    code, _, err = run(
        capsys,
        "reconstruct",
        *target_args(clustered_server),
        "--limit",
        "4",
        "--max-points",
        "20",
        "--temperature",
        "0.5",
        "--seed",
        "3",
        "--out",
        str(out),
        "--png",
        str(png),
        str(data_dir / SHORT_DRAWINGS),
    )
    assert code == 0, err
    rows = jsonl(out.read_text())
    assert len(rows) == 4
    for row in rows:
        assert all(len(stroke) == 2 and len(stroke[0]) == len(stroke[1]) for stroke in row["drawing"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_and_clusters(
    clustered_server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "info", "--target", clustered_server.target)
    assert code == 0, err
    info = json.loads(out)
    assert info["cluster_count"] == TEST_CLUSTERS and info["manifest"]["latent_size"] == info["latent_size"]
    png = tmp_path / "clusters.png"
    argv = ["clusters", "--target", clustered_server.target, "--exemplars", "1", "--png", str(png)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clusters = jsonl(out)
    assert [c["id"] for c in clusters] == list(range(TEST_CLUSTERS))
    assert all(len(c["centroid"]) == info["latent_size"] and len(c["exemplars"]) == 1 for c in clusters)


def _one_line_error(result: tuple[int, str, str], command: str) -> str:
    code, _, err = result
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sketchserve {command}: error: "), err
    return lines[0]


def test_failures_are_one_line(
    clustered_server: RunningServer,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    circles = str(data_dir / SHORT_DRAWINGS)
    unreachable = ["--target", "127.0.0.1:1", "--retry-budget", "0.5"]  # no restart to wait out
    line = _one_line_error(run(capsys, "encode", *unreachable, circles), "encode")
    assert "UNAVAILABLE" in line
    missing = tmp_path / "missing.npz"
    line = _one_line_error(run(capsys, "score", *target_args(clustered_server), str(missing)), "score")
    assert str(missing) in line
    bad = tmp_path / "bad.ndjson"
    good = json.dumps({"word": "w", "key_id": "1", "drawing": [[[0, 5], [0, 5]]]})
    bad.write_text(good + "\n" + json.dumps({"word": "w", "key_id": "2", "drawing": [[[0, 1, 2], [0, 1]]]}) + "\n")
    line = _one_line_error(run(capsys, "encode", *target_args(clustered_server), str(bad)), "encode")
    assert f"{bad}:2" in line
    bad.write_text(good + "\n" + _over_the_point_cap("3") + "\n")
    line = _one_line_error(run(capsys, "encode", *target_args(clustered_server), str(bad)), "encode")
    assert "INVALID_ARGUMENT" in line and f"{bad}:2" in line and "sketches[1]" in line
    argv = ["score", "--target", clustered_server.target, "--out", "x.npy", circles]
    line = _one_line_error(run(capsys, *argv), "score")
    assert ".npy" in line


def test_chunks_stay_in_order_with_a_window_in_flight() -> None:
    """``--parallel N`` sends N chunks before waiting for the first answer, and answers come in input order."""
    from concurrent.futures import Future

    pulled: list[int] = []

    def sent(count: int):
        for i in range(count):
            pulled.append(i)
            future: Future = Future()
            future.set_result(cli.Batch(rows=[{"i": i}]))
            yield [i], future

    answers = cli._in_order(sent(5), window=3)
    first_chunk, first = next(answers)
    assert first_chunk == [0] and first.rows == [{"i": 0}]
    assert pulled == [0, 1, 2]
    assert [chunk for chunk, _ in answers] == [[1], [2], [3], [4]]


def _over_the_point_cap(key_id: str) -> str:
    """An ndjson line the loader reads but the server refuses: a stroke over the raw point cap."""
    walk = np.cumsum(np.random.default_rng(1).normal(0, 40, size=(MAX_STROKE_POINTS + 1, 2)), axis=0)
    xy = [walk[:, 0].round().astype(int).tolist(), walk[:, 1].round().astype(int).tolist()]
    return json.dumps({"word": "w", "key_id": key_id, "drawing": [xy]})


def test_encode_skip_bad_skips_drawings_the_server_refuses(
    clustered_server: RunningServer, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (data_dir / SHORT_DRAWINGS).read_text().splitlines()[:6]
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_text("\n".join([*lines[:4], _over_the_point_cap("bad"), *lines[4:]]) + "\n")
    code, out, err = run(capsys, "encode", *target_args(clustered_server), "--skip-bad", str(mixed))
    assert code == 0, err
    rows = jsonl(out)
    assert [r["source"] for r in rows] == [f"{mixed}:{i}" for i in (1, 2, 3, 4, 6, 7)]
    assert "skipped 1 drawings the server refused" in err
    assert f"{mixed}:5: sketches[4].strokes[0] (id 'bad'): has {MAX_STROKE_POINTS + 1} points" in err
    code, _, err = run(capsys, "encode", *target_args(clustered_server), str(mixed))
    assert code == 1 and f"{mixed}:5" in err
