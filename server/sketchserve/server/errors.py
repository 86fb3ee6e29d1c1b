"""The one place where exceptions become gRPC status codes.

:class:`StatusInterceptor` wraps every method of SketchService and of the Open
Inference Protocol's ``inference.GRPCInferenceService``: whatever a handler
raises ends the call with a status (never a hung call), and every call's
method, final code and latency go to one callback (the metrics).

| exception | status |
|---|---|
| InvalidRequest, InvalidDrawingError, SketchTooLong | INVALID_ARGUMENT (message names sketch index and field) |
| UnknownModel (an Open Inference Protocol model or version not served) | NOT_FOUND |
| UndecodableRequest (bytes that are not the method's message, bad UTF-8 in a string) | INVALID_ARGUMENT |
| Unauthenticated (no or unknown bearer token) | UNAUTHENTICATED |
| PermissionDenied (the token is not allowed this method) | PERMISSION_DENIED |
| QueueFull | RESOURCE_EXHAUSTED |
| FailedPrecondition (e.g. no clusters) | FAILED_PRECONDITION |
| DeadlineDropped | DEADLINE_EXCEEDED |
| NotReady, BatcherClosed (warming up, draining) | UNAVAILABLE |
| anything else | INTERNAL, traceback logged |

Messages larger than ``max_message_bytes`` never reach a handler: gRPC itself
answers RESOURCE_EXHAUSTED. Request bytes are decoded by a wrapped deserializer
that never raises: a message that does not parse becomes an
:class:`Undecodable` marker, which the handler wrapper turns into
UndecodableRequest inside the status scope, so the call is counted and logged
once per interval without a traceback (a caller can send such bytes at will).

A call cancelled with less than ``DEADLINE_SLACK_S`` left counts as
DEADLINE_EXCEEDED: the caller's timer starts before the server's (the
request's transit time) and usually fires first, cancelling the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from sketchserve.server.batching import DEADLINE_SLACK_S, BatcherClosed, DeadlineDropped, QueueFull
from sketchserve.server.logs import RateLimitedLog, fields
from sketchserve.server.results import SketchTooLong
from sketchserve.strokes import InvalidDrawingError

log = logging.getLogger(__name__)

# The services whose calls the interceptor maps and reports: ours and the Open Inference Protocol's.
SERVICE_PREFIXES = ("/sketch.v1.SketchService/", "/inference.GRPCInferenceService/")
INTERNAL_MESSAGE = "internal error; the server logged the details"
# One line per interval for errors any caller can provoke (undecodable bytes, bad tokens).
NOISY_LOG_INTERVAL_S = 10.0

OnCallDone = Callable[[str, str, float], None]


class InvalidRequest(ValueError):
    """The request is malformed; ``field`` names the part, e.g. ``sketches[3].strokes[1].y``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownModel(LookupError):
    """No model (or no version of it) by that name is served here."""


class UndecodableRequest(InvalidRequest):
    """The request bytes are not a valid message of the method's request type."""


class Unauthenticated(Exception):
    """The call carries no bearer token, or one the server does not know."""


class PermissionDenied(Exception):
    """The call's token is known but not allowed this method."""


class FailedPrecondition(Exception):
    """The server cannot answer this call in its present state (e.g. the model has no clusters)."""


class NotReady(Exception):
    """The server is warming up or draining."""


@dataclass(frozen=True)
class MappedStatus:
    code: grpc.StatusCode
    message: str
    log_traceback: bool = False


_MAPPING: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidDrawingError, grpc.StatusCode.INVALID_ARGUMENT),
    (SketchTooLong, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnknownModel, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineDropped, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (BatcherClosed, grpc.StatusCode.UNAVAILABLE),
)


def map_exception(exc: BaseException) -> MappedStatus:
    """The status a call ends with when its handler raises ``exc``."""
    for kind, code in _MAPPING:
        if isinstance(exc, kind):
            return MappedStatus(code, str(exc))
    return MappedStatus(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, log_traceback=True)


def method_name(full_method: str) -> str:
    """``/sketch.v1.SketchService/Encode`` -> ``Encode``."""
    return full_method.rsplit("/", 1)[-1]


def _request_type(full_method: str) -> str:
    """The full name of a method's request message, e.g. ``sketch.v1.EncodeRequest`` for
    ``/sketch.v1.SketchService/Encode`` (from the generated code's descriptor pool)."""
    try:
        method = descriptor_pool.Default().FindMethodByName(full_method.strip("/").replace("/", "."))
    except KeyError:
        return "request"
    return str(method.input_type.full_name)


def cancelled_code(time_remaining: float | None) -> grpc.StatusCode:
    """How a cancelled call is counted: DEADLINE_EXCEEDED when (nearly) none of its time was left."""
    expired = time_remaining is not None and time_remaining <= DEADLINE_SLACK_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


@dataclass(frozen=True)
class Undecodable:
    """What the wrapped deserializer returns for bytes that do not parse as the request type."""

    type_name: str


Deserializer = Callable[[bytes], object]


def tolerant_deserializer(deserialize: Deserializer | None, type_name: str) -> Deserializer | None:
    """``deserialize`` that returns :class:`Undecodable` instead of raising DecodeError."""
    if deserialize is None:
        return None

    def decode(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError:
            return Undecodable(type_name)

    return decode


def _checked(request: object, field: str) -> object:
    if isinstance(request, Undecodable):
        raise UndecodableRequest(field, f"not a valid {request.type_name} message (protobuf decoding failed)")
    return request


async def _checked_stream(request_iterator: AsyncIterator) -> AsyncIterator:
    index = 0
    async for request in request_iterator:
        yield _checked(request, f"requests[{index}]")
        index += 1


@dataclass(frozen=True)
class _CallReport:
    """Where one call's outcome goes: the metrics callback and the rate-limited log."""

    on_done: OnCallDone
    noisy: RateLimitedLog


@asynccontextmanager
async def _status_scope(method: str, context: grpc.aio.ServicerContext, report: _CallReport) -> AsyncIterator[None]:
    """Ends the call with the mapped status of whatever the handler raised; reports method, code, time."""
    started, code = time.perf_counter(), grpc.StatusCode.OK
    log.debug("call accepted", extra=fields(method=method))
    try:
        yield
    except asyncio.CancelledError:
        code = cancelled_code(context.time_remaining())
        raise
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception as exc:  # noqa: BLE001 - the one place every error gets a status
        mapped = map_exception(exc)
        code = mapped.code
        if mapped.log_traceback:
            log.error("unexpected error", extra=fields(method=method, error=repr(exc)), exc_info=exc)
        elif isinstance(exc, UndecodableRequest):
            report.noisy.warning("undecodable request", method=method, error=str(exc), peer=context.peer())
        await context.abort(mapped.code, mapped.message)
    finally:
        report.on_done(method, code.name, time.perf_counter() - started)


def _wrap_unary(method: str, behavior: Callable[..., Awaitable], report: _CallReport) -> Callable[..., Awaitable]:
    async def handler(request: object, context: grpc.aio.ServicerContext) -> object:
        async with _status_scope(method, context, report):
            return await behavior(_checked(request, "request"), context)

    return handler


def _wrap_stream(
    method: str, behavior: Callable[..., AsyncIterator], report: _CallReport
) -> Callable[..., AsyncIterator]:
    async def handler(request_iterator: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
        async with _status_scope(method, context, report):
            async for response in behavior(_checked_stream(request_iterator), context):
                yield response

    return handler


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that may replace the handler of each call (before any request is read)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return handler if handler is None else self.replace(handler, handler_call_details)

    def replace(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class StatusInterceptor(HandlerInterceptor):
    """Maps every SketchService and GRPCInferenceService handler's exceptions to statuses; reports each call."""

    def __init__(self, on_done: OnCallDone) -> None:
        self._report = _CallReport(on_done, RateLimitedLog(log, NOISY_LOG_INTERVAL_S))

    def replace(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if not handler_call_details.method.startswith(SERVICE_PREFIXES):
            return handler
        method = method_name(handler_call_details.method)
        deserializer = tolerant_deserializer(handler.request_deserializer, _request_type(handler_call_details.method))
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, self._report),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream, self._report),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{handler_call_details.method}: only unary-unary and stream-stream methods are wrapped")
