"""The verification warm-up: one call of every RPC a freshly loaded model serves, before any client sees it.

:func:`probe_state` binds a private :class:`SketchServicer` to the new state and
calls its handlers as gRPC would (the same checks, conversions and batchers):
Encode, EncodeStream, Reconstruct from sketches and from latents at temperature
0 and above, Score, GetModelInfo, and Assign and ListClusters when the model has
clusters. Each response is checked (counts, sizes, finite values, the model's
version); the first failure raises :class:`ProbeFailed` naming the RPC and the
field. The calls run at once, at most as many as the smallest queue holds, with
the new engine's flush delay at 0 (it serves no client yet, so nothing is worth
waiting for; ``--max-delay-ms`` applies again once it is attached). Startup
and hot reload both run it, so a model that loads but cannot answer is refused
before it serves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc

from sketchserve.pb.sketch.v1 import sketch_pb2
from sketchserve.server.service import ServingState, SketchServicer

# Two sketches (one when --max-sketches-per-request is 1): every batcher runs a batch of more than one item.
PROBE_DRAWINGS = (
    (((0.0, 10.0, 20.0, 30.0, 40.0), (0.0, 10.0, 0.0, 10.0, 0.0)),),
    (((0.0, 20.0, 20.0, 0.0, 0.0), (0.0, 0.0, 20.0, 20.0, 0.0)), ((5.0, 15.0), (10.0, 10.0))),
)
# Reconstruct draws this many points: the decoding loop runs, cheaply.
PROBE_POINTS = 8
# Greedy and sampled decoding are different code paths in the decoder.
PROBE_TEMPERATURES = (0.0, 1.0)
PROBE_SEED = 1
# Each probe call's deadline: generous for a loaded CPU; only a wedged model reaches it.
PROBE_TIMEOUT_S = 120.0


class ProbeFailed(Exception):
    """A loaded model failed a warm-up call; the message names the RPC and the field."""


@dataclass(frozen=True)
class ProbeReport:
    """The warm-up calls the model answered, in order, e.g. ``Reconstruct(latents, temperature=1)``."""

    calls: tuple[str, ...]


@dataclass(frozen=True)
class _ProbeContext:
    """What the handlers ask of a ``grpc.aio.ServicerContext``: the time left before the deadline."""

    deadline: float

    def time_remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def probe_sketches() -> list[sketch_pb2.Sketch]:
    return [
        sketch_pb2.Sketch(strokes=[sketch_pb2.Stroke(x=x, y=y) for x, y in drawing], id=f"probe-{i}")
        for i, drawing in enumerate(PROBE_DRAWINGS)
    ]


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_embeddings(embeddings: Sequence[sketch_pb2.Embedding], latent_size: int, n: int) -> str:
    if len(embeddings) != n:
        return f"embeddings: {len(embeddings)} for {n} sketches"
    for i, e in enumerate(embeddings):
        if len(e.mu) != latent_size or len(e.sigma) != latent_size:
            return f"embeddings[{i}].mu: {len(e.mu)} values, the manifest's latent_size is {latent_size}"
        if not (_finite(e.mu) and _finite(e.sigma) and min(e.sigma) > 0):
            return f"embeddings[{i}]: mu or sigma not finite, or sigma not positive"
    return ""


@dataclass(frozen=True)
class _Call:
    name: str
    rpc: Awaitable[Any]
    check: Callable[[Any], str]


class _Prober:
    """Runs the probe calls against one state, all at once (they share batches, as clients' calls do)."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.servicer = SketchServicer()
        self.servicer.attach(state)
        self.context = cast(grpc.aio.ServicerContext, _ProbeContext(time.monotonic() + PROBE_TIMEOUT_S))
        self.sketches = probe_sketches()[: state.max_sketches_per_request]
        # As many calls at once as the smallest queue holds (each queues at most len(sketches) items).
        room = min(batcher.max_queue for batcher in state.engine.batchers) // len(self.sketches)
        self.slots = asyncio.Semaphore(max(1, room))

    async def run(self) -> ProbeReport:
        calls = self._calls()
        with self.state.engine.without_delay():
            outcomes = await asyncio.gather(*(self._answer(call) for call in calls), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return ProbeReport(tuple(call.name for call in calls))

    async def _answer(self, call: _Call) -> None:
        """Await the call in its own task (a call's task is what the state's CallTracker waits for, and this
        one ends), then check its response; ProbeFailed names the call and what went wrong."""
        try:
            async with self.slots:
                response = await asyncio.ensure_future(call.rpc)
        except Exception as exc:  # noqa: BLE001 - any failure of the new model refuses it, named
            raise ProbeFailed(f"{call.name}: {type(exc).__name__}: {exc}") from exc
        version = getattr(response, "model_version", getattr(response, "version", None))
        if version != self.state.version:
            raise ProbeFailed(
                f"{call.name}: model_version {version!r}, the manifest's version is {self.state.version!r}"
            )
        problem = call.check(response)
        if problem:
            raise ProbeFailed(f"{call.name}: {problem}")

    def _calls(self) -> list[_Call]:
        spec = self.state.engine.spec
        servicer, context = self.servicer, self.context
        sketches = self.sketches
        n = len(sketches)
        latents = [sketch_pb2.Embedding(mu=[0.0] * spec.latent_size) for _ in sketches]

        def embeddings(response: Any) -> str:
            return _check_embeddings(response.embeddings, spec.latent_size, n)

        def drawn(response: Any) -> str:
            return "" if len(response.sketches) == n else f"sketches: {len(response.sketches)} for {n} inputs"

        def scored(response: Any) -> str:
            finite = all(_finite((s.reconstruction_nll, s.kl)) for s in response.scores)
            return "" if len(response.scores) == n and finite else "scores: not one finite nll and kl per sketch"

        calls = [
            _Call("Encode", servicer.Encode(sketch_pb2.EncodeRequest(sketches=sketches), context), embeddings),
            _Call(
                "EncodeStream",
                _collect(servicer.EncodeStream(_one(sketch_pb2.EncodeRequest(sketches=sketches)), context)),
                embeddings,
            ),
            _Call("Score", servicer.Score(sketch_pb2.ScoreRequest(sketches=sketches), context), scored),
            _Call(
                "GetModelInfo",
                servicer.GetModelInfo(sketch_pb2.GetModelInfoRequest(), context),
                lambda r: "" if r.latent_size == spec.latent_size else f"latent_size: {r.latent_size}",
            ),
        ]
        for temperature in PROBE_TEMPERATURES:
            for source, inputs in (("sketches", {"sketches": sketches}), ("latents", {"latents": latents})):
                request = sketch_pb2.ReconstructRequest(
                    temperature=temperature, max_points=min(PROBE_POINTS, spec.max_seq_len), seed=PROBE_SEED, **inputs
                )
                name = f"Reconstruct({source}, temperature={temperature:g})"
                calls.append(_Call(name, servicer.Reconstruct(request, context), drawn))
        if self.state.clusters is not None:
            calls += self._cluster_calls(sketches, self.state.clusters.k)
        return calls

    def _cluster_calls(self, sketches: list[sketch_pb2.Sketch], k: int) -> list[_Call]:
        def assigned(response: Any) -> str:
            inside = all(0 <= a.cluster < k for a in response.assignments)
            ok = len(response.assignments) == len(sketches) and inside
            return "" if ok else f"assignments: not one cluster in [0, {k}) per sketch"

        def listed(response: Any) -> str:
            return "" if len(response.clusters) == k else f"clusters: {len(response.clusters)}, clusters.json has k={k}"

        return [
            _Call(
                "Assign",
                self.servicer.Assign(sketch_pb2.AssignRequest(sketches=sketches, top_k=k), self.context),
                assigned,
            ),
            _Call(
                "ListClusters",
                self.servicer.ListClusters(sketch_pb2.ListClustersRequest(exemplars=1), self.context),
                listed,
            ),
        ]


async def _one(request: sketch_pb2.EncodeRequest) -> AsyncIterator[sketch_pb2.EncodeRequest]:
    yield request


async def _collect(responses: AsyncIterator[Any]) -> Any:
    """The one response of a one-request stream."""
    answers = [r async for r in responses]
    if len(answers) != 1:
        raise ProbeFailed(f"{len(answers)} responses to one request")
    return answers[0]


async def probe_state(state: ServingState) -> ProbeReport:
    """Call every RPC the state's model serves once, through its engine; raise ProbeFailed on the first fault."""
    return await _Prober(state).run()
