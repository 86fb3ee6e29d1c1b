"""Closed-loop load generator of bench_serving.py; runs in its own process.

``run_cell(spec)`` opens one grpc.aio channel to ``spec.target`` (127.0.0.1),
starts ``spec.concurrency`` workers that each send the next prebuilt request as
soon as their previous one answers, and measures the calls that finish inside a
window of ``duration`` seconds (longer when calls take longer: two of the
slowest, up to ``max_round_s``). The window opens in steady state: after the
warm-up and after one round of completions (as many as there are workers), or
at ``max_round_s`` past the warm-up when a round takes longer (then the result
says ``steady=False``). It stops at the end of the window or after
``max_calls`` calls, whichever comes first, and cancels what is still in flight
(the server drops cancelled calls before computing them).

Requests are built once, before the clock starts, and sent through the raw stub
with the client's channel options: the 2 CPU cores are shared with the server,
so the generator spends as little of them as it can.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np

from sketchserve.client.config import ClientConfig, channel_options
from sketchserve.client.convert import sketch_from_pb, sketches_to_packed_pb
from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.pb.inference import open_inference_grpc_pb2_grpc as oip_pb2_grpc
from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.oip_tensors import drawings_to_points

ENCODE = "Encode"
RECONSTRUCT = "Reconstruct"
PACKED = "packed"  # sketch.v1.PackedSketches, and Encode's answers packed too
READABLE = "readable"  # one Sketch message per sketch, one Stroke per stroke
# Encode only: the same sketches to the Open Inference Protocol's sketch-encoder (ModelInfer, same server and
# batchers), as `points` rows and `lengths` in raw_input_contents, the way tritonclient sends them.
OIP = "oip"
FORMS = (PACKED, READABLE, OIP)
OIP_METHOD = "ModelInfer"
OIP_MODEL = "sketch-encoder"
DISTINCT_REQUESTS = 16  # requests cycled by the workers, so calls differ without building any under load
CALL_GRACE_S = 5.0  # deadline slack past the window: a call is cancelled at the window's end anyway
P50, P99 = 50, 99
ROUNDS_PER_WINDOW = 2  # the window lasts at least this many of the slowest calls seen before it opened


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
    max_round_s: float = 30.0  # longest wait past the warm-up for the first round of completions
    form: str = PACKED  # how requests carry their sketches: PACKED (the Python client's default), READABLE or OIP


@dataclass(frozen=True)
class CellResult:
    calls: int  # calls finished OK inside the window
    sketches: int
    window_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # status code name -> calls failed in the window
    steady: bool = True  # False: the first round had not come back when the window opened

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
        if spec.form == OIP:
            requests.append(model_infer_request(chosen))
            continue
        if spec.form == PACKED:
            fields: dict[str, Any] = {"packed": sketches_to_packed_pb([sketch_from_pb(s) for s in chosen])}
        else:
            fields = {"sketches": chosen}
        if spec.method == ENCODE:
            requests.append(sketch_pb2.EncodeRequest(**fields, packed_response=spec.form == PACKED))
        else:
            requests.append(sketch_pb2.ReconstructRequest(**fields, max_points=spec.max_points, seed=r))
    return requests


def model_infer_request(sketches: list[sketch_pb2.Sketch]) -> oip_pb2.ModelInferRequest:
    """sketch-encoder's request for ``sketches``: ``points`` FP32 and ``lengths`` INT64, raw contents."""
    rows, lengths = drawings_to_points([list(sketch_from_pb(s).strokes) for s in sketches])
    request = oip_pb2.ModelInferRequest(model_name=OIP_MODEL)
    request.inputs.add(name="points", datatype="FP32", shape=list(rows.shape))
    request.inputs.add(name="lengths", datatype="INT64", shape=list(lengths.shape))
    request.raw_input_contents.extend([rows.tobytes(), lengths.tobytes()])
    return request


@dataclass
class _Tally:
    """What the workers record; ``end`` moves from the hard cap to the window's end once that is known."""

    end: float
    started: int = 0
    completed: int = 0
    finished: list[tuple[float, float]] = field(default_factory=list)  # (finish time, latency) of OK calls
    failed: list[tuple[float, str]] = field(default_factory=list)  # (time, status code name)
    first_round: asyncio.Event = field(default_factory=asyncio.Event)


async def _worker(
    index: int, method: grpc.aio.UnaryUnaryMultiCallable, requests: list[object], spec: CellSpec, tally: _Tally
) -> None:
    sent = 0
    while (now := time.monotonic()) < tally.end and tally.started < spec.max_calls:
        tally.started += 1
        request = requests[(index + sent) % len(requests)]
        sent += 1
        try:
            await method(request, timeout=tally.end - now + CALL_GRACE_S)
        except grpc.aio.AioRpcError as error:
            tally.failed.append((time.monotonic(), error.code().name))
            continue
        finished = time.monotonic()
        tally.finished.append((finished, finished - now))
        tally.completed += 1
        if tally.completed >= spec.concurrency:
            tally.first_round.set()


async def _measure(spec: CellSpec, method: grpc.aio.UnaryUnaryMultiCallable, requests: list[object]) -> CellResult:
    begin = time.monotonic()
    tally = _Tally(end=begin + spec.warmup_s + spec.max_round_s + spec.duration_s)
    tasks = [asyncio.create_task(_worker(i, method, requests, spec, tally)) for i in range(spec.concurrency)]
    # Steady state: the window opens after the warm-up and once every worker's first call could
    # have come back (one round of completions), but no later than max_round_s.
    round_wait = asyncio.create_task(tally.first_round.wait())
    await asyncio.wait(
        [round_wait, *tasks], timeout=spec.warmup_s + spec.max_round_s, return_when=asyncio.FIRST_COMPLETED
    )
    steady = tally.first_round.is_set()
    round_wait.cancel()
    await asyncio.wait(tasks, timeout=begin + spec.warmup_s - time.monotonic())
    start = max(time.monotonic(), begin + spec.warmup_s)
    # A window shorter than a call would see no call finish: make it span two of the slowest so far.
    slowest = max([latency for _, latency in tally.finished], default=0.0)
    tally.end = start + max(spec.duration_s, min(ROUNDS_PER_WINDOW * slowest, spec.max_round_s))
    _, pending = await asyncio.wait(tasks, timeout=tally.end - time.monotonic())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    inside = [latency for finish, latency in tally.finished if start <= finish <= tally.end]
    window_end = tally.end if pending else max([start, *(finish for finish, _ in tally.finished)])
    latencies_ms = np.asarray(inside) * 1000.0
    has = len(latencies_ms) > 0
    return CellResult(
        calls=len(latencies_ms),
        sketches=len(latencies_ms) * spec.sketches_per_call,
        window_s=window_end - start,
        p50_ms=float(np.percentile(latencies_ms, P50)) if has else float("nan"),
        p99_ms=float(np.percentile(latencies_ms, P99)) if has else float("nan"),
        errors=dict(Counter(code for when, code in tally.failed if start <= when <= tally.end)),
        steady=steady,
    )


async def _run(spec: CellSpec) -> CellResult:
    requests = build_requests(spec)
    async with grpc.aio.insecure_channel(spec.target, options=channel_options(ClientConfig())) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=CALL_GRACE_S)
        if spec.form == OIP:
            call = oip_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        else:
            call = getattr(sketch_pb2_grpc.SketchServiceStub(channel), spec.method)
        return await _measure(spec, call, requests)


def run_cell(spec: CellSpec) -> CellResult:
    """One closed-loop measurement (the entry point the benchmark's worker process runs)."""
    return asyncio.run(_run(spec))
