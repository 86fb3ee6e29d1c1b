"""The typed clients against a real server on port 0 (tiny random artifact with clusters)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import grpc
import numpy as np
import pytest
from server_fixtures import (
    SHARED_MAX_SKETCHES,
    RunningServer,
    random_sketches,
    running_server,
    server_config,
)

from sketchserve.client import AsyncSketchClient, Sampling, Sketch, SketchClient, SketchServiceError, health
from sketchserve.client.convert import SketchInput, sketch_from_pb

pytestmark = pytest.mark.timeout(120)

MU_TOLERANCE = 1e-5  # batched and unbatched encodes may differ by float rounding only
CALL_TIMEOUT_S = 60.0
MANY = 2 * SHARED_MAX_SKETCHES + 5  # more sketches than two requests hold: three chunks
ASYNC_STREAM_TRIES = 20  # grpc.aio masks the status in about one try of three here: twenty see it


def _sketches(seed: int, count: int) -> list[Sketch]:
    return [sketch_from_pb(s) for s in random_sketches(seed, count)]


@pytest.fixture()
def client(clustered_server: RunningServer):
    with SketchClient(clustered_server.target, timeout=CALL_TIMEOUT_S, max_sketches_per_call=SHARED_MAX_SKETCHES) as c:
        yield c


def test_encode_chunks_onto_a_stream_with_the_same_codes(client: SketchClient) -> None:
    sketches = _sketches(1, MANY)
    info = client.model_info()
    streamed = client.encode(sketches)
    assert streamed.mu.shape == (MANY, info.latent_size) and streamed.sigma.shape == streamed.mu.shape
    assert streamed.model_version == info.version
    alone = np.vstack([client.encode([s]).mu for s in sketches[-4:]])
    np.testing.assert_allclose(streamed.mu[-4:], alone, atol=MU_TOLERANCE)
    assert np.all(streamed.sigma > 0)


def test_every_input_form_of_one_drawing_gives_the_same_code(client: SketchClient) -> None:
    sketch = _sketches(2, 1)[0]
    forms: list[SketchInput] = [sketch, list(sketch.strokes), sketch.to_stroke3()]
    mu = client.encode(forms).mu
    np.testing.assert_allclose(mu[1], mu[0], atol=MU_TOLERANCE)
    np.testing.assert_allclose(mu[2], mu[0], atol=MU_TOLERANCE)


def test_assign_orders_the_nearest_clusters(client: SketchClient) -> None:
    info = client.model_info()
    result = client.assign(_sketches(3, MANY), top_k=2)
    assert len(result) == MANY and result.nearest_cluster.shape == (MANY, 2)
    assert np.all((result.cluster >= 0) & (result.cluster < info.cluster_count))
    np.testing.assert_array_equal(result.nearest_cluster[:, 0], result.cluster)
    np.testing.assert_allclose(result.nearest_distance[:, 0], result.distance)
    assert np.all(np.diff(result.nearest_distance, axis=1) >= 0)


def test_reconstruct_sketches_and_latents(client: SketchClient) -> None:
    sketches = _sketches(4, 3)
    sampling = Sampling(temperature=0.7, max_points=20, seed=5)
    first = client.reconstruct(sketches, sampling=sampling)
    again = client.reconstruct(sketches, sampling=sampling)
    assert len(first) == 3
    for a, b in zip(first.sketches, again.sketches):
        assert a.num_points <= 20 + len(a.strokes)
        np.testing.assert_array_equal(a.to_stroke3(), b.to_stroke3())
    latents = client.encode(sketches).mu
    decoded = client.reconstruct(latents=latents, sampling=Sampling(max_points=20))
    assert len(decoded) == 3 and decoded.model_version == first.model_version


def test_score_and_model_info(client: SketchClient) -> None:
    scores = client.score(_sketches(5, 4))
    assert scores.kl.shape == (4,) and np.all(np.isfinite(scores.reconstruction_nll)) and np.all(scores.kl >= 0)
    info = client.model_info()
    assert info.max_sketches_per_request == SHARED_MAX_SKETCHES
    assert info.manifest["latent_size"] == info.latent_size and info.device == "cpu"


def test_clusters_with_exemplars(client: SketchClient) -> None:
    info = client.model_info()
    listed = client.clusters(exemplars=1)
    assert len(listed) == info.cluster_count
    for cluster in listed.clusters:
        assert cluster.centroid.shape == (info.latent_size,)
        assert len(cluster.exemplars) == 1 and cluster.exemplars[0].num_points > 0
        assert cluster.prototype is not None and cluster.prototype.num_points > 0


def test_bad_sketch_is_named_by_its_index_in_the_whole_input(client: SketchClient) -> None:
    sketches = _sketches(6, MANY)
    bad = SHARED_MAX_SKETCHES + 3  # inside the second request
    sketches[bad] = Sketch((np.array([[0.0, 1.0], [np.nan, 2.0]]),))
    with pytest.raises(SketchServiceError) as info:
        client.score(sketches)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"sketches[{bad}]" in info.value.details


def test_a_bad_sketch_on_a_stream_is_named_by_its_index_in_the_whole_input(clustered_server: RunningServer) -> None:
    """Later requests are still being written when the server refuses one: grpc.aio then reports
    INTERNAL "Internal error from Core"; the client learns and reports the real status."""
    chunk, bad = 4, 4 * 5 + 2
    sketches = _sketches(9, 50 * chunk)
    sketches[bad] = Sketch((np.array([[0.0, 1.0], [np.inf, 2.0]]),))
    with SketchClient(clustered_server.target, max_sketches_per_call=chunk) as client:
        with pytest.raises(SketchServiceError) as info:
            client.encode(sketches)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and f"sketches[{bad}]" in info.value.details

    async def encode_async() -> SketchServiceError:
        async with AsyncSketchClient(clustered_server.target, max_sketches_per_call=chunk) as client:
            with pytest.raises(SketchServiceError) as info:
                await client.encode(sketches)
        return info.value

    for _ in range(ASYNC_STREAM_TRIES):
        error = asyncio.run(encode_async())
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        assert f"sketches[{bad}]" in error.details


def test_deadline_and_malformed_input(clustered_server: RunningServer) -> None:
    with SketchClient(clustered_server.target, timeout=1e-6) as hurried:
        with pytest.raises(SketchServiceError) as info:
            hurried.encode(_sketches(7, 1))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with SketchClient(clustered_server.target) as client:
        with pytest.raises(ValueError, match=r"sketches\[1\]"):
            client.encode([_sketches(7, 1)[0], np.zeros((3, 2))])


def test_unavailable_is_retried_up_to_the_attempts(tiny_model: Path) -> None:
    attempts = 3
    with running_server(server_config(tiny_model), load=False) as server:
        assert health.main(["--target", server.target]) == 1  # listening, not loaded: NOT_SERVING
        assert health.check_health(server.target).status == "NOT_SERVING"
        with SketchClient(server.target, retry_attempts=attempts, retry_initial_backoff=0.01) as client:
            with pytest.raises(SketchServiceError) as info:
                client.encode(_sketches(8, 1))
    # Read once the server has stopped: it counts a call just after answering it.
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert server.metric("sketchserve_requests_total", method="Encode", code="UNAVAILABLE") == attempts


def test_health_probe(clustered_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert health.main(["--target", clustered_server.target]) == 0
    assert capsys.readouterr().out == f"{clustered_server.target}: SERVING\n"
    assert health.check_health("127.0.0.1:1", timeout=1.0) == health.HealthStatus(False, "UNAVAILABLE")


def test_async_client(clustered_server: RunningServer) -> None:
    sketches = _sketches(9, MANY)

    async def calls() -> tuple[np.ndarray, np.ndarray, SketchServiceError]:
        async with AsyncSketchClient(clustered_server.target, max_sketches_per_call=SHARED_MAX_SKETCHES) as client:
            # One call at a time: the shared server's queue (64 sketches) holds one call's requests in flight.
            streamed = await client.encode(sketches)
            assigned = await client.assign(sketches)
            with pytest.raises(SketchServiceError) as info:
                await client.reconstruct(sketches[:1], sampling=Sampling(max_points=10**6))
            broken = list(sketches)
            broken[bad] = Sketch((np.array([[0.0, np.inf]]),))
            with pytest.raises(SketchServiceError, match=rf"sketches\[{bad}\]"):
                await client.score(broken)  # three requests in flight at once; the second fails
            return streamed.mu, assigned.cluster, info.value

    bad = SHARED_MAX_SKETCHES + 2
    mu, clusters, error = asyncio.run(calls())
    with SketchClient(clustered_server.target, max_sketches_per_call=SHARED_MAX_SKETCHES) as sync:
        np.testing.assert_allclose(mu, sync.encode(sketches).mu, atol=MU_TOLERANCE)
        np.testing.assert_array_equal(clusters, sync.assign(sketches).cluster)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "max_points" in error.details


def test_a_seed_draws_the_same_sketch_served_and_sampled(client: SketchClient, clustered_model: Path) -> None:
    """Reconstruct and ``sketchserve sample`` share one noise definition.

    Same latent, seed and temperature: the same drawing."""
    from sketchserve.runtime import SketchRuntime
    from sketchserve.training.sampling import decode

    runtime = SketchRuntime.load(clustered_model)
    steps = runtime.manifest.max_seq_len
    latents = np.random.default_rng(6).standard_normal((3, runtime.manifest.latent_size)).astype(np.float32)
    served = client.reconstruct(latents=latents, sampling=Sampling(temperature=0.6, max_points=steps, seed=9))
    sampled = decode(runtime, latents, 0.6, 9)
    assert any(len(s) > 1 for s in sampled)
    for one, other in zip(served.sketches, sampled, strict=True):
        np.testing.assert_allclose(one.to_stroke3(), Sketch.from_stroke3(other).to_stroke3(), atol=1e-3)


RESTART_SKETCHES = 1200
RESTART_CHUNK = 8  # 150 requests: the kill lands mid-call
# The kill comes once the server has read this many requests (the stream's first
# ones, or unary calls): with at most a window of 8 in flight, some were answered.
KILL_AFTER = 20
# Batches wait this long for company: the call lasts long enough to be interrupted.
RESTART_DELAY_MS = "40"
ACCEPTED = re.compile(r"event=\"call accepted\" method=(\w+)")
STREAM_REQUEST = re.compile(r"event=\"stream request\" method=(\w+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_process(model: Path, port: int, log: IO[str] | None = None) -> subprocess.Popen[str]:
    """A server on ``port``, logging each accepted call to a pipe (or to ``log``, which never fills)."""
    command = [sys.executable, "-m", "sketchserve.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--metrics-port", "-1", "--torch-threads", "1", "--log-level", "DEBUG"]
    command += ["--max-batch-size", "64", "--max-delay-ms", RESTART_DELAY_MS, "--grace-seconds", "30"]
    stderr = subprocess.PIPE if log is None else log
    return subprocess.Popen(command, stderr=stderr, stdout=subprocess.DEVNULL, text=True)


def wait_read(proc: subprocess.Popen[str], method: str, count: int) -> None:
    """Read the server's log until it has read ``count`` requests of ``method`` (calls, or a stream's requests)."""
    assert proc.stderr is not None
    pattern = STREAM_REQUEST if method == "EncodeStream" else ACCEPTED
    seen = 0
    for line in proc.stderr:
        found = pattern.search(line)
        if found and found.group(1) == method:
            seen += 1
            if seen == count:
                return
    raise AssertionError(f"server log ended after {seen} {method} calls")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=CALL_TIMEOUT_S)


def call_async(target: str, operation: str, sketches: list[Sketch]) -> Any:
    """``operation`` through the asyncio client, on an event loop of its own."""

    async def call() -> Any:
        async with AsyncSketchClient(target, max_sketches_per_call=RESTART_CHUNK) as client:
            return await getattr(client, operation)(sketches)

    return asyncio.run(call())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("operation", "method", "how", "asynchronous"),
    [
        ("encode", "EncodeStream", signal.SIGKILL, False),
        ("assign", "Assign", signal.SIGKILL, False),
        ("encode", "EncodeStream", signal.SIGTERM, False),
        ("encode", "EncodeStream", signal.SIGKILL, True),
        ("assign", "Assign", signal.SIGKILL, True),
    ],
)
def test_a_bulk_call_rides_out_a_server_restart(
    clustered_model: Path, tmp_path: Path, operation: str, method: str, how: signal.Signals, asynchronous: bool
) -> None:
    """Killed (or drained) and restarted on the same port mid-call: every result once, in order, as undisturbed."""
    sketches = _sketches(20, RESTART_SKETCHES)
    port = free_port()
    target = f"127.0.0.1:{port}"
    first = serve_process(clustered_model, port)
    second = None
    try:
        with ExitStack() as stack:
            client = stack.enter_context(SketchClient(target, max_sketches_per_call=RESTART_CHUNK))
            pool = stack.enter_context(ThreadPoolExecutor(1))
            if asynchronous:
                disturbed = pool.submit(call_async, target, operation, sketches)
            else:
                disturbed = pool.submit(getattr(client, operation), sketches)
            wait_read(first, method, KILL_AFTER)
            first.send_signal(how)
            first.communicate(timeout=CALL_TIMEOUT_S)
            second = serve_process(clustered_model, port, stack.enter_context((tmp_path / "second.log").open("w")))
            result = disturbed.result(timeout=CALL_TIMEOUT_S)
            undisturbed = getattr(client, operation)(sketches)
        if operation == "encode":
            assert result.mu.shape == (RESTART_SKETCHES, undisturbed.mu.shape[1])
            np.testing.assert_allclose(result.mu, undisturbed.mu, atol=MU_TOLERANCE)
        else:
            np.testing.assert_array_equal(result.cluster, undisturbed.cluster)
            np.testing.assert_allclose(result.distance, undisturbed.distance, atol=MU_TOLERANCE)
        # The restarted server answered the rest of the interrupted call, then the whole undisturbed one.
        stop(second)
        resumed = [m for m in ACCEPTED.findall((tmp_path / "second.log").read_text()) if m == method]
        assert len(resumed) > (1 if method == "EncodeStream" else RESTART_SKETCHES // RESTART_CHUNK)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
