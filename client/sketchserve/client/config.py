"""Client settings and the gRPC channel options they turn into."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

SERVICE_NAME = "sketch.v1.SketchService"
MIB = 1024 * 1024


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
    # Attempts (first one included) of a call that fails UNAVAILABLE, i.e. while
    # the server warms up, drains or restarts; gRPC caps this at 5.
    retry_attempts: int = 5
    # Backoff before the first retry, doubled each time up to retry_max_backoff:
    # the 5 attempts span about 1.5 s, the time a rolling restart takes to swap.
    retry_initial_backoff: float = 0.1
    retry_max_backoff: float = 2.0
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
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")


def resolve(config: ClientConfig | None, overrides: dict[str, Any]) -> ClientConfig:
    """``config`` (or the defaults) with keyword overrides, e.g. ``timeout=5.0``."""
    base = config or ClientConfig()
    unknown = sorted(set(overrides) - set(base.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown client settings {unknown}; see ClientConfig")
    return replace(base, **overrides)


def _seconds(value: float) -> str:
    """A protobuf Duration in the JSON form the service config takes ("0.1s")."""
    return f"{value:.3f}s"


def service_config(config: ClientConfig) -> dict[str, Any]:
    """The gRPC service config: retry UNAVAILABLE on every method of the service."""
    method_config: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    if config.retry_attempts > 1:
        method_config["retryPolicy"] = {
            "maxAttempts": config.retry_attempts,
            "initialBackoff": _seconds(config.retry_initial_backoff),
            "maxBackoff": _seconds(config.retry_max_backoff),
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return {"methodConfig": [method_config]}


def channel_options(config: ClientConfig, extra: tuple[tuple[str, Any], ...] = ()) -> list[tuple[str, Any]]:
    """Channel arguments for ``grpc[.aio].insecure_channel``; ``extra`` wins on conflicts."""
    options: dict[str, Any] = {
        "grpc.max_send_message_length": config.max_message_bytes,
        "grpc.max_receive_message_length": config.max_message_bytes,
        "grpc.enable_retries": 1,
        "grpc.service_config": json.dumps(service_config(config)),
    }
    options.update(dict(extra))
    return list(options.items())
