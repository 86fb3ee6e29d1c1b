"""Keeping strangers out: TLS, mutual TLS and bearer tokens, all from operator-given files.

TLS: ``--tls-cert`` and ``--tls-key`` (PEM) turn the port into TLS only.
Mutual TLS: ``--tls-client-ca`` (PEM bundle) additionally makes every caller
present a certificate chaining to it; the handshake refuses the rest.

Tokens: ``--auth-tokens-file`` holds one token per line (blank lines and lines
starting with ``#`` are skipped). A line may list the RPCs the token is allowed
after the token, separated by spaces (``t0k3n GetModelInfo Encode``); a token
alone may call every method. Callers send the metadata ``authorization:
Bearer <token>``. :class:`AuthInterceptor` checks it before a method handler
exists, so a refused call costs no request decoding and no model work:

- no ``authorization``, not ``Bearer``, or an unknown token: UNAUTHENTICATED;
- a known token not allowed this method: PERMISSION_DENIED.

Tokens are compared in constant time (``hmac.compare_digest`` against every
known token, no early exit). Probes (``grpc.health.v1``, and the Open
Inference Protocol's ServerLive, ServerReady, ModelReady) are exempt unless
``--auth-health``: they carry no token and say only ready or not; reflection
and every other RPC are not exempt. With both tokens and mutual TLS, a caller
needs both. The file is read once at startup.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from sketchserve.server.config import ConfigError, ServerConfig
from sketchserve.server.errors import (
    NOISY_LOG_INTERVAL_S,
    HandlerInterceptor,
    OnCallDone,
    PermissionDenied,
    Unauthenticated,
    map_exception,
    method_name,
)
from sketchserve.server.logs import RateLimitedLog

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "
# What probes call: grpc.health.v1, and the Open Inference Protocol's liveness and readiness.
PROBES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
)
COMMENT = "#"


@dataclass(frozen=True)
class Grant:
    """One token and the RPC names it may call (empty: every method)."""

    token: bytes
    methods: frozenset[str]

    def allows(self, method: str) -> bool:
        return not self.methods or method in self.methods


def read_tokens(path: Path) -> tuple[Grant, ...]:
    """The grants of a tokens file; a file without one token is a configuration error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--auth-tokens-file {path}: {exc}") from None
    grants = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(COMMENT):
            continue
        grants.append(Grant(words[0].encode("utf-8"), frozenset(words[1:])))
    if not grants:
        raise ConfigError(f"--auth-tokens-file {path}: no tokens (one per line)")
    return tuple(grants)


def _read_pem(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None


def server_credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the config's PEM files; None: plaintext."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    pair = (_read_pem("--tls-key", cfg.tls_key), _read_pem("--tls-cert", cfg.tls_cert))
    client_ca = None if cfg.tls_client_ca is None else _read_pem("--tls-client-ca", cfg.tls_client_ca)
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, or None."""
    for key, value in metadata or ():
        if key != AUTHORIZATION:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text[: len(BEARER)].lower() == BEARER:
            return text[len(BEARER) :].strip().encode("utf-8")
    return None


def find_grant(grants: Sequence[Grant], token: bytes) -> Grant | None:
    """The grant of ``token``; every grant is compared, in constant time each."""
    found = None
    for grant in grants:
        if hmac.compare_digest(grant.token, token):
            found = grant
    return found


def check_call(grants: Sequence[Grant], metadata: Sequence[tuple[str, str | bytes]] | None, method: str) -> None:
    """Raise Unauthenticated or PermissionDenied unless the call's token may call ``method``."""
    token = bearer_token(metadata)
    if token is None:
        raise Unauthenticated("this server needs `authorization: Bearer <token>` metadata")
    grant = find_grant(grants, token)
    if grant is None:
        raise Unauthenticated("unknown bearer token")
    if not grant.allows(method):
        raise PermissionDenied(f"this token may not call {method}")


def _refusal(handler: grpc.RpcMethodHandler, error: Exception) -> grpc.RpcMethodHandler:
    """A handler of the same kind that ends the call with ``error``'s status, reading nothing."""
    mapped = map_exception(error)

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(mapped.code, mapped.message)

    kinds: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for kind, make in kinds.items():
        if getattr(handler, kind) is not None:
            # No request_deserializer: the refused request's bytes are never parsed.
            return make(refuse, response_serializer=handler.response_serializer)
    raise TypeError(f"unknown handler kind: {handler!r}")


class AuthInterceptor(HandlerInterceptor):
    """Refuses calls without an allowed bearer token before their handler runs (see the module docstring)."""

    def __init__(self, grants: Sequence[Grant], on_refused: OnCallDone, *, exempt_health: bool = True) -> None:
        self._grants = tuple(grants)
        self._on_refused = on_refused
        self._exempt_health = exempt_health
        self._noisy = RateLimitedLog(log, NOISY_LOG_INTERVAL_S)

    def replace(
        self, handler: grpc.RpcMethodHandler, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        full_method = handler_call_details.method
        if self._exempt_health and full_method.startswith(PROBES):
            return handler
        method = method_name(full_method)
        try:
            check_call(self._grants, handler_call_details.invocation_metadata, method)
        except (Unauthenticated, PermissionDenied) as refused:
            code = map_exception(refused).code
            self._noisy.warning("call refused", method=method, code=code.name, reason=str(refused))
            self._on_refused(method, code.name, 0.0)
            return _refusal(handler, refused)
        return handler
