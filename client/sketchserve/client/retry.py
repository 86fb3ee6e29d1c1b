"""Riding out a server restart: which failures are retried, and how long to wait between attempts.

Every SketchService method is a pure function of its request (Reconstruct's
sampling is seeded), so a request that failed UNAVAILABLE (the server warming
up, draining, restarting, or unreachable) is simply sent again. Bulk calls
resume: a unary call's answered requests are kept and the next one is retried;
a stream is reopened with the requests not yet answered (responses come in
request order, so the first ``n`` answered are exactly the first ``n`` sent).
Every result arrives exactly once and in order. When grpc.aio masks a stream's
status (:func:`masked_by_write`), the asyncio client sends the first unanswered
request alone through the stream's unary twin (Encode for EncodeStream) to
learn the real status, then carries on.

Waits grow ``retry_initial_backoff * 2**k`` up to ``retry_max_backoff``, each
drawn from [half, all] of that; a call gives up after ``retry_attempts``
attempts of one request or when the failures since its last answer span
``retry_budget`` seconds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from sketchserve.client.config import ClientConfig

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# What grpc.aio reports when it writes a stream's next request after the call ended (the
# server answered with an error, or died): it replaces the real status with this INTERNAL.
# The server's own INTERNAL message is different ("internal error; the server logged the details").
AIO_WRITE_FAILED = "Internal error from Core"
# Each wait is drawn from [JITTER_LOW, 1] times the backoff.
JITTER_LOW = 0.5


def status_code(error: grpc.RpcError) -> grpc.StatusCode:
    """The code of a sync or asyncio RPC error (UNKNOWN when it carries none)."""
    code_of = getattr(error, "code", None)
    return code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    details_of = getattr(error, "details", None)
    return str(details_of()) if callable(details_of) else str(error)


def masked_by_write(error: grpc.RpcError) -> bool:
    """grpc.aio hid a stream's real status behind its failed write (see AIO_WRITE_FAILED)."""
    return status_code(error) == grpc.StatusCode.INTERNAL and _details(error) == AIO_WRITE_FAILED


@dataclass
class Backoff:
    """The retry schedule of one client call; :meth:`answered` after each response restarts it."""

    config: ClientConfig
    clock: Callable[[], float] = time.monotonic
    draw: Callable[[float, float], float] = random.uniform
    attempts: int = 1
    first_failure: float | None = field(default=None)

    def answered(self) -> None:
        """A response arrived: the outage (if any) is over."""
        self.attempts = 1
        self.first_failure = None

    def next_wait(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before sending again, or None: give up and raise ``error``."""
        if status_code(error) not in RETRYABLE or self.attempts >= self.config.retry_attempts:
            return None
        now = self.clock()
        if self.first_failure is None:
            self.first_failure = now
        backoff = min(self.config.retry_initial_backoff * 2 ** (self.attempts - 1), self.config.retry_max_backoff)
        wait = self.draw(JITTER_LOW * backoff, backoff)
        if now + wait - self.first_failure > self.config.retry_budget:
            return None
        self.attempts += 1
        log.info(
            "retrying after %s (attempt %d, waiting %.2f s): %s",
            status_code(error).name,
            self.attempts,
            wait,
            _details(error),
        )
        return wait
