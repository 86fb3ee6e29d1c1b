"""Client settings and the gRPC channel options they turn into.

A target is any gRPC target string: ``host:port``; ``dns:///name:port`` (every
address the name resolves to, e.g. a Kubernetes headless Service,
re-resolved when a connection closes); ``ipv4:127.0.0.1:5001,127.0.0.1:5002``
(a fixed list). The service config balances calls round-robin over every
address by default; the client retries UNAVAILABLE (``sketchserve.client.retry``),
so a call that hits a draining or dead replica is sent again, to another one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

MIB = 1024 * 1024
MS_PER_S = 1000
# gRPC's load-balancing policies a ClientConfig may name.
LOAD_BALANCING_POLICIES = ("round_robin", "pick_first")


@dataclass(frozen=True)
class ClientConfig:
    # Deadline of one request: a full batch of long sketches takes well under a
    # second of compute even on CPU, the rest is queueing behind other callers.
    timeout: float = 30.0
    # Sketches per request: large inputs are split into requests this size; it
    # stays under the server's per-request limit and keeps messages small.
    max_sketches_per_call: int = 64
    # Requests of one asyncio call in flight together: enough to fill the server's
    # batches, few enough (4 x 64 sketches) to stay well inside its queue.
    max_calls_in_flight: int = 4
    # Attempts (first one included) of one request that fails UNAVAILABLE, i.e. while
    # the server warms up, drains or restarts; every SketchService method is a pure
    # function of its request (Reconstruct's sampling is seeded), so all are retried.
    retry_attempts: int = 20
    # Backoff before the first retry, doubled each time up to retry_max_backoff, each
    # wait drawn from [half, all] of it so restarted callers do not return in step.
    retry_initial_backoff: float = 0.1
    retry_max_backoff: float = 5.0
    # Seconds of failed attempts a call rides out before giving up: well past the
    # ~2.4 s a killed server takes to come back, and a rolling restart's swap. It
    # restarts whenever a request is answered; bulk calls resume after the last answer.
    retry_budget: float = 30.0
    # Largest message either way: raw (unsimplified) drawings run to thousands of
    # points, and the 4 MiB gRPC default rejects a chunk of 64 of them.
    max_message_bytes: int = 64 * MIB
    # Wait for the channel to connect (up to the deadline) instead of failing at
    # once when the server is not up yet; off so a wrong address fails fast.
    wait_for_ready: bool = False
    # Send sketches in the proto's packed form (one float32 buffer and two count
    # lists) and take Encode's embeddings packed: far less protobuf work on both
    # sides than one message per stroke (docs/benchmarks.md, "Serving"); off sends
    # the readable form, e.g. to a server older than the packed fields.
    packed: bool = True
    # round_robin: one connection per resolved address, calls spread over all of them (and a
    # replica that goes away is skipped at once). pick_first: one connection, gRPC's default.
    load_balancing: str = "round_robin"
    # Ping an idle connection this often to notice a replica that vanished without closing it
    # (a killed node): the server accepts pings down to every 10 s (sketchserve.server.main).
    keepalive_seconds: float = 30.0
    # A ping unanswered this long closes the connection; its calls fail UNAVAILABLE and retry.
    keepalive_timeout_seconds: float = 10.0
    # TLS: on when any of the TLS settings is given. tls_root_ca is the CA bundle (PEM
    # file) the server's certificate must chain to (None: the system's roots).
    tls: bool = False
    tls_root_ca: Path | None = None
    # Mutual TLS: this client's certificate chain and key (PEM files), both or neither.
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    # Sent as `authorization: Bearer <token>` on every call; kept out of repr().
    auth_token: str | None = field(default=None, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_root_ca is not None or self.tls_client_cert is not None

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.max_sketches_per_call < 1:
            raise ValueError(f"max_sketches_per_call must be >= 1, got {self.max_sketches_per_call}")
        if self.max_calls_in_flight < 1:
            raise ValueError(f"max_calls_in_flight must be >= 1, got {self.max_calls_in_flight}")
        if self.retry_attempts < 1:
            raise ValueError(f"retry_attempts must be >= 1, got {self.retry_attempts}")
        if self.retry_initial_backoff <= 0 or self.retry_max_backoff < self.retry_initial_backoff:
            raise ValueError("retry backoffs must satisfy 0 < retry_initial_backoff <= retry_max_backoff")
        if self.retry_budget < 0:
            raise ValueError(f"retry_budget must be >= 0 seconds, got {self.retry_budget}")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key go together: give both or neither")
        if self.auth_token is not None and (not self.auth_token or any(c.isspace() for c in self.auth_token)):
            raise ValueError("auth_token must be a non-empty string without whitespace")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        if self.load_balancing not in LOAD_BALANCING_POLICIES:
            raise ValueError(f"load_balancing must be one of {LOAD_BALANCING_POLICIES}, got {self.load_balancing!r}")
        if self.keepalive_seconds <= 0 or self.keepalive_timeout_seconds <= 0:
            raise ValueError("keepalive_seconds and keepalive_timeout_seconds must be > 0")


def resolve(config: ClientConfig | None, overrides: dict[str, Any]) -> ClientConfig:
    """``config`` (or the defaults) with keyword overrides, e.g. ``timeout=5.0``."""
    base = config or ClientConfig()
    unknown = sorted(set(overrides) - set(base.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown client settings {unknown}; see ClientConfig")
    return replace(base, **overrides)


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials from the config's PEM files; None for a plaintext channel."""
    if not config.uses_tls:
        return None

    def read(path: Path | None) -> bytes | None:
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=read(config.tls_root_ca),
        private_key=read(config.tls_client_key),
        certificate_chain=read(config.tls_client_cert),
    )


def balancing_config(config: ClientConfig) -> dict[str, Any]:
    """The service config's load-balancing part: one policy over every address of the target."""
    return {"loadBalancingConfig": [{config.load_balancing: {}}]}


def service_config(config: ClientConfig) -> dict[str, Any]:
    """The gRPC service config: the load-balancing policy. No retryPolicy: the client retries
    itself (``sketchserve.client.retry``), and two layers of retries would multiply the attempts."""
    return balancing_config(config)


def connection_options(config: ClientConfig) -> dict[str, Any]:
    """Keepalive, and retry buffers that let gRPC's transparent retries move any call to another replica."""
    return {
        # gRPC retries a call only while it still holds the request it sent; past its 256 KiB
        # default buffers a large request could not move to another replica. One message per
        # call, at most max_calls_in_flight of them: that is all there is to hold.
        "grpc.per_rpc_retry_buffer_size": config.max_message_bytes,
        "grpc.retry_buffer_size": config.max_message_bytes * config.max_calls_in_flight,
        "grpc.keepalive_time_ms": int(config.keepalive_seconds * MS_PER_S),
        "grpc.keepalive_timeout_ms": int(config.keepalive_timeout_seconds * MS_PER_S),
        "grpc.keepalive_permit_without_calls": 1,
    }


def call_metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the bearer token, when there is one."""
    return () if config.auth_token is None else (("authorization", f"Bearer {config.auth_token}"),)


def channel_options(config: ClientConfig, extra: tuple[tuple[str, Any], ...] = ()) -> list[tuple[str, Any]]:
    """Channel arguments for ``grpc[.aio].insecure_channel``; ``extra`` wins on conflicts.

    Retries are the client's own (``sketchserve.client.retry``): the service config holds no
    retryPolicy, as two layers of retries would multiply the attempts.
    """
    options: dict[str, Any] = {
        "grpc.max_send_message_length": config.max_message_bytes,
        "grpc.max_receive_message_length": config.max_message_bytes,
        "grpc.enable_retries": 1,
        "grpc.service_config": json.dumps(service_config(config)),
        **connection_options(config),
    }
    options.update(dict(extra))
    return list(options.items())
