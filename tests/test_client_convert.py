"""The client's pure parts: input conversion, chunking, merging, settings, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest

from sketchserve.client import ClientConfig, Sampling, Sketch, SketchServiceError, convert, plans
from sketchserve.client import config as client_config
from sketchserve.client.errors import from_rpc_error, join_stream_indices, shift_sketch_indices
from sketchserve.client.retry import Backoff
from sketchserve.pb.sketch.v1 import sketch_pb2

TRIANGLE_S3 = np.array([[10, 20, 0], [5, 0, 0], [-5, 5, 1], [30, 0, 0], [0, 4, 1]], dtype=np.float32)


def _drawing() -> list[np.ndarray]:
    return [np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[10.0, 10.0]])]


def test_stroke3_input_becomes_absolute_strokes() -> None:
    sketch = convert.as_sketch(TRIANGLE_S3, 0)
    assert len(sketch.strokes) == 2
    # stroke-3 starts at the origin: N rows are N + 1 points (sketchserve.strokes)
    np.testing.assert_allclose(sketch.strokes[0], [[0, 0], [10, 20], [15, 20], [10, 25]])
    np.testing.assert_allclose(sketch.strokes[1], [[40, 25], [40, 29]])
    np.testing.assert_allclose(sketch.to_stroke3(), TRIANGLE_S3)


def test_drawing_and_sketch_inputs() -> None:
    from_drawing = convert.as_sketch(_drawing(), 3)
    assert [s.shape for s in from_drawing.strokes] == [(2, 2), (1, 2)]
    given = Sketch((np.zeros((1, 2)),), id="mine")
    assert convert.as_sketch(given, 0) is given


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (np.zeros((4, 2)), r"sketches\[7\]: expected a stroke-3 array"),
        (np.zeros((0, 3)), r"sketches\[7\]: the stroke-3 array is empty"),
        ([np.zeros((3, 3))], r"sketches\[7\]\.strokes\[0\]: expected an \(n, 2\) array"),
        ([[["a", "b"]]], r"sketches\[7\]\.strokes\[0\]: not an array"),
        ("drawing", r"sketches\[7\]: expected a Sketch"),
    ],
)
def test_malformed_input_names_the_sketch(item: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert.as_sketch(item, 7)  # type: ignore[arg-type]


def test_bare_array_and_empty_input_are_refused() -> None:
    with pytest.raises(ValueError, match="wrap a single stroke-3 array"):
        convert.as_sketches(TRIANGLE_S3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no sketches"):
        convert.as_sketches([])


def test_protobuf_round_trip() -> None:
    sketch = Sketch(tuple(_drawing()), id="k1")
    message = convert.sketch_to_pb(sketch)
    assert list(message.strokes[0].x) == [0.0, 3.0] and list(message.strokes[0].y) == [0.0, 4.0]
    back = convert.sketch_from_pb(sketch_pb2.Sketch.FromString(message.SerializeToString()))
    assert back.id == "k1" and back.num_points == 3
    for a, b in zip(back.strokes, sketch.strokes):
        np.testing.assert_array_equal(a, b)


def test_chunk_bounds() -> None:
    assert plans.chunk_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert plans.chunk_bounds(4, 4) == [(0, 4)]


def test_large_encode_is_chunked_onto_a_stream() -> None:
    config = ClientConfig(max_sketches_per_call=64)
    plan = plans.encode([TRIANGLE_S3] * 150, config)
    assert plan.streaming and plan.method == "EncodeStream"
    assert [len(r.packed.sketch_strokes) for r in plan.requests] == [64, 64, 22]  # packed by default
    assert all(r.packed_response and not r.sketches for r in plan.requests)
    readable = plans.encode([TRIANGLE_S3] * 150, ClientConfig(max_sketches_per_call=64, packed=False))
    assert [len(r.sketches) for r in readable.requests] == [64, 64, 22]
    assert not any(r.HasField("packed") or r.packed_response for r in readable.requests)
    assert plan.offsets == (0, 64, 128)
    single = plans.encode([TRIANGLE_S3] * 3, config)
    assert not single.streaming and single.method == "Encode" and len(single.requests) == 1


def _encode_response(rows: int, version: str = "v1") -> sketch_pb2.EncodeResponse:
    embeddings = [sketch_pb2.Embedding(mu=[i, i + 0.5], sigma=[1.0, 2.0]) for i in range(rows)]
    return sketch_pb2.EncodeResponse(embeddings=embeddings, model_version=version)


def test_encode_responses_merge_in_order() -> None:
    plan = plans.encode([TRIANGLE_S3] * 5, ClientConfig(max_sketches_per_call=3))
    result = plans.finish(plan, [_encode_response(3), _encode_response(2)])
    assert result.mu.shape == (5, 2) and result.mu.dtype == np.float32
    np.testing.assert_allclose(result.mu[:, 0], [0, 1, 2, 0, 1])
    np.testing.assert_allclose(result.sigma[4], [1.0, 2.0])
    assert result.model_version == "v1" and len(result) == 5


def test_missing_responses_and_version_changes_are_errors() -> None:
    plan = plans.encode([TRIANGLE_S3] * 5, ClientConfig(max_sketches_per_call=3))
    with pytest.raises(SketchServiceError, match="expected 2 responses") as info:
        plans.finish(plan, [_encode_response(3)])
    assert info.value.code == grpc.StatusCode.INTERNAL
    with pytest.raises(SketchServiceError, match="changed model"):
        plans.finish(plan, [_encode_response(3, "v1"), _encode_response(2, "v2")])


def test_assign_and_score_merge() -> None:
    nearest = [sketch_pb2.ClusterDistance(cluster=c, distance=d) for c, d in [(2, 0.5), (0, 1.5)]]
    response = sketch_pb2.AssignResponse(
        assignments=[sketch_pb2.Assignment(cluster=2, distance=0.5, nearest=nearest)] * 2, model_version="v"
    )
    result = plans.merge_assign([response])
    assert result.cluster.tolist() == [2, 2] and result.nearest_cluster.tolist() == [[2, 0], [2, 0]]
    np.testing.assert_allclose(result.nearest_distance[1], [0.5, 1.5])
    scores = plans.merge_score(
        [sketch_pb2.ScoreResponse(scores=[sketch_pb2.SketchScore(reconstruction_nll=1.5, kl=0.25)], model_version="v")]
    )
    assert scores.reconstruction_nll.tolist() == [1.5] and scores.kl.tolist() == [0.25]


def test_reconstruct_plans() -> None:
    config = ClientConfig(max_sketches_per_call=2)
    sampling = Sampling(temperature=0.5, max_points=40, seed=9)
    plan = plans.reconstruct(None, np.zeros((5, 4)), sampling, config)
    assert [len(r.latents) for r in plan.requests] == [2, 2, 1]
    assert plan.requests[0].seed == 9 and plan.requests[0].max_points == 40
    by_sketch = plans.reconstruct([TRIANGLE_S3], None, sampling, config)
    assert len(by_sketch.requests[0].packed.sketch_strokes) == 1
    with pytest.raises(ValueError, match="exactly one"):
        plans.reconstruct(None, None, sampling, config)
    with pytest.raises(ValueError, match="latents: values must be finite"):
        plans.reconstruct(None, np.full((1, 4), np.nan), sampling, config)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=3.0)


def test_channel_options_leave_retries_to_the_client() -> None:
    options = dict(client_config.channel_options(ClientConfig(), (("grpc.primary_user_agent", "t"),)))
    # One retry layer, sketchserve.client.retry: the service config only balances.
    assert "methodConfig" not in json.loads(options["grpc.service_config"])
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.primary_user_agent"] == "t"


def test_channels_balance_round_robin_and_keep_alive() -> None:
    options = dict(client_config.channel_options(ClientConfig()))
    assert json.loads(options["grpc.service_config"])["loadBalancingConfig"] == [{"round_robin": {}}]
    assert options["grpc.keepalive_time_ms"] == 30_000
    # A call can move to another replica only while gRPC still holds its request.
    assert options["grpc.per_rpc_retry_buffer_size"] >= ClientConfig().max_message_bytes
    single = dict(client_config.channel_options(ClientConfig(load_balancing="pick_first")))
    assert json.loads(single["grpc.service_config"])["loadBalancingConfig"] == [{"pick_first": {}}]
    with pytest.raises(ValueError, match="load_balancing"):
        ClientConfig(load_balancing="random")


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class Invalid(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT


def schedule(config: ClientConfig) -> list[float]:
    """The waits of the longest outage the default settings ride out (no jitter: the longest waits)."""
    clock = [0.0]
    backoff = Backoff(config, clock=lambda: clock[0], draw=lambda low, high: high)
    waits = []
    while (wait := backoff.next_wait(Unavailable())) is not None:
        waits.append(wait)
        clock[0] += wait
    return waits


def test_default_retries_span_a_restart_and_reset_on_progress() -> None:
    waits = schedule(ClientConfig())
    # A killed server is back within ~2.4 s: the default rides out more than ten times that.
    assert sum(waits) > 25.0 and sum(waits) <= ClientConfig().retry_budget
    assert waits[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8]) and max(waits) == ClientConfig().retry_max_backoff
    assert schedule(ClientConfig(retry_attempts=3)) == pytest.approx([0.1, 0.2])
    assert schedule(ClientConfig(retry_budget=0.0)) == []
    backoff = Backoff(ClientConfig(), draw=lambda low, high: high)
    assert backoff.next_wait(Invalid()) is None
    assert [backoff.next_wait(Unavailable()) for _ in range(2)] == pytest.approx([0.1, 0.2])
    backoff.answered()
    assert backoff.next_wait(Unavailable()) == pytest.approx(0.1)


def test_config_validation_and_overrides() -> None:
    assert client_config.resolve(None, {"timeout": 2.0}).timeout == 2.0
    with pytest.raises(TypeError, match="unknown client settings"):
        client_config.resolve(None, {"timout": 2.0})
    with pytest.raises(ValueError, match="max_sketches_per_call"):
        ClientConfig(max_sketches_per_call=0)


def test_error_indices_count_in_the_whole_input() -> None:
    shifted = shift_sketch_indices("sketches[3].strokes[1]: x has 5 values", 64)
    assert shifted == "sketches[67].strokes[1]: x has 5 values"
    assert join_stream_indices("requests[2].sketches[1]: no strokes", (0, 64, 128)) == "sketches[129]: no strokes"

    class Failed(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self) -> str:
            return "sketches[0]: no strokes"

    error = from_rpc_error(Failed(), "Encode", 128)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == "Encode failed: INVALID_ARGUMENT: sketches[128]: no strokes"


def test_client_does_not_import_torch() -> None:
    code = "import sys, sketchserve.client, sketchserve.client.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
