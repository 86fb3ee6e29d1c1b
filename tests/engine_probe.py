"""A probe between a real server's servicer and its engine: what the server has in flight.

``EngineProbe.install(server)`` attaches a ServingState whose engine is the probe;
the probe hands every call to the server's real engine (real batching, real model)
and counts the encodes in flight, records each one's timeout, and can hold them
at a gate until the test opens it. It observes the server's side of a call, so
tests of limits ("never more than N outstanding") need no timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from server_fixtures import RunningServer

from sketchserve.server.admission import Ticket
from sketchserve.server.engine import SketchEngine
from sketchserve.server.results import Encoded
from sketchserve.strokes import Drawing


class EngineProbe:
    """Counts encodes in flight (most at once, timeouts); holds them until :meth:`open` when ``gated``."""

    def __init__(self, engine: SketchEngine, *, gated: bool, open_at: int | None = None) -> None:
        self._engine = engine
        self.spec = engine.spec
        self.in_flight = 0
        self.most_in_flight = 0
        self.timeouts: list[float | None] = []
        self._open_at = open_at
        self._gate = asyncio.Event()
        if not gated:
            self._gate.set()
        self._changed = asyncio.Condition()

    @classmethod
    def install(cls, server: RunningServer, *, gated: bool = False, open_at: int | None = None) -> EngineProbe:
        """Put a probe in front of ``server``'s engine (built on the server's loop: its events live there)."""
        state = server.built.state
        if state is None:
            raise RuntimeError("the server has no model loaded")

        async def build() -> EngineProbe:
            probe = cls(state.engine, gated=gated, open_at=open_at)
            server.built.servicer.attach(dataclasses.replace(state, engine=probe))
            return probe

        return server.run(build())

    def admit(self, sketches: int, stages: Sequence[str], timeout: float | None) -> Ticket:
        return self._engine.admit(sketches, stages, timeout)

    async def encode(
        self, drawings: Sequence[Drawing], timeout: float | None = None, ticket: Ticket | None = None
    ) -> list[Encoded]:
        async with self._changed:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.timeouts.append(timeout)
            if self._open_at is not None and self.in_flight >= self._open_at:
                self._gate.set()
            self._changed.notify_all()
        try:
            await self._gate.wait()
            return await self._engine.encode(drawings, timeout=timeout, ticket=ticket)
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    async def wait_in_flight(self, count: int) -> None:
        """Return once ``count`` encodes are in flight together."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight >= count)

    async def wait_idle(self) -> None:
        """Return once no encode is in flight (finished, failed or cancelled, its batcher items dropped)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight == 0)

    async def open(self) -> None:
        self._gate.set()

    def __getattr__(self, name: str) -> Any:
        """Everything else (sample, score) goes straight to the real engine."""
        return getattr(self._engine, name)
