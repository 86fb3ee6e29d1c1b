"""The asyncio client's ``max_calls_in_flight``: never more calls outstanding, counted by the server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_probe import EngineProbe
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches, running_server, server_config

from sketchserve.client.aio import AsyncSketchClient
from sketchserve.client.convert import sketch_from_pb

pytestmark = pytest.mark.timeout(120)

IN_FLIGHT = 3
CALLS = 4 * IN_FLIGHT


@pytest.fixture(scope="module")
def probed_server(tiny_model: Path) -> Iterator[RunningServer]:
    with running_server(server_config(tiny_model)) as server:
        yield server


def test_the_async_client_keeps_at_most_max_calls_in_flight(probed_server: RunningServer) -> None:
    """Encodes are held until IN_FLIGHT calls are in the server together; no more ever arrive."""
    probe = EngineProbe.install(probed_server, gated=True, open_at=IN_FLIGHT)
    sketches = [sketch_from_pb(s) for s in random_sketches(70, CALLS)]

    async def score() -> int:
        settings = {"timeout": CALL_TIMEOUT_S, "max_sketches_per_call": 1, "max_calls_in_flight": IN_FLIGHT}
        async with AsyncSketchClient(probed_server.target, **settings) as client:
            return len((await client.score(sketches)).kl)

    assert asyncio.run(score()) == CALLS
    assert len(probe.timeouts) == CALLS
    assert probe.most_in_flight == IN_FLIGHT
