"""The Batcher's rules: coalescing, splitting, length grouping, errors, bounds, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sketchserve.server.batching import (
    DROP_CANCELLED,
    DROP_DEADLINE,
    REORDER_WINDOW_BATCHES,
    Batcher,
    BatcherClosed,
    BatchItem,
    DeadlineDropped,
    QueueFull,
)

pytestmark = pytest.mark.timeout(30)

BLOCK = -1
GATE_TIMEOUT_S = 10.0


@dataclass
class Recorder:
    """A batch function (doubles each payload) that records its batches; BLOCK waits for the gate."""

    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    batches: list[list[int]] = field(default_factory=list)
    groups: list[Hashable] = field(default_factory=list)
    fail_on: int | None = None

    def __call__(self, group: Hashable, payloads: list[int]) -> list[int]:
        self.batches.append(list(payloads))
        self.groups.append(group)
        if BLOCK in payloads:
            self.started.set()
            if not self.gate.wait(GATE_TIMEOUT_S):
                raise TimeoutError("test gate never opened")
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError(f"payload {self.fail_on} is poisoned")
        return [2 * p for p in payloads]


@dataclass
class Observations:
    batch_sizes: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def on_batch(self, batcher: str, size: int, seconds: float, cpu_seconds: float) -> None:
        self.batch_sizes.append(size)

    def on_dropped(self, batcher: str, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


def make_batcher(recorder: Recorder, observer: Observations | None = None, **overrides: Any) -> Batcher[int, int]:
    settings = {"max_batch_size": 4, "max_delay_s": 0.0, "max_queue": 64} | overrides
    batcher: Batcher[int, int] = Batcher("test", recorder, observer=observer, **settings)
    batcher.start()
    return batcher


def items(*payloads: int, group: Hashable = None) -> list[BatchItem[int]]:
    return [BatchItem(p, cost=p, group=group) for p in payloads]


async def occupy_worker(batcher: Batcher, recorder: Recorder) -> asyncio.Task:
    """Start a batch that blocks on the gate, so the next items queue up behind it."""
    blocker = asyncio.create_task(batcher.submit(items(BLOCK)))
    await asyncio.to_thread(recorder.started.wait, GATE_TIMEOUT_S)
    return blocker


def test_concurrent_requests_coalesce_and_get_their_own_results() -> None:
    recorder, seen = Recorder(), Observations()
    batcher = make_batcher(recorder, seen, max_batch_size=8)

    async def scenario() -> list[list[int]]:
        blocker = await occupy_worker(batcher, recorder)
        calls = [asyncio.create_task(batcher.submit(items(i))) for i in range(6)]
        await asyncio.sleep(0)
        recorder.gate.set()
        await blocker
        return await asyncio.gather(*calls)

    results = asyncio.run(scenario())
    assert results == [[2 * i] for i in range(6)]
    assert recorder.batches[1] == [0, 1, 2, 3, 4, 5]
    assert max(seen.batch_sizes) == 6


def test_large_request_is_split_and_keeps_order() -> None:
    recorder = Recorder()
    batcher = make_batcher(recorder, max_batch_size=4)
    payloads = list(range(10))
    assert asyncio.run(batcher.submit(items(*payloads))) == [2 * p for p in payloads]
    assert all(len(b) <= 4 for b in recorder.batches)
    assert sorted(p for b in recorder.batches for p in b) == payloads


def test_batches_group_similar_lengths_around_the_oldest_item() -> None:
    recorder = Recorder()
    batcher = make_batcher(recorder, max_batch_size=3)

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        queued = asyncio.create_task(batcher.submit(items(100, 1, 99, 2, 98, 3)))
        await asyncio.sleep(0)
        recorder.gate.set()
        await blocker
        assert await queued == [200, 2, 198, 4, 196, 6]

    asyncio.run(scenario())
    assert sorted(recorder.batches[1]) == [98, 99, 100]
    assert sorted(recorder.batches[2]) == [1, 2, 3]


def test_length_grouping_looks_only_a_few_batches_ahead() -> None:
    recorder = Recorder()
    batcher = make_batcher(recorder, max_batch_size=2)
    window = REORDER_WINDOW_BATCHES * 2
    costs = [100] + [1] * window + [100]

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        queued = asyncio.create_task(batcher.submit(items(*costs)))
        await asyncio.sleep(0)
        recorder.gate.set()
        await blocker
        assert await queued == [2 * c for c in costs]

    asyncio.run(scenario())
    assert recorder.batches[1] == [100, 1]


def test_items_of_different_groups_never_share_a_batch() -> None:
    recorder = Recorder()
    batcher = make_batcher(recorder, max_batch_size=8)

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        a = asyncio.create_task(batcher.submit(items(1, 2, group="a")))
        b = asyncio.create_task(batcher.submit(items(3, group="b")))
        c = asyncio.create_task(batcher.submit(items(4, group="a")))
        await asyncio.sleep(0)
        recorder.gate.set()
        await blocker
        assert await asyncio.gather(a, b, c) == [[2, 4], [6], [8]]

    asyncio.run(scenario())
    assert recorder.groups[1:] == ["a", "b"]
    assert sorted(recorder.batches[1]) == [1, 2, 4]


def test_a_failed_batch_fails_every_caller_in_it() -> None:
    recorder = Recorder(fail_on=7)
    batcher = make_batcher(recorder, max_batch_size=8)

    async def scenario() -> list:
        blocker = await occupy_worker(batcher, recorder)
        calls = [asyncio.create_task(batcher.submit(items(p))) for p in (5, 7, 9)]
        await asyncio.sleep(0)
        recorder.gate.set()
        await blocker
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) and "poisoned" in str(r) for r in results)


def test_full_queue_fails_fast() -> None:
    recorder = Recorder()
    batcher = make_batcher(recorder, max_queue=4)

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        first = asyncio.create_task(batcher.submit(items(1, 2, 3)))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="holds 3 of 4"):
            await batcher.submit(items(4, 5))
        recorder.gate.set()
        await blocker
        assert await first == [2, 4, 6]

    asyncio.run(scenario())


def test_expired_items_are_dropped_before_compute() -> None:
    recorder, seen = Recorder(), Observations()
    batcher = make_batcher(recorder, seen)

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        late = asyncio.create_task(batcher.submit(items(11, 12), timeout=0.0))
        fine = asyncio.create_task(batcher.submit(items(13)))
        await asyncio.sleep(0)
        recorder.gate.set()
        await blocker
        with pytest.raises(DeadlineDropped):
            await late
        assert await fine == [26]

    asyncio.run(scenario())
    assert all(11 not in b and 12 not in b for b in recorder.batches)
    assert seen.dropped == {DROP_DEADLINE: 2}


def test_cancelled_requests_are_dropped_before_compute() -> None:
    recorder, seen = Recorder(), Observations()
    batcher = make_batcher(recorder, seen)

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        doomed = asyncio.create_task(batcher.submit(items(21, 22, 23)))
        await asyncio.sleep(0)
        assert batcher.depth() == 3
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.depth() == 0
        recorder.gate.set()
        await blocker

    asyncio.run(scenario())
    assert all(21 not in b for b in recorder.batches)
    assert seen.dropped == {DROP_CANCELLED: 3}


@dataclass
class StepClock:
    """The batcher's clock, standing still until the test moves it; counts the worker's readings."""

    now: float = 0.0
    worker_reads: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self) -> float:
        with self.changed:
            if threading.current_thread().name.startswith("batcher-"):
                self.worker_reads += 1
                self.changed.notify_all()
            return self.now

    def set(self, now: float) -> None:
        with self.changed:
            self.now = now

    def await_worker_looks(self, looks: int, or_else: Callable[[], bool]) -> None:
        """Block until the worker has read the clock ``looks`` more times, or ``or_else()`` holds."""
        with self.changed:
            target = self.worker_reads + looks
            if not self.changed.wait_for(lambda: self.worker_reads >= target or or_else(), GATE_TIMEOUT_S):
                raise TimeoutError("the batcher's worker stopped reading its clock")


# In the StepClock's seconds; the worker re-reads the clock at least this often in real seconds.
FLUSH_DELAY = 0.05
# Worker readings of a standing clock that show it is waiting, not flushing (two per wait).
LOOKS = 6


def test_a_lone_item_waits_exactly_the_delay_then_is_flushed() -> None:
    clock, recorder, seen = StepClock(), Recorder(), Observations()
    batcher = make_batcher(recorder, seen, max_batch_size=64, max_delay_s=FLUSH_DELAY, clock=clock)

    async def scenario() -> list[int]:
        call = asyncio.create_task(batcher.submit(items(3)))
        await asyncio.sleep(0)
        for now in (0.0, FLUSH_DELAY / 2):
            clock.set(now)
            await asyncio.to_thread(clock.await_worker_looks, LOOKS, lambda: bool(recorder.batches))
            assert recorder.batches == [], f"flushed at {now} s of a {FLUSH_DELAY} s delay"
        clock.set(FLUSH_DELAY)
        return await call

    assert asyncio.run(scenario()) == [6]
    assert recorder.batches == [[3]] and seen.batch_sizes == [1]


def test_close_finishes_queued_work_and_refuses_new() -> None:
    recorder = Recorder()
    batcher = make_batcher(recorder)

    async def scenario() -> None:
        blocker = await occupy_worker(batcher, recorder)
        queued = asyncio.create_task(batcher.submit(items(31, 32)))
        await asyncio.sleep(0)
        batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit(items(33))
        recorder.gate.set()
        await blocker
        assert await queued == [62, 64]

    asyncio.run(scenario())
    assert batcher.join(GATE_TIMEOUT_S)
