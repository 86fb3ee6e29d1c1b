"""Admission once per call, by time (server/sketchserve/server/admission.py), and the default server's
acceptance of a sane closed loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import random_sketches, running_server, server_config

from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.admission import DECODE, ENCODE, PREPROCESS, Admission, Overloaded
from sketchserve.server.config import ServerConfig

STAGES = (PREPROCESS, ENCODE, DECODE)
MS = 0.001


def admission(cost_s: float = MS, cap: int = 1000) -> Admission:
    door = Admission(STAGES, cap)
    for stage in STAGES:
        door.observe(stage, 10, 10 * cost_s)  # 1 ms a sketch in every stage
    return door


def test_a_call_the_work_ahead_would_push_past_its_deadline_is_refused_at_once() -> None:
    door = admission()
    ahead = door.admit({ENCODE: 100}, timeout=None)  # 100 ms of encoding ahead
    assert door.estimate({ENCODE: 10}) == pytest.approx(0.110)
    with pytest.raises(Overloaded, match="after its deadline") as refused:
        door.admit({ENCODE: 10}, timeout=0.05)
    assert refused.value.retry_after_s == pytest.approx(0.110)
    with door.admit({ENCODE: 10}, timeout=0.2):  # fits
        assert door.in_flight == 110
    ahead.__exit__(None, None, None)
    with door.admit({ENCODE: 10}, timeout=0.05):  # fits once the work ahead is done
        pass
    assert door.in_flight == 0


def test_a_call_too_slow_even_alone_is_admitted_to_end_by_its_deadline() -> None:
    door = admission()
    with door.admit({ENCODE: 100}, timeout=0.01):  # 100 ms of its own work, 10 ms of deadline: no retry helps
        assert door.in_flight == 100


def test_the_memory_bound_refuses_past_max_sketches() -> None:
    door = admission(cap=50)
    with door.admit({PREPROCESS: 40, ENCODE: 40}, timeout=None):
        with pytest.raises(Overloaded, match="40 sketches in flight of at most 50"):
            door.admit({PREPROCESS: 20, ENCODE: 20}, timeout=None)


def test_a_finished_stage_stops_counting_ahead_of_later_calls() -> None:
    door = admission()
    ticket = door.admit({PREPROCESS: 100, ENCODE: 100, DECODE: 100}, timeout=None)
    assert door.estimate({DECODE: 1}) == pytest.approx(0.101)
    ticket.finish(PREPROCESS)
    ticket.finish(ENCODE)
    assert door.estimate({DECODE: 1}) == pytest.approx(0.101) and door.estimate({ENCODE: 1}) == pytest.approx(0.001)
    ticket.__exit__(None, None, None)
    assert door.estimate({DECODE: 1}) == pytest.approx(0.001) and door.in_flight == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STAGES), st.integers(1, 50), st.booleans()), max_size=20))
def test_every_ticket_gives_back_exactly_what_it_took(calls: list[tuple[str, int, bool]]) -> None:
    door = admission(cap=10_000)
    tickets = []
    for stage, count, finish_first in calls:
        ticket = door.admit({stage: count}, timeout=None)
        if finish_first:
            ticket.finish(stage)
        tickets.append(ticket)
    for ticket in tickets:
        ticket.__exit__(None, None, None)
    assert door.in_flight == 0 and all(door.estimate({s: 0}) == 0 for s in STAGES)


CALLERS = 64  # the sane closed loop: 64 callers x 32 sketches, 30 s deadline, the server's defaults
SKETCHES_PER_CALL = 32
ROUNDS = 2
DEADLINE_S = 30.0


@pytest.mark.slow
def test_the_default_server_accepts_64_callers_of_32_sketches(tiny_model: Path) -> None:
    """Before admission by time, the default per-stage queue of 1,024 refused about 40 % of these calls."""
    defaults = ServerConfig(model_dir=tiny_model)
    config = server_config(
        tiny_model,
        max_queue=defaults.max_queue,
        max_batch_size=defaults.max_batch_size,
        max_delay_ms=defaults.max_delay_ms,
        max_sketches_per_request=defaults.max_sketches_per_request,
    )
    requests = [
        sketch_pb2.EncodeRequest(sketches=random_sketches(seed=i, count=SKETCHES_PER_CALL)) for i in range(CALLERS)
    ]

    async def closed_loop(target: str) -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = sketch_pb2_grpc.SketchServiceStub(channel)

            async def caller(request: sketch_pb2.EncodeRequest) -> list[grpc.StatusCode]:
                codes = []
                for _ in range(ROUNDS):
                    try:
                        await stub.Encode(request, timeout=DEADLINE_S)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
                return codes

            results = await asyncio.gather(*(caller(r) for r in requests))
        return [code for codes in results for code in codes]

    with running_server(config) as server:
        codes = asyncio.run(closed_loop(server.target))
    assert codes == [grpc.StatusCode.OK] * (CALLERS * ROUNDS)
