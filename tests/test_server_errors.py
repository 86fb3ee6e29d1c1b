"""Every input error gets its status and a message naming the sketch and field; none wedges the server."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_fixtures import (
    CALL_TIMEOUT_S,
    SHARED_MAX_MESSAGE_BYTES,
    SHARED_MAX_SKETCHES,
    RunningServer,
    random_sketches,
    running_server,
    server_config,
)

from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.batching import DeadlineDropped, QueueFull
from sketchserve.server.errors import (
    INTERNAL_MESSAGE,
    InvalidRequest,
    StatusInterceptor,
    cancelled_code,
    map_exception,
)
from sketchserve.server.logs import RateLimitedLog
from sketchserve.server.service import MAX_LATENT_ABS

pytestmark = pytest.mark.timeout(120)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def stroke(x: list[float], y: list[float]) -> sketch_pb2.Stroke:
    return sketch_pb2.Stroke(x=x, y=y)


def sketch(*strokes: sketch_pb2.Stroke, sketch_id: str = "") -> sketch_pb2.Sketch:
    return sketch_pb2.Sketch(strokes=list(strokes), id=sketch_id)


GOOD = sketch(stroke([0, 10, 20], [0, 15, 3]), stroke([5, 6], [30, 40]))


def zigzag(points: int) -> sketch_pb2.Sketch:
    xs = [float(i) for i in range(points)]
    ys = [float((i % 2) * points) for i in range(points)]
    return sketch(stroke(xs, ys))


def with_good(*bad: sketch_pb2.Sketch) -> list[sketch_pb2.Sketch]:
    """Bad sketches after three good ones, so the index in the message matters."""
    return [GOOD, GOOD, GOOD, *bad]


ENCODE_CASES = {
    "empty request": ([], "sketches: empty request: no sketches given"),
    "too many sketches": (
        [GOOD] * (SHARED_MAX_SKETCHES + 1),
        f"sketches: {SHARED_MAX_SKETCHES + 1} sketches in one request, at most {SHARED_MAX_SKETCHES}",
    ),
    "empty sketch": (with_good(sketch()), "sketches[3].strokes: drawing has no strokes"),
    "empty stroke": (
        with_good(sketch(stroke([1], [1]), stroke([], []))),
        "sketches[3].strokes[1]: stroke has no points",
    ),
    "x/y mismatch": (
        with_good(sketch(stroke([1], [1]), stroke([1, 2, 3, 4, 5], [1, 2, 3, 4]))),
        "sketches[3].strokes[1].y: has 4 values but x has 5",
    ),
    "NaN": (
        with_good(sketch(stroke([1, math.nan], [1, 2]))),
        "sketches[3].strokes[0].x: value nan at point 1 is not finite",
    ),
    "infinity": (
        with_good(sketch(stroke([1, 2], [1, math.inf]))),
        "sketches[3].strokes[0].y: value inf at point 1 is not finite",
    ),
    "id echoed": (with_good(sketch(sketch_id="cat-7")), "sketches[3].strokes (id 'cat-7'): drawing has no strokes"),
}


@pytest.mark.parametrize("case", sorted(ENCODE_CASES))
def test_encode_rejects_bad_input(shared_server: RunningServer, case: str) -> None:
    sketches, message = ENCODE_CASES[case]
    for method, request in (
        ("Encode", sketch_pb2.EncodeRequest(sketches=sketches)),
        ("Score", sketch_pb2.ScoreRequest(sketches=sketches)),
        ("Reconstruct", sketch_pb2.ReconstructRequest(sketches=sketches)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(shared_server.stub, method)(request, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == INVALID, method
        assert caught.value.details().startswith(message), method
    assert (
        len(shared_server.stub.Encode(sketch_pb2.EncodeRequest(sketches=[GOOD]), timeout=CALL_TIMEOUT_S).embeddings)
        == 1
    )


def test_too_many_points_after_simplification_is_simplified_further(shared_server: RunningServer) -> None:
    """Issue 12 item 2: by default a sketch longer than the model's maximum is fitted, and counted."""
    counter = "sketchserve_sketches_simplified_further_total"
    before = shared_server.metric(counter)
    max_points = shared_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest()).max_points
    request = sketch_pb2.EncodeRequest(sketches=with_good(zigzag(max_points + 50), zigzag(max_points + 60)))
    assert len(shared_server.stub.Encode(request, timeout=CALL_TIMEOUT_S).embeddings) == 5
    assert shared_server.metric(counter) == before + 2


def test_too_many_points_after_simplification_refused_when_asked(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model, too_long="refuse")) as server:
        max_points = server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest()).max_points
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Encode(
                sketch_pb2.EncodeRequest(sketches=with_good(zigzag(max_points + 50))), timeout=CALL_TIMEOUT_S
            )
        assert server.metric("sketchserve_sketches_simplified_further_total") == 0
    assert caught.value.code() == INVALID
    assert caught.value.details().startswith("sketches[3]: ")
    assert caught.value.details().endswith(f"points after simplification, the model accepts at most {max_points}")


def test_oversized_message_is_resource_exhausted(shared_server: RunningServer) -> None:
    points = SHARED_MAX_MESSAGE_BYTES // 8 + 100
    huge = sketch(stroke([float(i) for i in range(points)], [0.0] * points))
    with pytest.raises(grpc.RpcError) as caught:
        shared_server.stub.Encode(sketch_pb2.EncodeRequest(sketches=[huge]), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def latent(size: int, value: float = 0.1) -> sketch_pb2.Embedding:
    return sketch_pb2.Embedding(mu=[value] * size)


def reconstruct_cases(latent_size: int, max_points: int) -> dict[str, tuple[sketch_pb2.ReconstructRequest, str]]:
    ok = [latent(latent_size)]
    return {
        "both inputs": (
            sketch_pb2.ReconstructRequest(sketches=[GOOD], latents=ok),
            "latents: give either sketches or latents",
        ),
        "no input": (sketch_pb2.ReconstructRequest(), "sketches: empty request"),
        "latent size": (
            sketch_pb2.ReconstructRequest(latents=ok + [latent(latent_size + 1)]),
            f"latents[1].mu: has {latent_size + 1} values",
        ),
        "latent NaN": (
            sketch_pb2.ReconstructRequest(latents=[latent(latent_size, math.nan)]),
            "latents[0].mu: holds NaN",
        ),
        "too many latents": (
            sketch_pb2.ReconstructRequest(latents=ok * (SHARED_MAX_SKETCHES + 1)),
            "latents: 17 latents in one request",
        ),
        "hot": (sketch_pb2.ReconstructRequest(latents=ok, temperature=2.5), "temperature: 2.5 is outside [0, 2]"),
        "cold": (sketch_pb2.ReconstructRequest(latents=ok, temperature=-0.1), "temperature: "),
        "NaN temperature": (sketch_pb2.ReconstructRequest(latents=ok, temperature=math.nan), "temperature: nan"),
        "max_points": (
            sketch_pb2.ReconstructRequest(latents=ok, max_points=max_points + 1),
            f"max_points: {max_points + 1} exceeds",
        ),
    }


def test_reconstruct_rejects_bad_parameters(shared_server: RunningServer) -> None:
    model = shared_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest())
    for case, (request, message) in reconstruct_cases(model.latent_size, model.max_points).items():
        with pytest.raises(grpc.RpcError) as caught:
            shared_server.stub.Reconstruct(request, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == INVALID, case
        assert caught.value.details().startswith(message), case


def test_encode_stream_error_names_the_request(shared_server: RunningServer) -> None:
    requests = [sketch_pb2.EncodeRequest(sketches=[GOOD]), sketch_pb2.EncodeRequest(sketches=[GOOD, sketch()])]
    responses = shared_server.stub.EncodeStream(iter(requests), timeout=CALL_TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as caught:
        list(responses)
    assert caught.value.code() == INVALID
    assert caught.value.details() == "requests[1].sketches[1].strokes: drawing has no strokes"


def test_status_mapping_table() -> None:
    cases = {
        InvalidRequest("sketches", "x"): grpc.StatusCode.INVALID_ARGUMENT,
        QueueFull("busy"): grpc.StatusCode.RESOURCE_EXHAUSTED,
        DeadlineDropped("late"): grpc.StatusCode.DEADLINE_EXCEEDED,
        KeyError("bug"): grpc.StatusCode.INTERNAL,
    }
    for exc, code in cases.items():
        assert map_exception(exc).code == code
    assert map_exception(KeyError("secret")).message == INTERNAL_MESSAGE


def test_a_call_cancelled_at_its_deadline_counts_as_deadline_exceeded() -> None:
    """The caller's timer runs ahead of the server's, so its cancel arrives with a little time left."""
    assert cancelled_code(0.0) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled_code(0.02) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled_code(5.0) == grpc.StatusCode.CANCELLED
    assert cancelled_code(None) == grpc.StatusCode.CANCELLED


class Exploding(sketch_pb2_grpc.SketchServiceServicer):
    """A servicer with a bug in every method, to show the interceptor turns any error into INTERNAL."""

    async def Encode(self, request, context):  # noqa: N802 - gRPC method name
        raise KeyError("bug in Encode")

    async def EncodeStream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        yield sketch_pb2.EncodeResponse(model_version="first")
        raise KeyError("bug in EncodeStream")


def test_unexpected_errors_are_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str]] = []

    async def scenario() -> list[grpc.StatusCode]:
        server = grpc.aio.server(interceptors=[StatusInterceptor(lambda m, c, s: calls.append((m, c)))])
        sketch_pb2_grpc.add_SketchServiceServicer_to_server(Exploding(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sketch_pb2_grpc.SketchServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Encode(sketch_pb2.EncodeRequest(), timeout=CALL_TIMEOUT_S)
            codes.append(caught.value.code())
            assert caught.value.details() == INTERNAL_MESSAGE
            stream = stub.EncodeStream(iter([sketch_pb2.EncodeRequest()]), timeout=CALL_TIMEOUT_S)
            assert (await stream.read()).model_version == "first"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stream.read()
            codes.append(caught.value.code())
        await server.stop(0)
        return codes

    with caplog.at_level(logging.ERROR, logger="sketchserve.server.errors"):
        codes = asyncio.run(scenario())
    assert codes == [grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL]
    assert sorted(calls) == [("Encode", "INTERNAL"), ("EncodeStream", "INTERNAL")]
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert len(logged) == 2 and all(r.exc_info for r in logged)


def test_no_input_wedges_the_server(shared_server: RunningServer) -> None:
    rng = np.random.default_rng(0)
    garbage = [sketch(stroke(rng.normal(size=n).tolist(), rng.normal(size=n).tolist())) for n in (1, 2, 3)] + [
        sketch(stroke([0.0], [0.0]), stroke([0.0], [0.0])),
        sketch(stroke([1e30, -1e30], [1e-30, 3.0])),
    ]
    response = shared_server.stub.Encode(sketch_pb2.EncodeRequest(sketches=garbage), timeout=CALL_TIMEOUT_S)
    assert np.isfinite([list(e.mu) for e in response.embeddings]).all()
    assert len(shared_server.stub.Encode(sketch_pb2.EncodeRequest(sketches=random_sketches(1, 2))).embeddings) == 2


ENCODE = "/sketch.v1.SketchService/Encode"
ENCODE_STREAM = "/sketch.v1.SketchService/EncodeStream"


def bad_utf8_id_request() -> bytes:
    """A well-formed EncodeRequest whose sketch id is not UTF-8 (proto3 strings must be)."""
    good = sketch_pb2.EncodeRequest(sketches=[sketch(stroke([0, 1], [0, 1]), sketch_id="ab")]).SerializeToString()
    return good.replace(b"ab", b"\xff\xfe")


@pytest.fixture
def fresh_server(tiny_model: Path) -> Iterator[RunningServer]:
    """A server of its own: its once-per-interval log has not spoken yet."""
    with running_server(server_config(tiny_model)) as server:
        yield server


def test_undecodable_requests_are_invalid_argument_counted_and_logged_once(
    fresh_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    shared_server = fresh_server

    def counted(method: str) -> float:
        return shared_server.metric("sketchserve_requests_total", method=method, code="INVALID_ARGUMENT")

    before = counted("Encode"), counted("EncodeStream")
    encode = shared_server.channel.unary_unary(ENCODE)
    stream = shared_server.channel.stream_stream(ENCODE_STREAM)
    with caplog.at_level(logging.WARNING, logger="sketchserve.server.errors"):
        for body in (b"\xff", bad_utf8_id_request(), b"\x0a\x05\x12"):
            with pytest.raises(grpc.RpcError) as caught:
                encode(body, timeout=CALL_TIMEOUT_S)
            assert caught.value.code() == INVALID
            assert caught.value.details().startswith("request: not a valid sketch.v1.EncodeRequest message")
        good = sketch_pb2.EncodeRequest(sketches=[GOOD]).SerializeToString()
        responses = stream(iter([good, b"\xff"]), timeout=CALL_TIMEOUT_S)
        assert len(sketch_pb2.EncodeResponse.FromString(next(responses)).embeddings) == 1
        with pytest.raises(grpc.RpcError) as caught:
            next(responses)
        assert caught.value.code() == INVALID
        assert caught.value.details().startswith("requests[1]: not a valid sketch.v1.EncodeRequest message")
    # Read after a call that the server answered later: each is counted just after its answer.
    shared_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
    assert (counted("Encode") - before[0], counted("EncodeStream") - before[1]) == (3, 1)
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in logged] == ["undecodable request"]
    assert not any(r.exc_info for r in logged)
    assert "DecodeError" not in caplog.text


def test_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    noisy = RateLimitedLog(logging.getLogger("test.noisy"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.noisy"):
        for t in (0.0, 1.0, 2.0, 10.5, 11.0):
            now[0] = t
            noisy.warning("event", n=t)
    assert [(r.__dict__["kv"]["n"], r.__dict__["kv"]["suppressed"]) for r in caplog.records] == [(0.0, 0), (10.5, 2)]


def test_extreme_finite_latents_are_refused_by_name_and_the_bound_decodes(shared_server: RunningServer) -> None:
    size = shared_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest()).latent_size
    huge = [sketch_pb2.Embedding(mu=[0.0] * size), sketch_pb2.Embedding(mu=[1.0, -3.4028235e38] * (size // 2))]
    with pytest.raises(grpc.RpcError) as caught:
        shared_server.stub.Reconstruct(sketch_pb2.ReconstructRequest(latents=huge), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == INVALID
    assert (
        caught.value.details() == f"latents[1].mu[1]: -3.40282e+38 is outside [-{MAX_LATENT_ABS:g}, {MAX_LATENT_ABS:g}]"
    )
    edge = [sketch_pb2.Embedding(mu=[sign * MAX_LATENT_ABS] * size) for sign in (1.0, -1.0)]
    for temperature in (0.0, 1.0):
        request = sketch_pb2.ReconstructRequest(latents=edge, temperature=temperature, max_points=32)
        response = shared_server.stub.Reconstruct(request, timeout=CALL_TIMEOUT_S)
        assert len(response.sketches) == 2


BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "face"


@pytest.mark.slow
def test_the_trained_model_decodes_up_to_the_latent_bound_and_refuses_beyond() -> None:
    """Float32's largest value is refused by name; the bound itself still draws on the bundled face model."""
    with running_server(server_config(BUNDLED_MODEL, warmup=False)) as server:
        size = server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest()).latent_size
        largest = sketch_pb2.ReconstructRequest(
            latents=[sketch_pb2.Embedding(mu=[3.4028235e38] * size)], temperature=1.0
        )
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Reconstruct(largest, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == INVALID
        assert caught.value.details().startswith("latents[0].mu[0]: 3.40282e+38 is outside")
        edge = [sketch_pb2.Embedding(mu=[sign * MAX_LATENT_ABS] * size) for sign in (1.0, -1.0)]
        for temperature in (0.0, 1.0):
            request = sketch_pb2.ReconstructRequest(latents=edge, temperature=temperature)
            response = server.stub.Reconstruct(request, timeout=CALL_TIMEOUT_S)
            assert [len(s.strokes) > 0 for s in response.sketches] == [True, True]
