"""What a client call sends and how its answers combine, shared by both clients.

A :class:`CallPlan` holds the requests of one client call (the input split into
chunks of ``max_sketches_per_call`` sketches) and the pure function that merges
their responses into the typed result. The sync and the asyncio client differ
only in how they send the requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np

from sketchserve.client import convert
from sketchserve.client.config import ClientConfig
from sketchserve.client.convert import SketchInput
from sketchserve.client.errors import ModelVersionChangedError, SketchServiceError, from_rpc_error
from sketchserve.client.types import (
    AssignResult,
    ClusterList,
    EncodeResult,
    ModelInfo,
    ReconstructResult,
    ScoreResult,
)
from sketchserve.pb.sketch.v1 import sketch_pb2

ResultT = TypeVar("ResultT")

MAX_TEMPERATURE = 2.0  # the proto's range for ReconstructRequest.temperature


@dataclass(frozen=True)
class CallPlan(Generic[ResultT]):
    method: str  # the RPC name, e.g. "Encode"
    requests: tuple[Any, ...]
    offsets: tuple[int, ...]  # index, in the caller's input, of each request's first sketch
    merge: Callable[[list[Any]], ResultT]
    streaming: bool = False  # one bidirectional stream carries all requests
    unary_twin: str = ""  # of a streaming plan: the unary RPC that answers one of its requests alike


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive chunks of at most ``size`` items."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _model_version(responses: Sequence[Any]) -> str:
    versions = {r.model_version for r in responses}
    if len(versions) > 1:
        raise ModelVersionChangedError(sorted(versions))
    return versions.pop() if versions else ""


def _sketch_requests(
    sketches: Sequence[SketchInput], config: ClientConfig, make: Callable[[dict[str, Any]], Any]
) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """Chunks of the input, each made into a request by ``make(fields)``: ``fields`` holds the chunk as
    ``packed`` (the default) or as readable ``sketches``, ready to pass to the request's constructor."""
    items = convert.as_sketches(sketches)
    bounds = chunk_bounds(len(items), config.max_sketches_per_call)

    def fields(chunk: list[Any]) -> dict[str, Any]:
        if config.packed:
            return {"packed": convert.sketches_to_packed_pb(chunk)}
        return {"sketches": [convert.sketch_to_pb(s) for s in chunk]}

    return tuple(make(fields(items[a:b])) for a, b in bounds), tuple(a for a, _ in bounds)


def merge_encode(responses: list[sketch_pb2.EncodeResponse]) -> EncodeResult:
    parts = [convert.embeddings_from_pb(r) for r in responses]
    return EncodeResult(
        mu=np.concatenate([p.mu for p in parts]),
        sigma=np.concatenate([p.sigma for p in parts]),
        model_version=_model_version(responses),
    )


def encode(sketches: Sequence[SketchInput], config: ClientConfig) -> CallPlan[EncodeResult]:
    """Encode; an input spanning several requests goes over one EncodeStream."""
    requests, offsets = _sketch_requests(
        sketches, config, lambda s: sketch_pb2.EncodeRequest(**s, packed_response=config.packed)
    )
    streaming = len(requests) > 1
    if streaming:
        return CallPlan("EncodeStream", requests, offsets, merge_encode, streaming=True, unary_twin="Encode")
    return CallPlan("Encode", requests, offsets, merge_encode)


def merge_assign(responses: list[sketch_pb2.AssignResponse]) -> AssignResult:
    assignments = [a for r in responses for a in r.assignments]
    return AssignResult(
        cluster=np.array([a.cluster for a in assignments], dtype=np.int64),
        distance=np.array([a.distance for a in assignments], dtype=np.float32),
        nearest_cluster=np.array([[n.cluster for n in a.nearest] for a in assignments], dtype=np.int64).reshape(
            len(assignments), -1
        ),
        nearest_distance=convert.float_matrix([[n.distance for n in a.nearest] for a in assignments]),
        model_version=_model_version(responses),
    )


def assign(sketches: Sequence[SketchInput], top_k: int, config: ClientConfig) -> CallPlan[AssignResult]:
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    requests, offsets = _sketch_requests(sketches, config, lambda s: sketch_pb2.AssignRequest(**s, top_k=top_k))
    return CallPlan("Assign", requests, offsets, merge_assign)


def merge_score(responses: list[sketch_pb2.ScoreResponse]) -> ScoreResult:
    scores = [s for r in responses for s in r.scores]
    return ScoreResult(
        reconstruction_nll=np.array([s.reconstruction_nll for s in scores], dtype=np.float32),
        kl=np.array([s.kl for s in scores], dtype=np.float32),
        model_version=_model_version(responses),
    )


def score(sketches: Sequence[SketchInput], config: ClientConfig) -> CallPlan[ScoreResult]:
    requests, offsets = _sketch_requests(sketches, config, lambda s: sketch_pb2.ScoreRequest(**s))
    return CallPlan("Score", requests, offsets, merge_score)


def merge_reconstruct(responses: list[sketch_pb2.ReconstructResponse]) -> ReconstructResult:
    return ReconstructResult(
        sketches=tuple(convert.sketch_from_pb(s) for r in responses for s in r.sketches),
        model_version=_model_version(responses),
    )


@dataclass(frozen=True)
class Sampling:
    """How Reconstruct draws: see ReconstructRequest in the proto."""

    temperature: float = 0.0  # 0: the most likely drawing, deterministic
    max_points: int = 0  # 0: the model's maximum
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE}], got {self.temperature}")
        if self.max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {self.max_points}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def reconstruct(
    sketches: Sequence[SketchInput] | None,
    latents: object | None,
    sampling: Sampling,
    config: ClientConfig,
) -> CallPlan[ReconstructResult]:
    """Redraw sketches, or decode latents: exactly one of the two."""
    if (sketches is None) == (latents is None):
        raise ValueError("give exactly one of sketches or latents")
    settings: dict[str, Any] = {
        "temperature": sampling.temperature,
        "max_points": sampling.max_points,
        "seed": sampling.seed,
    }
    if sketches is not None:
        requests, offsets = _sketch_requests(sketches, config, lambda s: sketch_pb2.ReconstructRequest(**s, **settings))
        return CallPlan("Reconstruct", requests, offsets, merge_reconstruct)
    codes = convert.latents_to_pb(convert.as_latents(latents))
    bounds = chunk_bounds(len(codes), config.max_sketches_per_call)
    requests = tuple(sketch_pb2.ReconstructRequest(latents=codes[a:b], **settings) for a, b in bounds)
    return CallPlan("Reconstruct", requests, tuple(a for a, _ in bounds), merge_reconstruct)


def model_info() -> CallPlan[ModelInfo]:
    request = sketch_pb2.GetModelInfoRequest()
    return CallPlan("GetModelInfo", (request,), (0,), lambda r: convert.model_info_from_pb(r[0]))


def merge_clusters(responses: list[sketch_pb2.ListClustersResponse]) -> ClusterList:
    return ClusterList(
        clusters=tuple(convert.cluster_from_pb(c) for r in responses for c in r.clusters),
        model_version=_model_version(responses),
    )


def list_clusters(exemplars: int) -> CallPlan[ClusterList]:
    if exemplars < 0:
        raise ValueError(f"exemplars must be >= 0, got {exemplars}")
    return CallPlan("ListClusters", (sketch_pb2.ListClustersRequest(exemplars=exemplars),), (0,), merge_clusters)


def finish(plan: CallPlan[ResultT], responses: list[Any]) -> ResultT:
    """Merge the responses of a plan, after checking one came per request."""
    if len(responses) != len(plan.requests):
        raise SketchServiceError(
            plan.method,
            grpc.StatusCode.INTERNAL,
            f"expected {len(plan.requests)} responses, the server sent {len(responses)}",
        )
    return plan.merge(responses)


def failed(plan: CallPlan[Any], error: grpc.RpcError, answered: int, *, alone: bool = False) -> SketchServiceError:
    """The typed error of a plan whose request number ``answered`` failed.

    On a stream, ``answered`` is where the failed stream began (it numbers its
    requests from there); ``alone``: that request went by itself (a stream's unary twin).
    """
    if plan.streaming and not alone:
        return from_rpc_error(error, plan.method, stream_offsets=plan.offsets[answered:])
    return from_rpc_error(error, plan.method, plan.offsets[min(answered, len(plan.offsets) - 1)])
