"""The one place where exceptions become gRPC status codes.

:class:`StatusInterceptor` wraps every method of SketchService and of the Open
Inference Protocol's ``inference.GRPCInferenceService``: whatever a handler
raises ends the call with a status (never a hung call), and every call's
method, final code and latency go to one callback (the metrics).

| exception | status |
|---|---|
| InvalidRequest, InvalidDrawingError, SketchTooLong | INVALID_ARGUMENT (message names sketch index and field) |
| QueueFull | RESOURCE_EXHAUSTED |
| UnknownModel (an Open Inference Protocol model or version not served) | NOT_FOUND |
| FailedPrecondition (e.g. no clusters) | FAILED_PRECONDITION |
| DeadlineDropped | DEADLINE_EXCEEDED |
| NotReady, BatcherClosed | UNAVAILABLE |
| anything else | INTERNAL, traceback logged |

Messages larger than ``max_message_bytes`` never reach a handler: gRPC itself
answers RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from sketchserve.server.batching import BatcherClosed, DeadlineDropped, QueueFull
from sketchserve.server.logs import fields
from sketchserve.server.results import SketchTooLong
from sketchserve.strokes import InvalidDrawingError

log = logging.getLogger(__name__)

# The services whose calls the interceptor maps and reports: ours and the Open Inference Protocol's.
SERVICE_PREFIXES = ("/sketch.v1.SketchService/", "/inference.GRPCInferenceService/")
INTERNAL_MESSAGE = "internal error; the server logged the details"

OnCallDone = Callable[[str, str, float], None]


class InvalidRequest(ValueError):
    """The request is malformed; ``field`` names the part, e.g. ``sketches[3].strokes[1].y``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownModel(LookupError):
    """No model (or no version of it) by that name is served here."""


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


@asynccontextmanager
async def _status_scope(method: str, context: grpc.aio.ServicerContext, on_done: OnCallDone) -> AsyncIterator[None]:
    """Ends the call with the mapped status of whatever the handler raised; reports method, code, time."""
    started, code = time.perf_counter(), grpc.StatusCode.OK
    log.debug("call accepted", extra=fields(method=method))
    try:
        yield
    except asyncio.CancelledError:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception as exc:  # noqa: BLE001 - the one place every error gets a status
        mapped = map_exception(exc)
        code = mapped.code
        if mapped.log_traceback:
            log.error("unexpected error", extra=fields(method=method, error=repr(exc)), exc_info=exc)
        await context.abort(mapped.code, mapped.message)
    finally:
        on_done(method, code.name, time.perf_counter() - started)


def _wrap_unary(method: str, behavior: Callable[..., Awaitable], on_done: OnCallDone) -> Callable[..., Awaitable]:
    async def handler(request: object, context: grpc.aio.ServicerContext) -> object:
        async with _status_scope(method, context, on_done):
            return await behavior(request, context)

    return handler


def _wrap_stream(
    method: str, behavior: Callable[..., AsyncIterator], on_done: OnCallDone
) -> Callable[..., AsyncIterator]:
    async def handler(request_iterator: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
        async with _status_scope(method, context, on_done):
            async for response in behavior(request_iterator, context):
                yield response

    return handler


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps every SketchService and GRPCInferenceService handler's exceptions to statuses; reports each call."""

    def __init__(self, on_done: OnCallDone) -> None:
        self._on_done = on_done

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(SERVICE_PREFIXES):
            return handler
        method = method_name(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, self._on_done),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream, self._on_done),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{handler_call_details.method}: only unary-unary and stream-stream methods are wrapped")
