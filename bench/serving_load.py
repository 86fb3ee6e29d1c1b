"""Closed-loop load generator of bench_serving.py; runs in its own process.

``run_cell(spec)`` opens one grpc.aio channel to ``spec.target`` (127.0.0.1),
starts ``spec.concurrency`` workers that each send the next prebuilt request as
soon as their previous one answers, and measures the calls that finish inside
the window ``[warmup, warmup + duration]``. It stops at the end of the window
or after ``spec.max_calls`` calls, whichever comes first, and cancels what is
still in flight (the server drops cancelled calls before computing them).

Requests are built once, before the clock starts, and sent through the raw stub
with the client's channel options: the 2 CPU cores are shared with the server,
so the generator spends as little of them as it can.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import grpc.aio
import numpy as np

from sketchserve.client.config import ClientConfig, channel_options
from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc

ENCODE = "Encode"
RECONSTRUCT = "Reconstruct"
DISTINCT_REQUESTS = 16  # requests cycled by the workers, so calls differ without building any under load
CALL_GRACE_S = 5.0  # deadline slack past the window: a call is cancelled at the window's end anyway
P50, P99 = 50, 99


@dataclass(frozen=True)
class CellSpec:
    target: str
    method: str  # ENCODE or RECONSTRUCT
    concurrency: int
    sketches_per_call: int
    sketches: tuple[bytes, ...]  # serialized sketch_pb2.Sketch messages to draw the requests from
    warmup_s: float
    duration_s: float
    max_calls: int
    max_points: int = 0  # Reconstruct: most points per output drawing


@dataclass(frozen=True)
class CellResult:
    calls: int  # calls finished OK inside the window
    sketches: int
    window_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # status code name -> calls failed in the window

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.window_s if self.window_s > 0 else 0.0

    @property
    def sketches_per_s(self) -> float:
        return self.sketches / self.window_s if self.window_s > 0 else 0.0


def build_requests(spec: CellSpec) -> list[object]:
    """``DISTINCT_REQUESTS`` requests of ``spec.sketches_per_call`` sketches each, round-robin over the pool."""
    pool = [sketch_pb2.Sketch.FromString(b) for b in spec.sketches]
    requests: list[object] = []
    for r in range(DISTINCT_REQUESTS):
        chosen = [pool[(r * spec.sketches_per_call + i) % len(pool)] for i in range(spec.sketches_per_call)]
        if spec.method == ENCODE:
            requests.append(sketch_pb2.EncodeRequest(sketches=chosen))
        else:
            requests.append(sketch_pb2.ReconstructRequest(sketches=chosen, max_points=spec.max_points, seed=r))
    return requests


@dataclass
class _Tally:
    started: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    last_finish: float = 0.0


async def _worker(
    index: int, method: grpc.aio.UnaryUnaryMultiCallable, requests: list[object], spec: CellSpec,
    window: tuple[float, float], tally: _Tally,
) -> None:
    start, end = window
    sent = 0
    while (now := time.monotonic()) < end and tally.started < spec.max_calls:
        tally.started += 1
        request = requests[(index + sent) % len(requests)]
        sent += 1
        try:
            await method(request, timeout=end - now + CALL_GRACE_S)
        except grpc.aio.AioRpcError as error:
            if time.monotonic() >= start:
                tally.errors[error.code().name] += 1
            continue
        finished = time.monotonic()
        if start <= finished <= end:
            tally.latencies.append(finished - now)
            tally.last_finish = finished


async def _run(spec: CellSpec) -> CellResult:
    requests = build_requests(spec)
    async with grpc.aio.insecure_channel(spec.target, options=channel_options(ClientConfig())) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=CALL_GRACE_S)
        method = getattr(sketch_pb2_grpc.SketchServiceStub(channel), spec.method)
        begin = time.monotonic()
        window = (begin + spec.warmup_s, begin + spec.warmup_s + spec.duration_s)
        tally = _Tally()
        workers = [_worker(i, method, requests, spec, window, tally) for i in range(spec.concurrency)]
        tasks = [asyncio.create_task(w) for w in workers]
        _, pending = await asyncio.wait(tasks, timeout=window[1] - time.monotonic())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    window_end = window[1] if pending else max(tally.last_finish, window[0])
    latencies_ms = np.asarray(tally.latencies) * 1000.0
    has = len(latencies_ms) > 0
    return CellResult(
        calls=len(latencies_ms),
        sketches=len(latencies_ms) * spec.sketches_per_call,
        window_s=window_end - window[0],
        p50_ms=float(np.percentile(latencies_ms, P50)) if has else float("nan"),
        p99_ms=float(np.percentile(latencies_ms, P99)) if has else float("nan"),
        errors=dict(tally.errors),
    )


def run_cell(spec: CellSpec) -> CellResult:
    """One closed-loop measurement (the entry point the benchmark's worker process runs)."""
    return asyncio.run(_run(spec))
