"""Dynamic batching: coalesce items of concurrent requests into one model call.

A :class:`Batcher` owns a bounded queue of items and one worker thread that
runs the model. Callers on an asyncio event loop ``await batcher.submit(...)``;
the event loop never blocks on the model, so the server keeps accepting calls
while a batch runs.

Flush rule: the worker starts a batch as soon as it is free and either
``max_batch_size`` items that can share a batch (same ``group``) are queued, or
the oldest queued item has waited ``max_delay_s``. Under load the worker is
busy while items arrive, so batches fill without waiting; a lone call waits at
most ``max_delay_s``.

Batch formation: the oldest item is always in the next batch (no starvation);
the rest of the batch are, among the next ``REORDER_WINDOW_BATCHES *
max_batch_size`` items of its group in arrival order, those closest to it in
``cost`` (sketch length), so short sketches do not pay for long ones while
requests still finish roughly in arrival order. A request with more items than
``max_batch_size`` is split across batches; its future resolves when all of its
items are done, results in request order.

Each request has one asyncio future, resolved from the worker thread through
``loop.call_soon_threadsafe``. A failed batch fails every request with an item
in it. Items whose request was cancelled, or whose deadline passed while
queued, are dropped before they cost compute (the latter fail with
:class:`DeadlineDropped`). The queue is bounded: a submit that would exceed
``max_queue`` items fails at once with :class:`QueueFull`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

P = TypeVar("P")
R = TypeVar("R")
V = TypeVar("V")

log = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, list[P]], Sequence[R]]

DROP_CANCELLED = "cancelled"
DROP_DEADLINE = "deadline"
DROP_FAILED = "failed"
# A request cancelled with less than this left of its deadline counts as dropped for its
# deadline: the caller's timer starts earlier (transit, and the server's delay in reading the
# call on a loaded box) and usually cancels first; a caller giving up on its own this close to
# its deadline is rare enough to count the same way.
DEADLINE_SLACK_S = 0.25
# Batch formation looks this many batches' worth of queued items past the oldest for similar
# lengths: enough to group lengths, few enough that requests finish roughly in arrival order.
REORDER_WINDOW_BATCHES = 4


class QueueFull(Exception):
    """The batcher's queue cannot take the request's items (RESOURCE_EXHAUSTED)."""


class DeadlineDropped(Exception):
    """The request's deadline passed while it was queued (DEADLINE_EXCEEDED)."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work (UNAVAILABLE)."""


class BatchObserver(Protocol):
    """Receives batching observations (metrics); called from the worker thread."""

    def on_batch(self, batcher: str, size: int, seconds: float, cpu_seconds: float) -> None:
        """A batch of ``size`` items ran in ``seconds`` (wall clock), of which ``cpu_seconds`` on the worker's CPU."""

    def on_dropped(self, batcher: str, reason: str, count: int) -> None: ...


@dataclass(frozen=True)
class BatchItem(Generic[P]):
    """One unit of work: a payload for the model, its batch group and its cost (length)."""

    payload: P
    cost: int = 0
    group: Hashable = None


@dataclass(eq=False)
class _Request(Generic[R]):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    results: list
    deadline: float | None
    remaining: int
    finished: bool = False

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def cancel_reason(self, now: float) -> str:
        """Why a cancelled request's items are dropped: its deadline (nearly) passed, or the caller left."""
        near_deadline = self.deadline is not None and now >= self.deadline - DEADLINE_SLACK_S
        return DROP_DEADLINE if near_deadline else DROP_CANCELLED


@dataclass(eq=False)
class _Queued(Generic[P]):
    item: BatchItem[P]
    request: _Request
    index: int
    enqueued: float
    seq: int


@dataclass
class _Pruned:
    expired: list[_Request] = field(default_factory=list)
    dropped_cancelled: int = 0
    dropped_expired: int = 0
    dropped_failed: int = 0


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Batcher(Generic[P, R]):
    """A bounded queue and one model worker thread; see the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (seconds) dates items, deadlines and the flush delay; a test may pass its own.

        The worker waits in real time, re-reading ``clock`` at least every ``max_delay_s``.
        """
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError(
                f"batcher {name}: need max_batch_size >= 1, max_queue >= 1, max_delay_s >= 0; "
                f"got {max_batch_size}, {max_queue}, {max_delay_s}"
            )
        self.name = name
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._observer = observer
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[_Queued[P]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def depth(self) -> int:
        """Items queued now (not counting a batch being run)."""
        with self._cond:
            return len(self._queue)

    async def submit(self, items: Sequence[BatchItem[P]], *, timeout: float | None = None) -> list[R]:
        """Queue ``items`` and wait for their results, in order.

        ``timeout`` is the caller's remaining time in seconds (None: no deadline).
        Raises QueueFull at once when the queue cannot take all items,
        DeadlineDropped when the deadline passes while they are queued,
        BatcherClosed after :meth:`close`, or the batch function's exception.
        """
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        now = self._clock()
        deadline = None if timeout is None else now + timeout
        request: _Request = _Request(loop, future, [None] * len(items), deadline, len(items))
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name} batcher is shutting down")
            if len(self._queue) + len(items) > self.max_queue:
                raise QueueFull(
                    f"server busy: the {self.name} queue holds {len(self._queue)} of {self.max_queue} sketches, "
                    f"cannot take {len(items)} more; retry with backoff"
                )
            self._queue.extend(_Queued(item, request, index, now, next(self._seq)) for index, item in enumerate(items))
            self._cond.notify()
        future.add_done_callback(lambda f: self._forget_if_cancelled(request, f))
        return await future

    def set_max_delay(self, max_delay_s: float) -> None:
        """Change the flush delay from now on (the warm-up probe runs a new engine's batches at 0)."""
        if max_delay_s < 0:
            raise ValueError(f"batcher {self.name}: need max_delay_s >= 0, got {max_delay_s}")
        with self._cond:
            self.max_delay_s = max_delay_s
            self._cond.notify_all()

    def close(self) -> None:
        """Take no new work; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to exit after :meth:`close`; True when it did."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _forget_if_cancelled(self, request: _Request, future: asyncio.Future) -> None:
        if not future.cancelled():
            return
        with self._cond:
            before = len(self._queue)
            self._queue = [q for q in self._queue if q.request is not request]
            dropped = before - len(self._queue)
        if dropped and self._observer is not None:
            self._observer.on_dropped(self.name, request.cancel_reason(time.monotonic()), dropped)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Queued[P]] | None:
        """Block until a batch is due by the flush rule; None once closed and empty."""
        with self._cond:
            while True:
                pruned = self._prune_locked(self._clock())
                self._report_pruned(pruned)
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                oldest = self._queue[0]
                full = len(self._peers_locked(oldest, self.max_batch_size)) >= self.max_batch_size
                wait_s = oldest.enqueued + self.max_delay_s - self._clock()
                if full or wait_s <= 0 or self._closed:
                    return self._take_locked(oldest)
                self._cond.wait(timeout=wait_s)

    def _prune_locked(self, now: float) -> _Pruned:
        pruned = _Pruned()
        kept: list[_Queued[P]] = []
        for q in self._queue:
            request = q.request
            if request.future.cancelled():
                if request.cancel_reason(now) == DROP_DEADLINE:
                    pruned.dropped_expired += 1
                else:
                    pruned.dropped_cancelled += 1
            elif request.finished and request not in pruned.expired:
                pruned.dropped_failed += 1
            elif request.expired(now):
                request.finished = True
                pruned.expired.append(request)
                pruned.dropped_expired += 1
            elif request.finished:
                pruned.dropped_expired += 1
            else:
                kept.append(q)
        self._queue = kept
        return pruned

    def _report_pruned(self, pruned: _Pruned) -> None:
        for request in pruned.expired:
            self._deliver_exception(
                request, DeadlineDropped(f"deadline passed while queued in the {self.name} batcher")
            )
        if self._observer is None:
            return
        counts = {
            DROP_CANCELLED: pruned.dropped_cancelled,
            DROP_DEADLINE: pruned.dropped_expired,
            DROP_FAILED: pruned.dropped_failed,
        }
        for reason, count in counts.items():
            if count:
                self._observer.on_dropped(self.name, reason, count)

    def _peers_locked(self, oldest: _Queued[P], limit: int) -> list[_Queued[P]]:
        """Up to ``limit`` queued items of the oldest item's group, in arrival order (the oldest first)."""
        peers: list[_Queued[P]] = []
        for q in self._queue:
            if q.item.group == oldest.item.group:
                peers.append(q)
                if len(peers) == limit:
                    break
        return peers

    def _take_locked(self, oldest: _Queued[P]) -> list[_Queued[P]]:
        peers = self._peers_locked(oldest, REORDER_WINDOW_BATCHES * self.max_batch_size)
        if len(peers) > self.max_batch_size:
            peers.sort(key=lambda q: (abs(q.item.cost - oldest.item.cost), q.seq))
            peers = peers[: self.max_batch_size]
        taken = {id(q) for q in peers}
        self._queue = [q for q in self._queue if id(q) not in taken]
        return peers

    def _run(self, batch: list[_Queued[P]]) -> None:
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            results = list(self._run_batch(batch[0].item.group, [q.item.payload for q in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name} batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
            log.debug("batch failed batcher=%s size=%d", self.name, len(batch), exc_info=True)
            for request in {id(q.request): q.request for q in batch}.values():
                self._deliver_exception(request, exc)
            return
        if self._observer is not None:
            elapsed, cpu = time.perf_counter() - started, time.thread_time() - started_cpu
            self._observer.on_batch(self.name, len(batch), elapsed, cpu)
        for q, result in zip(batch, results):
            request = q.request
            if request.finished:
                continue
            request.results[q.index] = result
            request.remaining -= 1
            if request.remaining == 0:
                request.finished = True
                self._call_soon(request, _set_result, request.results)

    def _deliver_exception(self, request: _Request, exc: BaseException) -> None:
        request.finished = True
        self._call_soon(request, _set_exception, exc)

    @staticmethod
    def _call_soon(request: _Request, fn: Callable[[asyncio.Future, V], None], value: V) -> None:
        try:
            request.loop.call_soon_threadsafe(fn, request.future, value)
        except RuntimeError:
            log.debug("event loop closed before a batch result could be delivered")
