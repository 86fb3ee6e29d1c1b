"""The SketchService servicer: protobuf <-> domain conversion only (no torch).

Handlers raise the exceptions of ``sketchserve.server.errors``; the
StatusInterceptor there turns them into statuses. Input checks name the
sketch index and field, e.g. ``sketches[3].strokes[1].y: has 4 values but x has 5``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from sketchserve.artifact import Manifest
from sketchserve.clusters import ClusterTable
from sketchserve.packed import PackedFormatError, PackedSketches, pack_rows, unpack
from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.admission import DECODE, ENCODE, PREPROCESS, Ticket
from sketchserve.server.errors import FailedPrecondition, InvalidRequest, NotReady
from sketchserve.server.inflight import CallTracker
from sketchserve.server.logs import fields
from sketchserve.server.results import Encoded, SketchTooLong
from sketchserve.strokes import Drawing, InvalidDrawingError, check_point_caps, drawing_from_xy, stroke3_to_drawing

if TYPE_CHECKING:
    from sketchserve.server.engine import SketchEngine

log = logging.getLogger(__name__)

SERVICE_NAME = sketch_pb2.DESCRIPTOR.services_by_name["SketchService"].full_name
# The contract's temperature range: 0 is greedy, 2 is already very wild.
MAX_TEMPERATURE = 2.0
# Largest |value| of a latent given to Reconstruct: 10,000 standard deviations of the N(0, I)
# prior the decoder was trained on, far beyond any encoder output. The bundled face decoder's
# drawings stop changing from there on (its gates saturate: the same offsets from 1e4 to 1e30),
# and values near float32's largest (3.4e38) overflow its first layers to infinities; the bound
# keeps every decoder's arithmetic finite (see the proto's comment).
MAX_LATENT_ABS = 1e4
DRAINING_MESSAGE = "draining: the server is shutting down; resend the unanswered requests"


@dataclass(frozen=True)
class ServingState:
    """Everything the handlers need once the model is loaded and warm."""

    engine: SketchEngine
    manifest: Manifest
    clusters: ClusterTable | None
    max_sketches_per_request: int
    stream_window: int
    # The calls that read this state: a hot reload closes the engine only after they end.
    calls: CallTracker = field(default_factory=CallTracker, compare=False, repr=False)

    @property
    def version(self) -> str:
        return self.engine.spec.version


def _sketch_error(index: int, sketch_id: str, prefix: str, field: str, message: str) -> InvalidRequest:
    """``sketches[3].strokes[1].y (id 'cat-7'): message``; the id only when the caller set one."""
    path = f"{prefix}sketches[{index}]{'.' + field if field else ''}"
    return InvalidRequest(f"{path} (id {sketch_id!r})" if sketch_id else path, message)


@dataclass(frozen=True)
class RequestSketches:
    """A request's sketches as validated drawings, and the caller's ids (for error messages)."""

    drawings: list[Drawing]
    ids: Sequence[str]

    def id_of(self, index: int) -> str:
        return self.ids[index] if index < len(self.ids) else ""


SketchRequest = (
    sketch_pb2.EncodeRequest | sketch_pb2.AssignRequest | sketch_pb2.ReconstructRequest | sketch_pb2.ScoreRequest
)


def check_count(count: int, limit: int, field: str, prefix: str = "") -> None:
    """``field`` (``sketches`` or ``latents``) holds between 1 and ``limit`` entries."""
    if count == 0:
        raise InvalidRequest(prefix + field, f"empty request: no {field} given")
    if count > limit:
        raise InvalidRequest(prefix + field, f"{count} {field} in one request, at most {limit}; split the input")


def sketches_to_drawings(sketches: Sequence[sketch_pb2.Sketch], *, limit: int, prefix: str = "") -> list[Drawing]:
    """Validate proto sketches into Drawings, or raise InvalidRequest naming the sketch and field."""
    check_count(len(sketches), limit, "sketches", prefix)
    drawings = []
    for i, sketch in enumerate(sketches):
        try:
            drawings.append(drawing_from_xy([(stroke.x, stroke.y) for stroke in sketch.strokes]))
        except InvalidDrawingError as err:
            raise _sketch_error(i, sketch.id, prefix, err.field, err.message) from None
    return drawings


def packed_to_drawings(message: sketch_pb2.PackedSketches, *, limit: int, prefix: str = "") -> list[Drawing]:
    """Validate packed sketches (vectorised, ``sketchserve.packed``) into Drawings, naming the fault as the
    readable form's checks do."""
    check_count(len(message.sketch_strokes), limit, "sketches", prefix)
    packed = PackedSketches(
        message.points, np.asarray(message.stroke_points), np.asarray(message.sketch_strokes), tuple(message.ids)
    )
    try:
        return unpack(packed)
    except PackedFormatError as err:
        if err.sketch is None:
            raise InvalidRequest(prefix + err.field, err.message) from None
        sketch_id = packed.ids[err.sketch] if packed.ids else ""
        field = err.field.removeprefix(f"sketches[{err.sketch}].")
        raise _sketch_error(err.sketch, sketch_id, prefix, field, err.message) from None


def request_sketches(request: SketchRequest, *, limit: int, prefix: str = "") -> RequestSketches:
    """The sketches of a request in whichever form it gives them (readable ``sketches`` or ``packed``)."""
    if request.HasField("packed"):
        if request.sketches:
            raise InvalidRequest(prefix + "packed", "give the sketches either readable (sketches) or packed, not both")
        drawings = packed_to_drawings(request.packed, limit=limit, prefix=prefix)
        return _within_caps(RequestSketches(drawings, tuple(request.packed.ids)), prefix)
    drawings = sketches_to_drawings(request.sketches, limit=limit, prefix=prefix)
    return _within_caps(RequestSketches(drawings, [s.id for s in request.sketches]), prefix)


def _within_caps(sketches: RequestSketches, prefix: str) -> RequestSketches:
    """``sketches``, unless one has more raw points than canonicalization accepts: refused here, naming it,
    so that it never reaches (and fails) a preprocessing batch shared with other requests."""
    for index, drawing in enumerate(sketches.drawings):
        try:
            check_point_caps(drawing)
        except InvalidDrawingError as err:
            raise _sketch_error(index, sketches.id_of(index), prefix, err.field, err.message) from None
    return sketches


def latents_to_array(latents: Sequence[sketch_pb2.Embedding], latent_size: int, limit: int) -> np.ndarray:
    check_count(len(latents), limit, "latents")
    rows = []
    for i, latent in enumerate(latents):
        mu = np.asarray(latent.mu, dtype=np.float32)
        if len(mu) != latent_size:
            raise InvalidRequest(f"latents[{i}].mu", f"has {len(mu)} values, the model's latent size is {latent_size}")
        if not np.isfinite(mu).all():
            raise InvalidRequest(f"latents[{i}].mu", "holds NaN or infinite values")
        outside = np.flatnonzero(np.abs(mu) > MAX_LATENT_ABS)
        if len(outside):
            j = int(outside[0])
            raise InvalidRequest(
                f"latents[{i}].mu[{j}]", f"{float(mu[j]):g} is outside [-{MAX_LATENT_ABS:g}, {MAX_LATENT_ABS:g}]"
            )
        rows.append(mu)
    return np.stack(rows)


def _admit_encode_then_decode(
    state: ServingState, sketches: RequestSketches, context: grpc.aio.ServicerContext
) -> Ticket:
    """A call that encodes its sketches, then decodes (Reconstruct from sketches, Score): admitted once for all
    three stages before any work, so it is never refused after paying for the encode."""
    return state.engine.admit(len(sketches.drawings), (PREPROCESS, ENCODE, DECODE), context.time_remaining())


def check_temperature(temperature: float) -> float:
    if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        raise InvalidRequest("temperature", f"{temperature} is outside [0, {MAX_TEMPERATURE:g}]")
    return float(temperature)


def resolve_max_points(requested: int, model_max: int) -> int:
    if requested == 0:
        return model_max
    if requested > model_max:
        raise InvalidRequest("max_points", f"{requested} exceeds the model's maximum of {model_max}")
    return requested


def stroke3_to_proto(s3: np.ndarray) -> sketch_pb2.Sketch:
    """A canonical stroke-3 as absolute strokes in the canonical frame: its top-left at (0, 0), canonical
    units (a drawing the size of its input spans about 0-255); an empty one (the decoder ended at once) has
    no strokes."""
    if len(s3) == 0:
        return sketch_pb2.Sketch()
    drawing = stroke3_to_drawing(s3)
    corner = np.concatenate(drawing).min(axis=0)
    return sketch_pb2.Sketch(
        strokes=[sketch_pb2.Stroke(x=(p[:, 0] - corner[0]).tolist(), y=(p[:, 1] - corner[1]).tolist()) for p in drawing]
    )


def embedding_to_proto(embedding: Encoded) -> sketch_pb2.Embedding:
    return sketch_pb2.Embedding(mu=embedding.mu.tolist(), sigma=embedding.sigma.tolist())


def model_info(state: ServingState) -> sketch_pb2.ModelInfo:
    manifest, spec = state.manifest, state.engine.spec
    data = manifest.data
    return sketch_pb2.ModelInfo(
        version=spec.version,
        name=spec.name,
        latent_size=spec.latent_size,
        cluster_count=0 if state.clusters is None else state.clusters.k,
        max_points=spec.max_seq_len,
        device=spec.device,
        categories=[str(c) for c in data.get("categories", [])],
        data_files=[str(f.get("path", "")) for f in data.get("files", [])],
        training_drawings=int(data.get("counts", {}).get("train", 0)),
        max_sketches_per_request=state.max_sketches_per_request,
        manifest_json=json.dumps(dict(manifest.document), sort_keys=True),
    )


class SketchServicer(sketch_pb2_grpc.SketchServiceServicer):
    """Answers UNAVAILABLE until :meth:`attach` hands it a warm model."""

    def __init__(self) -> None:
        self._state: ServingState | None = None
        self._draining = asyncio.Event()

    def attach(self, state: ServingState) -> None:
        self._state = state

    def drain(self) -> None:
        """Open and new EncodeStreams take no more requests: they answer the accepted ones, then end UNAVAILABLE."""
        self._draining.set()

    def _ready(self) -> ServingState:
        if self._state is None:
            raise NotReady("the server is warming up; retry shortly")
        self._state.calls.enter()
        return self._state

    def _clusters(self, state: ServingState) -> ClusterTable:
        if state.clusters is None:
            raise FailedPrecondition(
                "this model has no clusters: run `sketchserve cluster MODEL_DIR` to add clusters.json, "
                "then reload (SIGHUP)"
            )
        return state.clusters

    async def _encoded(
        self,
        state: ServingState,
        request: SketchRequest,
        context: grpc.aio.ServicerContext,
        prefix: str = "",
    ) -> list[Encoded]:
        """Validate, preprocess and encode the request's sketches (admitted by the engine for those stages)."""
        sketches = request_sketches(request, limit=state.max_sketches_per_request, prefix=prefix)
        return await self._encode_sketches(state, sketches, context, prefix)

    async def _encode_sketches(
        self,
        state: ServingState,
        sketches: RequestSketches,
        context: grpc.aio.ServicerContext,
        prefix: str = "",
        ticket: Ticket | None = None,
    ) -> list[Encoded]:
        try:
            return await state.engine.encode(sketches.drawings, timeout=context.time_remaining(), ticket=ticket)
        except SketchTooLong as err:
            raise _sketch_error(err.index, sketches.id_of(err.index), prefix, "", str(err)) from None

    async def _encode(
        self,
        state: ServingState,
        request: sketch_pb2.EncodeRequest,
        context: grpc.aio.ServicerContext,
        prefix: str = "",
    ) -> sketch_pb2.EncodeResponse:
        encoded = await self._encoded(state, request, context, prefix)
        if request.packed_response:
            packed = sketch_pb2.PackedEmbeddings(
                latent_size=state.engine.spec.latent_size,
                mu=pack_rows(np.stack([e.mu for e in encoded])),
                sigma=pack_rows(np.stack([e.sigma for e in encoded])),
            )
            return sketch_pb2.EncodeResponse(packed=packed, model_version=state.version)
        return sketch_pb2.EncodeResponse(
            embeddings=[embedding_to_proto(e) for e in encoded], model_version=state.version
        )

    async def Encode(
        self, request: sketch_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> sketch_pb2.EncodeResponse:
        return await self._encode(self._ready(), request, context)

    async def Assign(
        self, request: sketch_pb2.AssignRequest, context: grpc.aio.ServicerContext
    ) -> sketch_pb2.AssignResponse:
        state = self._ready()
        clusters = self._clusters(state)
        encoded = await self._encoded(state, request, context)
        neighbors = clusters.nearest(np.stack([e.mu for e in encoded]), request.top_k or 1)
        assignments = [
            sketch_pb2.Assignment(
                cluster=near[0].cluster,
                distance=near[0].distance,
                nearest=[sketch_pb2.ClusterDistance(cluster=n.cluster, distance=n.distance) for n in near],
            )
            for near in neighbors
        ]
        return sketch_pb2.AssignResponse(assignments=assignments, model_version=state.version)

    async def Reconstruct(
        self, request: sketch_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> sketch_pb2.ReconstructResponse:
        state = self._ready()
        spec = state.engine.spec
        if (request.sketches or request.HasField("packed")) and request.latents:
            raise InvalidRequest("latents", "give either sketches or latents, not both")
        temperature = check_temperature(request.temperature)
        max_points = resolve_max_points(request.max_points, spec.max_seq_len)
        if request.latents:
            latents = latents_to_array(request.latents, spec.latent_size, state.max_sketches_per_request)
            drawings = await state.engine.sample(
                latents,
                temperature=temperature,
                max_points=max_points,
                seed=request.seed,
                timeout=context.time_remaining(),
            )
        else:
            sketches = request_sketches(request, limit=state.max_sketches_per_request)
            with _admit_encode_then_decode(state, sketches, context) as ticket:
                encoded = await self._encode_sketches(state, sketches, context, ticket=ticket)
                drawings = await state.engine.sample(
                    np.stack([e.mu for e in encoded]),
                    temperature=temperature,
                    max_points=max_points,
                    seed=request.seed,
                    targets=[len(e.stroke3) for e in encoded],
                    timeout=context.time_remaining(),
                    ticket=ticket,
                )
        return sketch_pb2.ReconstructResponse(
            sketches=[stroke3_to_proto(s3) for s3 in drawings], model_version=state.version
        )

    async def Score(
        self, request: sketch_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> sketch_pb2.ScoreResponse:
        state = self._ready()
        sketches = request_sketches(request, limit=state.max_sketches_per_request)
        with _admit_encode_then_decode(state, sketches, context) as ticket:
            encoded = await self._encode_sketches(state, sketches, context, ticket=ticket)
            scores = await state.engine.score(encoded, timeout=context.time_remaining(), ticket=ticket)
        return sketch_pb2.ScoreResponse(
            scores=[sketch_pb2.SketchScore(reconstruction_nll=s.reconstruction_nll, kl=s.kl) for s in scores],
            model_version=state.version,
        )

    async def EncodeStream(
        self, request_iterator: AsyncIterator[sketch_pb2.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sketch_pb2.EncodeResponse]:
        """At most ``stream_window`` requests read and not yet answered; responses leave in request order.

        A request is read only once a window slot is free, and a slot frees only once its
        response is handed to gRPC: a client that reads slowly makes gRPC's writes wait, so
        the server stops reading, and HTTP/2 flow control slows the sender. Once the server
        drains, the stream reads no more requests: it answers those it read, then ends
        UNAVAILABLE ("draining") so the client resends the rest elsewhere.
        """
        state = self._ready()
        if self._draining.is_set():
            raise NotReady(DRAINING_MESSAGE)
        slots = asyncio.Semaphore(state.stream_window)
        pending: asyncio.Queue[asyncio.Task | BaseException | None] = asyncio.Queue()

        async def feed() -> None:
            requests = aiter(request_iterator)
            try:
                for index in itertools.count():
                    await slots.acquire()
                    request = await _next_unless_draining(requests, self._draining)
                    if request is _END:
                        break
                    if request is _DRAINED:
                        pending.put_nowait(NotReady(DRAINING_MESSAGE))
                        return
                    log.debug("stream request", extra=fields(method="EncodeStream", index=index))
                    prefix = f"requests[{index}]."
                    pending.put_nowait(asyncio.ensure_future(self._encode(state, request, context, prefix)))
            except Exception as exc:  # noqa: BLE001 - handed to the writer, which raises it in order
                pending.put_nowait(exc)
                return
            pending.put_nowait(None)

        feeder = asyncio.ensure_future(feed())
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield await item
                slots.release()
        finally:
            feeder.cancel()
            _discard_pending(pending)

    async def GetModelInfo(
        self, request: sketch_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> sketch_pb2.ModelInfo:
        return model_info(self._ready())

    async def ListClusters(
        self, request: sketch_pb2.ListClustersRequest, context: grpc.aio.ServicerContext
    ) -> sketch_pb2.ListClustersResponse:
        state = self._ready()
        clusters = self._clusters(state)
        result = [
            sketch_pb2.Cluster(
                id=c,
                size=clusters.sizes[c],
                centroid=clusters.centroids[c].tolist(),
                exemplars=[stroke3_to_proto(s) for s in clusters.exemplars[c][: request.exemplars]],
                prototype=sketch_pb2.Sketch() if prototype is None else stroke3_to_proto(prototype),
            )
            for c, prototype in enumerate(clusters.prototypes)
        ]
        return sketch_pb2.ListClustersResponse(clusters=result, model_version=state.version)


_END = object()
_DRAINED = object()


async def _next_unless_draining(requests: AsyncIterator[Any], draining: asyncio.Event) -> Any:
    """The stream's next request, ``_END`` after the last, or ``_DRAINED`` once the server drains."""
    if draining.is_set():
        return _DRAINED
    receive = asyncio.ensure_future(anext(requests, _END))
    drained = asyncio.ensure_future(draining.wait())
    try:
        await asyncio.wait((receive, drained), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        receive.cancel()
        raise
    finally:
        drained.cancel()
    if draining.is_set():
        # Even a request that arrived together with the drain is left unanswered: the client resends it.
        receive.cancel()
        return _DRAINED
    return receive.result()


def _discard_pending(pending: asyncio.Queue) -> None:
    """Cancel the stream's unfinished encodes; mark finished ones' errors as seen."""
    while not pending.empty():
        item = pending.get_nowait()
        if isinstance(item, asyncio.Task):
            if item.done():
                if not item.cancelled():
                    item.exception()
            else:
                item.cancel()
