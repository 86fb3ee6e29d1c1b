"""bench/bench_replicas.py end to end on the tiny artifact: its table counts what it sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_replicas import main
from server_fixtures import random_sketches
from test_replicas import write_ndjson

from sketchserve.client.convert import sketch_from_pb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DRAWINGS = 40
REPEAT = 2


def test_one_and_two_replicas_encode_every_drawing(tiny_model: Path, tmp_path: Path) -> None:
    drawings = tmp_path / "drawings.ndjson"
    write_ndjson(drawings, [sketch_from_pb(s) for s in random_sketches(3, DRAWINGS)])
    out = tmp_path / "replicas.json"
    argv = ["--model", str(tiny_model), "--data", str(drawings), "--repeat", str(REPEAT), "--replicas", "1,2"]
    assert main([*argv, "--json", str(out)]) == 0
    table = json.loads(out.read_text())["tables"]["replicas"]
    rows = [dict(zip(table["columns"], row)) for row in table["rows"]]
    assert [row["replicas"] for row in rows] == ["1", "2"]
    for row in rows:
        assert int(row["drawings"]) == DRAWINGS * REPEAT
        calls = [float(c) for c in row["calls per replica"].split(" / ")]
        assert len(calls) == int(row["replicas"]) and sum(calls) == 1  # 80 drawings: one read chunk, one call
        assert sum(float(c) for c in row["CPU s per replica"].split(" / ")) > 0
