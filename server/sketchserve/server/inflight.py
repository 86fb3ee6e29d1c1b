"""Which calls hold a :class:`~sketchserve.server.service.ServingState`, so that a retired model waits for them.

A handler reads its state once, at its start (``SketchServicer._ready``), and
uses that state to its end; :meth:`CallTracker.enter` records the handler's
asyncio task (grpc.aio runs each call in its own task, streaming ones included,
and the task ends once the call's last message is sent). After a hot reload
swaps the state, no new call can reach the old one, so the old engine is closed
once :meth:`CallTracker.wait_idle` returns: every call that started on it has
finished on it.
"""

from __future__ import annotations

import asyncio


class CallTracker:
    """The running calls (asyncio tasks) that read one serving state."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def enter(self) -> None:
        """Record the calling task until it ends (call on the event loop, inside the call's task)."""
        task = asyncio.current_task()
        if task is None or task in self._tasks:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Return once every recorded call has ended (those recorded while waiting too)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
