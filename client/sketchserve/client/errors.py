"""The one exception type the client raises for a failed call."""

from __future__ import annotations

import re

import grpc

# The server names a sketch by its index in the request ("sketches[3].strokes[1]: ...").
SKETCH_INDEX = re.compile(r"sketches\[(\d+)\]")
# On a stream it names the request too ("requests[2].sketches[3]: ...").
STREAM_SKETCH_INDEX = re.compile(r"requests\[(\d+)\]\.sketches\[(\d+)\]")


class SketchServiceError(Exception):
    """A call to the sketch service failed.

    ``code`` is the gRPC status code, ``details`` the server's message with
    sketch indices counted in the caller's whole input (not the chunk sent).
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method} failed: {code.name}: {details}")


class ModelVersionChangedError(SketchServiceError):
    """The requests of one call were answered by different model versions."""

    def __init__(self, versions: list[str]) -> None:
        message = f"the server changed model mid-call (versions {versions}); retry"
        super().__init__("call", grpc.StatusCode.ABORTED, message)


def shift_sketch_indices(details: str, offset: int) -> str:
    """Rewrite ``sketches[i]`` as ``sketches[i + offset]`` in a server message."""
    if offset == 0:
        return details
    return SKETCH_INDEX.sub(lambda m: f"sketches[{int(m.group(1)) + offset}]", details)


def join_stream_indices(details: str, offsets: tuple[int, ...]) -> str:
    """Rewrite ``requests[k].sketches[i]`` as ``sketches[offsets[k] + i]``."""

    def whole_input(match: re.Match[str]) -> str:
        request, index = int(match.group(1)), int(match.group(2))
        return f"sketches[{offsets[request] + index}]" if request < len(offsets) else match.group(0)

    return STREAM_SKETCH_INDEX.sub(whole_input, details)


def from_rpc_error(
    error: grpc.RpcError, method: str, offset: int = 0, stream_offsets: tuple[int, ...] = ()
) -> SketchServiceError:
    """The typed error for a failed call whose request began at sketch ``offset``.

    On a stream, ``stream_offsets`` holds where each request began instead.
    """
    # Sync errors are grpc.Call objects, grpc.aio's AioRpcError is not: both have code()/details().
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else str(error)) or ""
    if stream_offsets:
        return SketchServiceError(method, code, join_stream_indices(details, stream_offsets))
    return SketchServiceError(method, code, shift_sketch_indices(details, offset))
