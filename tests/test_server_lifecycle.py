"""Server lifecycle: health transitions, dropped deadlines, a full queue, startup failure, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from engine_probe import EngineProbe
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import (
    CALL_TIMEOUT_S,
    RunningServer,
    ed25519_keypair,
    random_sketches,
    running_server,
    server_config,
)

from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.main import serve

pytestmark = pytest.mark.timeout(120)

SERVICE = "sketch.v1.SketchService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Queued calls wait this long for company, far beyond any test: batches start only when full.
SLOW_FLUSH_MS = 600_000.0
# Such a call's deadline passes while it is queued (it only has to reach the server first).
SHORT_DEADLINE_S = 1.0
SLOW_QUEUE = 8
IN_FLIGHT_CALLS = 6


def check(server: RunningServer, service: str = SERVICE) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S).status


def encode_request(seed: int, count: int) -> sketch_pb2.EncodeRequest:
    return sketch_pb2.EncodeRequest(sketches=random_sketches(seed, count))


@pytest.mark.slow
def test_health_is_not_serving_until_warm_and_while_draining(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model), load=False) as server:
        assert check(server) == NOT_SERVING
        assert check(server, "") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Encode(encode_request(0, 1), timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "warming up" in caught.value.details()
        server.run(server.built.load())
        assert check(server) == SERVING
        watch = health_pb2_grpc.HealthStub(server.channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=CALL_TIMEOUT_S
        )
        assert next(watch).status == SERVING
        stopping = asyncio.run_coroutine_threadsafe(server.built.stop(1.0), server.loop)
        assert next(watch).status == NOT_SERVING
        stopping.result(CALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def slow_server(tiny_model: Path) -> Iterator[RunningServer]:
    """Batches of 8 that start only when full; a queue of 8."""
    cfg = server_config(
        tiny_model,
        max_batch_size=SLOW_QUEUE,
        max_queue=SLOW_QUEUE,
        max_sketches_per_request=SLOW_QUEUE,
        max_delay_ms=SLOW_FLUSH_MS,
    )
    with running_server(cfg) as server:
        yield server


ENCODE_STAGES = ("preprocess", "encode")


def dropped(server: RunningServer, reasons: tuple[str, ...] = ("cancelled", "deadline")) -> float:
    return sum(
        server.metric("sketchserve_dropped_items_total", batcher=b, reason=r) for b in ENCODE_STAGES for r in reasons
    )


def computed(server: RunningServer) -> list[float]:
    """Sketches that went through each stage so far."""
    return [server.metric("sketchserve_batch_size_sum", batcher=b) for b in ENCODE_STAGES]


def test_a_call_whose_deadline_passes_while_queued_costs_no_compute(slow_server: RunningServer) -> None:
    probe = EngineProbe.install(slow_server)
    computed_before, dropped_before = computed(slow_server), dropped(slow_server)
    expired_before = dropped(slow_server, ("deadline",))
    counted_before = slow_server.metric("sketchserve_requests_total", method="Encode", code="DEADLINE_EXCEEDED")
    with pytest.raises(grpc.RpcError) as caught:
        slow_server.stub.Encode(encode_request(1, 1), timeout=SHORT_DEADLINE_S)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    slow_server.run(probe.wait_idle())  # the server has given the call up
    assert len(probe.timeouts) == 1  # it was queued
    assert computed(slow_server) == computed_before
    assert dropped(slow_server) - dropped_before == 1
    full = slow_server.stub.Encode(encode_request(2, SLOW_QUEUE), timeout=CALL_TIMEOUT_S)
    assert len(full.embeddings) == SLOW_QUEUE
    assert [after - before for after, before in zip(computed(slow_server), computed_before)] == [SLOW_QUEUE] * 2
    # Counted as what it was: a deadline, not a caller who went away.
    assert dropped(slow_server, ("deadline",)) - expired_before == 1
    counted = slow_server.metric("sketchserve_requests_total", method="Encode", code="DEADLINE_EXCEEDED")
    assert counted - counted_before == 1


def test_a_full_queue_fails_fast_with_resource_exhausted(slow_server: RunningServer) -> None:
    """5 + 4 sketches do not fit a queue of 8: whichever call comes second is refused at once,
    while the first waits for a full batch, which a third call then completes."""
    sizes = (5, 4)
    done: queue.Queue = queue.Queue()
    futures = [
        slow_server.stub.Encode.future(encode_request(3 + i, n), timeout=CALL_TIMEOUT_S) for i, n in enumerate(sizes)
    ]
    for size, future in zip(sizes, futures):
        future.add_done_callback(lambda f, size=size: done.put((size, f)))
    refused_size, refused = done.get(timeout=CALL_TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as caught:
        refused.result()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.match(r"server busy: \d+ sketches in flight of at most \d+", caught.value.details())
    served_size = sum(sizes) - refused_size
    filler = slow_server.stub.Encode(encode_request(5, SLOW_QUEUE - served_size), timeout=CALL_TIMEOUT_S)
    assert len(filler.embeddings) == SLOW_QUEUE - served_size
    served_size_again, served = done.get(timeout=CALL_TIMEOUT_S)
    assert served_size_again == served_size and len(served.result().embeddings) == served_size


def startup_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``error`` field of every "startup failed" log line (logs.fields puts it in the record's kv)."""
    return [str(r.__dict__["kv"]["error"]) for r in caplog.records if r.getMessage() == "startup failed"]


def test_startup_fails_cleanly_on_a_corrupt_artifact(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    with (broken / "encoder.pt").open("ab") as handle:
        handle.write(b"tampered")
    with caplog.at_level(logging.ERROR, logger="sketchserve.server.main"):
        code = asyncio.run(serve(server_config(broken)))
    assert code == 1
    failures = startup_errors(caplog)
    assert len(failures) == 1 and "encoder.pt" in failures[0]


def read_until(stream, pattern: re.Pattern[str], count: int = 1) -> re.Match[str]:
    """Read log lines until ``pattern`` has matched ``count`` lines; the last match."""
    found = None
    for _ in range(count):
        for line in stream:
            found = pattern.search(line)
            if found:
                break
        else:
            raise AssertionError(f"server log ended before {pattern.pattern!r}")
    if found is None:
        raise AssertionError(f"no line matched {pattern.pattern!r}")
    return found


@pytest.mark.slow
def test_sigterm_finishes_every_accepted_call_and_exits_zero(tiny_model: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "sketchserve.cli",
        "serve",
        "--model",
        str(tiny_model),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--torch-threads",
        "1",
        "--max-batch-size",
        "64",
        "--max-delay-ms",
        "1000",
        "--log-level",
        "DEBUG",
        "--grace-seconds",
        "600",
    ]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = read_until(proc.stderr, re.compile(r"event=serving port=(\d+)")).group(1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = sketch_pb2_grpc.SketchServiceStub(channel)
            requests: queue.Queue = queue.Queue()
            requests.put(encode_request(10, 2))
            stream = stub.EncodeStream(iter(requests.get, None), timeout=CALL_TIMEOUT_S)
            assert len(next(stream).embeddings) == 2
            unary = [
                stub.Encode.future(encode_request(11 + i, 1), timeout=CALL_TIMEOUT_S) for i in range(IN_FLIGHT_CALLS)
            ]
            read_until(proc.stderr, re.compile(r"event=\"call accepted\" method=Encode\b"), IN_FLIGHT_CALLS)
            proc.send_signal(signal.SIGTERM)
            read_until(proc.stderr, re.compile(r"event=draining"))
            requests.put(encode_request(20, 3))  # after SIGTERM: not accepted, the client resends it elsewhere
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in ended.value.details()
            assert [len(f.result().embeddings) for f in unary] == [1] * IN_FLIGHT_CALLS
            # The open stream (never half-closed by this client) does not hold the shutdown
            # for the grace period, which is longer than this test's timeout.
            _, rest = proc.communicate(timeout=CALL_TIMEOUT_S)
            requests.put(None)
        assert proc.returncode == 0, rest
        assert "event=stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_trusted_key_makes_the_server_refuse_an_unsigned_artifact(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sketchserve.signing import sign_manifest

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    private, public = ed25519_keypair(tmp_path, "operator")
    with caplog.at_level(logging.ERROR, logger="sketchserve.server.main"):
        code = asyncio.run(serve(server_config(model, trusted_key=public)))
    assert code == 1
    failures = startup_errors(caplog)
    assert len(failures) == 1 and "manifest.sig: missing" in failures[0]
    sign_manifest(model, private)
    with running_server(server_config(model, trusted_key=public)) as server:
        assert server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S).latent_size == 8


def test_clusters_with_a_nan_centroid_stop_the_server_at_startup(
    clustered_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sketchserve.artifact import read_manifest, write_manifest

    model = tmp_path / "model"
    shutil.copytree(clustered_model, model)
    document = json.loads((model / "clusters.json").read_text())
    document["centroids"][2][5] = float("nan")
    (model / "clusters.json").write_text(json.dumps(document))
    write_manifest(model, read_manifest(model))
    with caplog.at_level(logging.ERROR, logger="sketchserve.server.main"):
        code = asyncio.run(serve(server_config(model)))
    assert code == 1
    failures = startup_errors(caplog)
    assert len(failures) == 1 and "clusters.json: centroids[2][5] is nan" in failures[0]
