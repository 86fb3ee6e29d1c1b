"""The one exception type the client raises for a failed call."""

from __future__ import annotations

import re

import grpc

# The server names a sketch by its index in the request ("sketches[3].strokes[1]: ...").
_SKETCH_INDEX = re.compile(r"sketches\[(\d+)\]")


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
        super().__init__("call", grpc.StatusCode.ABORTED, f"the server changed model mid-call (versions {versions}); retry")


def shift_sketch_indices(details: str, offset: int) -> str:
    """Rewrite ``sketches[i]`` as ``sketches[i + offset]`` in a server message."""
    if offset == 0:
        return details
    return _SKETCH_INDEX.sub(lambda m: f"sketches[{int(m.group(1)) + offset}]", details)


def from_rpc_error(error: grpc.RpcError, method: str, offset: int = 0) -> SketchServiceError:
    """The typed error for a failed call whose request began at sketch ``offset``."""
    # Sync errors are grpc.Call objects, grpc.aio's AioRpcError is not: both have code()/details().
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else str(error)) or ""
    return SketchServiceError(method, code, shift_sketch_indices(details, offset))
