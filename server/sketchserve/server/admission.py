"""Admission once per call, at the door, by time.

A call is admitted or refused once, before any of its work runs, never after
part of it has been paid for. The rule, for a call that brings ``n_s`` sketches
to each stage ``s`` it will pass through (preprocess, encode, decode) and has
``remaining`` seconds until its deadline:

    estimate = sum over its stages s of (outstanding_s + n_s) * seconds_per_sketch_s

where ``outstanding_s`` counts the sketches of admitted calls that have not yet
finished stage ``s``, and ``seconds_per_sketch_s`` is the stage's measured cost:
an exponentially weighted mean of (batch wall time / batch size) over the
stage's batches (``observe``, fed by the batchers' observer). The call is
refused at once with :class:`Overloaded` (RESOURCE_EXHAUSTED, with the estimate
as a retry hint) when ``estimate > remaining`` because of the work ahead of it
(its own work alone fits its deadline: a call that could not finish even on an
idle server is admitted and ends DEADLINE_EXCEEDED, its queued items dropped
before compute, since no retry would help it), or when admitting it would put
more than ``max_sketches`` sketches in flight (the memory bound, ``--max-queue``);
otherwise it is admitted, and no stage refuses it later (each stage's queue is
bounded by the same ``max_sketches``, which admitted work never exceeds).

The estimate adds the stages' times although the stages run on their own
threads: on a host whose cores are shared by every stage that is close to what
happens, and elsewhere it errs toward refusing early rather than late. Before
a stage has run a batch it costs nothing in the estimate (the warm-up runs every
stage, so a serving server has measured them all).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from sketchserve.server.batching import QueueFull

# The stages, named as their batchers are (and as the metrics' `batcher` label).
PREPROCESS = "preprocess"
ENCODE = "encode"
DECODE = "decode"
# Weight of the newest batch in a stage's mean cost: about the last 10 batches count.
COST_SMOOTHING = 0.1


class Overloaded(QueueFull):
    """Refused at the door: the call cannot finish before its deadline, or the server holds its most sketches."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Ticket:
    """An admitted call: its sketches, and what it still owes each stage. ``finish(stage)`` as each stage
    completes; leaving the ``with`` block releases the rest (done, failed or cancelled alike)."""

    admission: Admission
    sketches: int
    owed: dict[str, int] = field(default_factory=dict)

    def finish(self, stage: str) -> None:
        count = self.owed.pop(stage, 0)
        if count:
            self.admission.release({stage: count}, 0)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        owed, sketches = self.owed, self.sketches
        self.owed, self.sketches = {}, 0
        self.admission.release(owed, sketches)


class Admission:
    """The door's bookkeeping: sketches outstanding and the measured cost per sketch, by stage. Thread-safe
    (the batchers' worker threads report costs; the event loop admits and releases)."""

    def __init__(self, stages: tuple[str, ...], max_sketches: int) -> None:
        if max_sketches < 1:
            raise ValueError(f"max_sketches must be >= 1, got {max_sketches}")
        self.max_sketches = max_sketches
        self._lock = threading.Lock()
        self._outstanding = dict.fromkeys(stages, 0)
        self._cost: dict[str, float] = dict.fromkeys(stages, 0.0)
        self._in_flight = 0  # sketches of admitted calls not yet finished (each counted once, whatever its stages)

    def observe(self, stage: str, size: int, seconds: float) -> None:
        """One batch of ``size`` sketches of ``stage`` took ``seconds`` (wall clock)."""
        if stage not in self._cost or size < 1 or not math.isfinite(seconds):
            return
        per_sketch = max(seconds, 0.0) / size
        with self._lock:
            old = self._cost[stage]
            self._cost[stage] = per_sketch if old == 0.0 else old + COST_SMOOTHING * (per_sketch - old)

    def estimate(self, work: Mapping[str, int]) -> float:
        """Seconds until a call bringing ``work`` would finish, by the rule above."""
        with self._lock:
            return self._estimate_locked(work)

    def _estimate_locked(self, work: Mapping[str, int]) -> float:
        return sum((self._outstanding[s] + n) * self._cost[s] for s, n in work.items())

    def admit(self, work: Mapping[str, int], timeout: float | None) -> Ticket:
        """Admit a call bringing ``work`` (sketches per stage), or raise :class:`Overloaded`."""
        unknown = set(work) - set(self._outstanding)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}")
        sketches = max(work.values(), default=0)
        with self._lock:
            if self._in_flight + sketches > self.max_sketches:
                wait = self._estimate_locked({})
                raise Overloaded(
                    f"server busy: {self._in_flight} sketches in flight of at most {self.max_sketches}, "
                    f"cannot take {sketches} more; retry in about {wait:.1f} s",
                    wait,
                )
            estimate = self._estimate_locked(work)
            own = sum(n * self._cost[s] for s, n in work.items())
            if timeout is not None and estimate > timeout >= own:
                raise Overloaded(
                    f"server busy: the call would finish in about {estimate:.1f} s, after its deadline "
                    f"({max(timeout, 0.0):.1f} s left); retry in about {estimate:.1f} s or with a longer deadline",
                    estimate,
                )
            for stage, count in work.items():
                self._outstanding[stage] += count
            self._in_flight += sketches
        return Ticket(self, sketches, dict(work))

    def release(self, done: Mapping[str, int], sketches: int) -> None:
        """Stages' sketches done, and (at a call's end) its sketches no longer in flight."""
        with self._lock:
            for stage, count in done.items():
                self._outstanding[stage] -= count
            self._in_flight -= sketches

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight
