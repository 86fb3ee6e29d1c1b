"""The packed sketch form (sketchserve.packed, proto PackedSketches): round trips, precise errors, and a real
server that answers it exactly as it answers the readable form."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches

from sketchserve import packed
from sketchserve.client import convert
from sketchserve.pb.sketch.v1 import sketch_pb2

# Random drawings whose coordinates are float32 values (what the wire carries either way).
COORDS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)
STROKE = st.lists(st.tuples(COORDS, COORDS), min_size=1, max_size=8).map(lambda p: np.array(p, dtype=np.float64))
DRAWING = st.lists(STROKE, min_size=1, max_size=4)
EQUAL_WITHIN = 1e-6  # packed and readable answers agree to float32 rounding


@settings(max_examples=200, deadline=None)
@given(st.lists(DRAWING, min_size=1, max_size=6))
def test_unpack_inverts_pack_exactly(drawings: list[list[np.ndarray]]) -> None:
    out = packed.unpack(packed.pack(drawings))
    assert len(out) == len(drawings)
    for got, want in zip(out, drawings, strict=True):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == np.float64 and np.array_equal(a, b)


@settings(max_examples=100, deadline=None)
@given(st.lists(DRAWING, min_size=1, max_size=6), st.data())
def test_a_non_finite_point_is_named_by_sketch_stroke_axis_and_point(drawings: list, data: st.DataObject) -> None:
    sketch = data.draw(st.integers(0, len(drawings) - 1))
    stroke = data.draw(st.integers(0, len(drawings[sketch]) - 1))
    point = data.draw(st.integers(0, len(drawings[sketch][stroke]) - 1))
    axis = data.draw(st.integers(0, 1))
    broken = [[s.copy() for s in d] for d in drawings]
    broken[sketch][stroke][point, axis] = np.nan
    with pytest.raises(packed.PackedFormatError) as info:
        packed.unpack(packed.pack(broken))
    err = info.value
    first_bad = min(  # the first non-finite value in order is the one reported
        (i, j, p, a)
        for i, d in enumerate(broken)
        for j, s in enumerate(d)
        for p, row in enumerate(s)
        for a in (0, 1)
        if not np.isfinite(row[a])
    )
    sketch_at, stroke_at, point_at, axis_at = first_bad
    assert (err.sketch, err.field) == (sketch_at, f"sketches[{sketch_at}].strokes[{stroke_at}].{'xy'[axis_at]}")
    assert err.message == f"value nan at point {point_at} is not finite"


@pytest.mark.parametrize(
    ("points", "stroke_points", "sketch_strokes", "field", "message"),
    [
        (b"\x00" * 12, [1], [1], "packed.points", "12 bytes is not a whole number of 8-byte x/y points"),
        (b"\x00" * 16, [1], [1], "packed.stroke_points", "counts 1 points but points holds 2"),
        (b"\x00" * 16, [1, 1], [1], "packed.sketch_strokes", "counts 1 strokes but stroke_points has 2"),
        (b"\x00" * 16, [2, 0], [2], "packed.stroke_points[1]", "is 0; every count must be at least 1"),
        (b"\x00" * 16, [2], [0, 1], "packed.sketch_strokes[0]", "is 0; every count must be at least 1"),
    ],
)
def test_inconsistent_counts_are_named(
    points: bytes, stroke_points: list[int], sketch_strokes: list[int], field: str, message: str
) -> None:
    with pytest.raises(packed.PackedFormatError) as info:
        packed.unpack(packed.PackedSketches(points, np.array(stroke_points), np.array(sketch_strokes)))
    assert (info.value.field, info.value.message) == (field, message)


def _both_forms(sketches: list[sketch_pb2.Sketch]) -> tuple[dict, dict]:
    typed = [convert.sketch_from_pb(s) for s in sketches]
    return {"sketches": sketches}, {"packed": convert.sketches_to_packed_pb(typed)}


def test_the_server_answers_packed_exactly_as_readable(clustered_server: RunningServer) -> None:
    stub = clustered_server.stub
    readable, packed_form = _both_forms(random_sketches(seed=5, count=12))
    plain = stub.Encode(sketch_pb2.EncodeRequest(**readable), timeout=CALL_TIMEOUT_S)
    fast = stub.Encode(sketch_pb2.EncodeRequest(**packed_form, packed_response=True), timeout=CALL_TIMEOUT_S)
    assert not fast.embeddings and fast.packed.latent_size == len(plain.embeddings[0].mu)
    mu = packed.unpack_rows(fast.packed.mu, fast.packed.latent_size, "mu")
    sigma = packed.unpack_rows(fast.packed.sigma, fast.packed.latent_size, "sigma")
    np.testing.assert_allclose(mu, [e.mu for e in plain.embeddings], atol=EQUAL_WITHIN)
    np.testing.assert_allclose(sigma, [e.sigma for e in plain.embeddings], atol=EQUAL_WITHIN)

    a = stub.Assign(sketch_pb2.AssignRequest(**readable, top_k=2), timeout=CALL_TIMEOUT_S)
    b = stub.Assign(sketch_pb2.AssignRequest(**packed_form, top_k=2), timeout=CALL_TIMEOUT_S)
    assert [x.cluster for x in a.assignments] == [x.cluster for x in b.assignments]
    np.testing.assert_allclose([x.distance for x in a.assignments], [x.distance for x in b.assignments], atol=1e-5)

    s1 = stub.Score(sketch_pb2.ScoreRequest(**readable), timeout=CALL_TIMEOUT_S)
    s2 = stub.Score(sketch_pb2.ScoreRequest(**packed_form), timeout=CALL_TIMEOUT_S)
    np.testing.assert_allclose(
        [s.reconstruction_nll for s in s1.scores], [s.reconstruction_nll for s in s2.scores], atol=1e-5
    )

    r1 = stub.Reconstruct(sketch_pb2.ReconstructRequest(**readable, seed=3, temperature=0.5), timeout=CALL_TIMEOUT_S)
    r2 = stub.Reconstruct(sketch_pb2.ReconstructRequest(**packed_form, seed=3, temperature=0.5), timeout=CALL_TIMEOUT_S)
    assert r1.sketches == r2.sketches


def test_packed_errors_name_the_sketch_and_its_id(clustered_server: RunningServer) -> None:
    sketches = random_sketches(seed=6, count=3)
    typed = [convert.sketch_from_pb(s) for s in sketches]
    request = sketch_pb2.EncodeRequest(packed=convert.sketches_to_packed_pb(typed))
    values = np.frombuffer(request.packed.points, dtype="<f4").copy()
    first_of_sketch_2 = 2 * int(sum(request.packed.stroke_points[: sum(request.packed.sketch_strokes[:2])]))
    values[first_of_sketch_2 + 1] = np.inf  # y of sketch 2's first point
    request.packed.points = values.tobytes()
    request.packed.ids[:] = ["a", "b", "cat-7"]
    with pytest.raises(grpc.RpcError) as info:
        clustered_server.stub.Encode(request, timeout=CALL_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "sketches[2].strokes[0].y (id 'cat-7'): value inf at point 0 is not finite"


def test_both_forms_at_once_are_refused(clustered_server: RunningServer) -> None:
    readable, packed_form = _both_forms(random_sketches(seed=7, count=2))
    with pytest.raises(grpc.RpcError) as info:
        clustered_server.stub.Encode(sketch_pb2.EncodeRequest(**readable, **packed_form), timeout=CALL_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith("packed:")
