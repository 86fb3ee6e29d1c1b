"""Hot reload: load, verify and warm a new model beside the serving one, then swap it in.

Trigger: SIGHUP (``kill -HUP``, what a Kubernetes config-reloader sidecar or
``kubectl exec ... kill -HUP 1`` sends). The server reloads ``--model`` again,
resolving it first, so ``--model`` may be a symlink that a deploy re-points
atomically (``ln -sfn new tmp && mv -T tmp current``) or a directory a new
export was written into. One reload runs at a time; SIGHUPs that arrive during a
reload coalesce into one more reload after it.

A reload: resolve the directory; verify checksums, load and warm up the new model
off the event loop (``load``: the one "build a ServingState from a model dir"
function, main.py's); start its batchers; answer one call of every RPC it serves
(:func:`~sketchserve.server.probe.probe_state`); only then swap it in
(``attach``: the servicers, metrics and GetModelInfo follow it). Calls that
started on the old model finish on it (``ServingState.calls``); then the old
engine's batchers close and their workers are joined. Health stays SERVING.

A reload that fails at any step is refused: one ``event="reload refused"`` log
line with ``model_dir`` and ``error`` (which names the file and field, e.g.
``.../encoder.pt: sha256 ... does not match the manifest's``) and the old model
keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sketchserve.server.logs import fields
from sketchserve.server.probe import probe_state
from sketchserve.server.service import ServingState

log = logging.getLogger(__name__)

RELOADED = "reloaded"
REFUSED = "refused"

# Build an unstarted ServingState from a resolved model directory (blocking: runs in a worker thread).
LoadState = Callable[[Path], ServingState]
# Make a warm state the serving one; returns the state it replaced (None at startup).
AttachState = Callable[[ServingState], "ServingState | None"]


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: ``result`` is RELOADED or REFUSED; ``error`` says why it was refused."""

    result: str
    model_dir: Path
    version: str = ""
    previous_version: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result == RELOADED


def one_line(exc: BaseException) -> str:
    """An exception as one log-friendly line: its type, then its message's lines joined."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def close_state(state: ServingState) -> None:
    """Stop the state's batchers: they finish what is queued, then their worker threads are joined."""
    state.engine.close()
    await asyncio.to_thread(state.engine.join)


async def warm_state(load: LoadState, model_dir: Path) -> ServingState:
    """Load ``model_dir`` off the event loop, start its batchers and probe every RPC; closed again on failure."""
    state = await asyncio.to_thread(load, model_dir)
    state.engine.start()
    try:
        await probe_state(state)
    except BaseException:
        await asyncio.shield(close_state(state))
        raise
    return state


class Reloader:
    """Reloads on request, one reload at a time, and retires replaced states once their calls end."""

    def __init__(
        self, model_dir: Path, load: LoadState, attach: AttachState, on_outcome: Callable[[str], None]
    ) -> None:
        self.model_dir = model_dir
        self.load = load
        self._attach = attach
        self._on_outcome = on_outcome
        self._requested = asyncio.Event()
        self._lock = asyncio.Lock()
        self._runner: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()

    def request(self) -> None:
        """Ask for a reload (the SIGHUP handler); requests made during a reload coalesce into one more."""
        self._requested.set()

    def start(self) -> None:
        """Serve reload requests from now on (after the first model is attached)."""
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self._requested.wait()
            self._requested.clear()
            try:
                await self.reload()
            except Exception:  # noqa: BLE001 - a bug in one reload must not end reloading; it is logged in full
                log.exception("reload failed")

    async def reload(self) -> ReloadOutcome:
        """Load, verify, warm and swap in the model now under ``model_dir``; the old one keeps serving on failure."""
        async with self._lock:
            outcome = await self._reload()
        self._on_outcome(outcome.result)
        return outcome

    async def _reload(self) -> ReloadOutcome:
        source = self.model_dir.resolve()
        log.info("reloading", extra=fields(model_dir=source))
        try:
            state = await warm_state(self.load, source)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the new model, the old one keeps serving
            error = one_line(exc)
            log.error("reload refused", extra=fields(model_dir=source, error=error))
            log.debug("reload failure traceback", exc_info=exc)
            return ReloadOutcome(REFUSED, source, error=error)
        previous = self._attach(state)
        previous_version = ""
        if previous is not None:
            previous_version = previous.version
            self._retire(previous)
        log.info(
            RELOADED,
            extra=fields(model_dir=source, version=state.version, previous_version=previous_version),
        )
        return ReloadOutcome(RELOADED, source, state.version, previous_version)

    def _retire(self, state: ServingState) -> None:
        task = asyncio.ensure_future(self._close_when_idle(state))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_when_idle(state: ServingState) -> None:
        in_flight = len(state.calls)
        await state.calls.wait_idle()
        await close_state(state)
        log.info("retired", extra=fields(version=state.version, calls_at_swap=in_flight))

    async def wait_retired(self) -> None:
        """Return once every replaced state has been closed."""
        while self._retiring:
            await asyncio.wait(set(self._retiring))

    async def cancel(self) -> None:
        """No more reloads: stop serving requests and cancel a reload in progress (its new model is closed)."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
