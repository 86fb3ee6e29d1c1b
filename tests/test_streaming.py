"""EncodeStream's promises, observed on the server's side (tests/engine_probe.py): at most
``--stream-window`` requests of a stream outstanding, and every request's encode bounded
by the stream's deadline, which the client sizes at ``timeout`` per request it carries."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from engine_probe import EngineProbe
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches, running_server, server_config
from test_server_lifecycle import computed, dropped

from sketchserve.client.convert import sketch_from_pb
from sketchserve.client.sync import SketchClient
from sketchserve.pb.sketch.v1 import sketch_pb2

pytestmark = pytest.mark.timeout(120)

STREAM_WINDOW = 3
REQUESTS = 4 * STREAM_WINDOW
# Stream requests of one sketch each: the client's stream carries this many.
CLIENT_REQUESTS = 3
# gRPC rounds the deadline it sends up (60 s arrived as 60.1 s): the server may see a little more.
DEADLINE_ROUNDING_S = 1.0


# Batches wait this long for company, far beyond any test: they start only when full.
NEVER_MS = 600_000.0
# The stream's deadline passes while its request is queued (it only has to reach the server first).
STREAM_DEADLINE_S = 1.0
QUEUED = 2


@pytest.fixture(scope="module")
def window_server(tiny_model: Path) -> Iterator[RunningServer]:
    with running_server(server_config(tiny_model, stream_window=STREAM_WINDOW)) as server:
        yield server


def test_a_stream_never_has_more_than_its_window_outstanding(window_server: RunningServer) -> None:
    """Encodes held at a gate: the server reads exactly ``stream_window`` requests and waits."""
    probe = EngineProbe.install(window_server, gated=True)
    all_sent = threading.Event()

    def requests() -> Iterator[sketch_pb2.EncodeRequest]:
        for i in range(REQUESTS):
            yield sketch_pb2.EncodeRequest(sketches=random_sketches(40 + i, 1))
        all_sent.set()

    stream = window_server.stub.EncodeStream(requests(), timeout=CALL_TIMEOUT_S)
    window_server.run(probe.wait_in_flight(STREAM_WINDOW))
    assert all_sent.wait(CALL_TIMEOUT_S)
    # Answered on the same connection after every request was sent: the server has them all.
    window_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
    assert probe.in_flight == STREAM_WINDOW
    window_server.run(probe.open())
    assert len(list(stream)) == REQUESTS
    assert probe.most_in_flight == STREAM_WINDOW


class NoDeadline:
    """What EncodeStream reads of its servicer context, for a call without a deadline."""

    def time_remaining(self) -> float | None:
        return None


def test_a_window_slot_frees_only_when_grpc_takes_the_response(window_server: RunningServer) -> None:
    """EncodeStream driven as gRPC drives it, one response taken at a time: while a response
    waits to be taken (a slow reader), the server reads no request past the window."""
    probe = EngineProbe.install(window_server, gated=True)
    pulled = 0

    async def requests() -> AsyncIterator[sketch_pb2.EncodeRequest]:
        nonlocal pulled
        for i in range(REQUESTS):
            pulled += 1
            yield sketch_pb2.EncodeRequest(sketches=random_sketches(100 + i, 1))

    async def drive() -> list[int]:
        responses = window_server.built.servicer.EncodeStream(requests(), NoDeadline())
        first = asyncio.ensure_future(anext(responses))
        await probe.wait_in_flight(STREAM_WINDOW)
        await probe.open()
        await first
        await probe.wait_idle()
        seen = [pulled]  # the first response is out but not taken: no slot is free
        async for _ in responses:
            seen.append(pulled)
        return seen

    seen = window_server.run(drive())
    assert len(seen) == REQUESTS
    assert seen[0] == STREAM_WINDOW
    assert all(count <= taken + STREAM_WINDOW for taken, count in enumerate(seen))


def test_each_stream_request_is_bounded_by_the_stream_deadline(window_server: RunningServer) -> None:
    """The client gives the stream ``timeout`` per request; the server hands each request's encode
    the stream's remaining time, so a request queued past the deadline is dropped, not computed."""
    probe = EngineProbe.install(window_server)
    sketches = [sketch_from_pb(s) for s in random_sketches(60, CLIENT_REQUESTS)]
    with SketchClient(window_server.target, timeout=CALL_TIMEOUT_S, max_sketches_per_call=1) as client:
        streamed = client.encode(sketches)
        alone = np.concatenate([client.encode([s]).mu for s in sketches])
    np.testing.assert_allclose(streamed.mu, alone, atol=1e-6)
    stream_timeouts = probe.timeouts[:CLIENT_REQUESTS]
    assert all(t is not None for t in stream_timeouts), stream_timeouts
    first, *rest = stream_timeouts
    assert (CLIENT_REQUESTS - 1) * CALL_TIMEOUT_S < first <= CLIENT_REQUESTS * CALL_TIMEOUT_S + DEADLINE_ROUNDING_S
    assert all(later <= first for later in rest)
    unary_timeouts = probe.timeouts[CLIENT_REQUESTS:]
    assert all(t is not None and t <= CALL_TIMEOUT_S + DEADLINE_ROUNDING_S for t in unary_timeouts), unary_timeouts


def test_stream_requests_queued_past_the_deadline_are_dropped_not_computed(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model, max_delay_ms=NEVER_MS, warmup=False)) as server:
        probe = EngineProbe.install(server)
        computed_before, dropped_before = computed(server), dropped(server)
        # Two requests: the server awaits the first's answer while the second waits behind it.
        requests = iter([sketch_pb2.EncodeRequest(sketches=random_sketches(61 + i, 1)) for i in range(QUEUED)])
        with pytest.raises(grpc.RpcError) as caught:
            list(server.stub.EncodeStream(requests, timeout=STREAM_DEADLINE_S))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        server.run(probe.wait_idle())  # the server has given both up
        assert len(probe.timeouts) == QUEUED  # they were queued
        assert computed(server) == computed_before
        assert dropped(server) - dropped_before == QUEUED
