"""Fuzzing every RPC of a real server: no request, however odd, ends INTERNAL or UNKNOWN.

Hypothesis draws each method's request message from its protobuf descriptor
(every field, floats including NaN, infinities and float32 extremes, integers
over their whole range, strings of any text), with the shapes validation cares
about made likely (x and y of equal length, latents of the model's size), and
raw bytes that are no message at all. Bounded: a fixed number of examples per
method, no per-example deadline (the box is shared). The long-running,
coverage-guided twin is ``bench/fuzz_server.py`` (atheris).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from server_fixtures import CALL_TIMEOUT_S, RunningServer, running_server, server_config

from sketchserve.pb.sketch.v1 import sketch_pb2

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

SERVICE = sketch_pb2.DESCRIPTOR.services_by_name["SketchService"]
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
EXAMPLES = 100  # per method: a few seconds each on the tiny model
MAX_LIST = 3  # entries of a repeated message field: few, so that whole requests are valid often enough
MAX_FLOATS = 40  # entries of a repeated float field
MAX_STREAM = 4  # requests on one EncodeStream
UINT_BITS = {FieldDescriptor.TYPE_UINT32: 32, FieldDescriptor.TYPE_UINT64: 64}
FLOAT_EXTREMES = (3.4028235e38, -3.4028235e38, 1e-45, -0.0, 1e30, -1e30, 1e4, -1e4)


# Coordinates of a real drawing: most draws, so that valid requests reach the model.
PLAIN = st.floats(-1000.0, 1000.0, width=32)


def floats() -> st.SearchStrategy[float]:
    """Mostly plain values, else any float32 (NaN, infinities, subnormals) or an extreme."""
    return st.one_of(PLAIN, PLAIN, PLAIN, PLAIN, st.floats(width=32), st.sampled_from(FLOAT_EXTREMES))


# Fields whose valid range is narrow: drawn inside it three times in four.
IN_RANGE = {
    "sketch.v1.ReconstructRequest.temperature": st.floats(0.0, 2.0, width=32),
    "sketch.v1.ReconstructRequest.max_points": st.integers(0, 64),
    "sketch.v1.AssignRequest.top_k": st.integers(0, 5),
}


def float_lists(size: int) -> st.SearchStrategy[list[float]]:
    """Any short list, or one of about the latent size (so latents get past the length check to the decoder).

    A latent-sized list is a fill value with a few spikes: cheap to draw, and it carries
    extremes and non-finite values into every position.
    """
    short = st.lists(floats(), max_size=MAX_FLOATS)
    sized = st.builds(
        _filled,
        length=st.sampled_from((size - 1, size, size, size, size + 1)),
        fill=st.one_of(floats(), st.sampled_from(FLOAT_EXTREMES)),
        spikes=st.lists(st.tuples(st.integers(0, size - 1), floats()), max_size=4),
    )
    return st.one_of(short, sized, sized)


def _filled(length: int, fill: float, spikes: list[tuple[int, float]]) -> list[float]:
    values = [fill] * max(length, 0)
    for index, value in spikes:
        if index < len(values):
            values[index] = value
    return values


@st.composite
def strokes(draw: st.DrawFn) -> sketch_pb2.Stroke:
    """Usually x and y of one length (past the shape check), sometimes not."""
    xs = draw(st.lists(floats(), min_size=draw(st.sampled_from((0, 1, 1, 1))), max_size=MAX_FLOATS))
    same_length = st.lists(floats(), min_size=len(xs), max_size=len(xs))
    ys = draw(st.one_of(same_length, same_length, same_length, st.lists(floats(), max_size=8)))
    return sketch_pb2.Stroke(x=xs, y=ys)


@st.composite
def packed_sketches(draw: st.DrawFn) -> sketch_pb2.PackedSketches:
    """The packed form: usually consistent counts over float32 points, sometimes counts or bytes that are not."""
    strokes_of = draw(st.lists(st.integers(1, 3), min_size=1, max_size=MAX_LIST))
    stroke_points = draw(st.lists(st.integers(1, 12), min_size=sum(strokes_of), max_size=sum(strokes_of)))
    points = np.array(draw(st.lists(floats(), min_size=2 * sum(stroke_points), max_size=2 * sum(stroke_points))))
    data = points.astype("<f4").tobytes()
    if draw(st.integers(0, 3)) == 0:
        data = draw(st.one_of(st.binary(max_size=64), st.just(data[: max(len(data) - 3, 0)])))
    if draw(st.integers(0, 3)) == 0:
        stroke_points = draw(st.lists(st.integers(0, 2**32 - 1), max_size=4))
    return sketch_pb2.PackedSketches(
        points=data,
        stroke_points=stroke_points,
        sketch_strokes=strokes_of,
        ids=draw(st.one_of(st.just([]), st.lists(st.text(max_size=5), max_size=MAX_LIST))),
    )


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.full_name in IN_RANGE:
        valid = IN_RANGE[field.full_name]
        return st.one_of(valid, valid, valid, _any_scalar(field))
    return _any_scalar(field)


def _any_scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return floats()
    if field.type in UINT_BITS:
        return st.one_of(st.integers(0, 2 ** UINT_BITS[field.type] - 1), st.integers(0, 300))
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=20)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    raise TypeError(f"no strategy for {field.full_name} (type {field.type})")


def messages(descriptor: Descriptor, latent_size: int) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``'s type, field by field."""
    if descriptor.full_name == sketch_pb2.Stroke.DESCRIPTOR.full_name:
        return strokes()
    if descriptor.full_name == sketch_pb2.PackedSketches.DESCRIPTOR.full_name:
        return packed_sketches()
    parts: dict[str, st.SearchStrategy[Any]] = {}
    # A singular message field's presence means something (e.g. `packed` instead of `sketches`).
    present_or_not = {f.name for f in descriptor.fields if f.message_type is not None and not _repeated(f)}
    for field in descriptor.fields:
        if field.message_type is not None:
            one = messages(field.message_type, latent_size)
            parts[field.name] = _mostly_some(one) if _repeated(field) else one
        elif _repeated(field) and field.type == FieldDescriptor.TYPE_FLOAT:
            parts[field.name] = float_lists(latent_size)
        elif _repeated(field):
            parts[field.name] = st.lists(scalar(field), max_size=MAX_LIST)
        else:
            parts[field.name] = scalar(field)
    cls = _message_class(descriptor)
    if descriptor.full_name == sketch_pb2.ReconstructRequest.DESCRIPTOR.full_name:
        # Sketches or latents (either alone is what validation wants), or both, or neither.
        required = {k: v for k, v in parts.items() if k not in {"sketches", "latents", *present_or_not}}
        inputs = st.one_of(
            st.fixed_dictionaries({"sketches": parts["sketches"]}),
            st.fixed_dictionaries({"latents": parts["latents"]}),
            st.fixed_dictionaries({}, optional={"sketches": parts["sketches"], "latents": parts["latents"]}),
        )
        optional = {k: parts[k] for k in present_or_not}
        return st.tuples(st.fixed_dictionaries(required, optional=optional), inputs).map(lambda t: cls(**t[0], **t[1]))
    required = {k: v for k, v in parts.items() if k not in present_or_not}
    optional = {k: parts[k] for k in present_or_not}
    return st.fixed_dictionaries(required, optional=optional).map(lambda values: cls(**values))


def _mostly_some(one: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A repeated field: usually 1..MAX_LIST entries, sometimes none."""
    some = st.lists(one, min_size=1, max_size=MAX_LIST)
    return st.one_of(some, some, some, st.just([]))


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _message_class(descriptor: Descriptor) -> type[Message]:
    return getattr(sketch_pb2, descriptor.name)


def request_bytes(method: str, latent_size: int) -> st.SearchStrategy[bytes]:
    """A serialized request of the method's type, or bytes that may be nothing of the kind."""
    request_type = SERVICE.methods_by_name[method].input_type
    valid = messages(request_type, latent_size).map(lambda m: m.SerializeToString())
    corrupted = st.tuples(valid, st.binary(max_size=8), st.integers(0, 64)).map(lambda t: _splice(*t))
    return st.one_of(valid, valid, corrupted, st.binary(max_size=64))


def _splice(data: bytes, patch: bytes, at: int) -> bytes:
    at = min(at, len(data))
    return data[:at] + patch + data[at + len(patch) :]


@pytest.fixture(scope="module")
def fuzzed(clustered_model: Path) -> Iterator[RunningServer]:
    with running_server(server_config(clustered_model)) as server:
        yield server


def latent_size(server: RunningServer) -> int:
    return server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S).latent_size


def outcome(call: Any) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
UNARY = sorted(m.name for m in SERVICE.methods if not m.client_streaming)


@pytest.mark.parametrize("method", UNARY)
def test_no_unary_request_is_internal_or_unknown(fuzzed: RunningServer, method: str) -> None:
    call = fuzzed.channel.unary_unary(f"/{SERVICE.full_name}/{method}")

    @FUZZ_SETTINGS
    @given(body=request_bytes(method, latent_size(fuzzed)))
    def one(body: bytes) -> None:
        code = outcome(lambda: call(body, timeout=CALL_TIMEOUT_S))
        event(code.name)
        assert code not in FORBIDDEN, (method, body)

    one()


def test_no_stream_is_internal_or_unknown(fuzzed: RunningServer) -> None:
    call = fuzzed.channel.stream_stream(f"/{SERVICE.full_name}/EncodeStream")

    @FUZZ_SETTINGS
    @given(bodies=st.lists(request_bytes("EncodeStream", latent_size(fuzzed)), max_size=MAX_STREAM))
    def one(bodies: list[bytes]) -> None:
        code = outcome(lambda: call(iter(bodies), timeout=CALL_TIMEOUT_S))
        event(code.name)
        assert code not in FORBIDDEN, bodies

    one()


def test_the_atheris_target_runs_against_a_real_server(fuzzed: RunningServer) -> None:
    """bench/fuzz_server.py's target on fixed inputs (the long coverage-guided run is a benchmark)."""
    pytest.importorskip("atheris", reason="atheris is in the fuzz extra")
    import fuzz_server

    target = fuzz_server.make_target(fuzzed.channel, latent_size(fuzzed))
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 64, 512) * 20:
        target(rng.bytes(size))
