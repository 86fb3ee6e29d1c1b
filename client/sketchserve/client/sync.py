"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from sketchserve.client import plans
from sketchserve.client.base import ClientBase
from sketchserve.client.convert import SketchInput
from sketchserve.client.plans import CallPlan, ResultT, Sampling
from sketchserve.client.retry import Backoff
from sketchserve.client.types import AssignResult, ClusterList, EncodeResult, ModelInfo, ReconstructResult, ScoreResult


class SketchClient(ClientBase):
    """Calls a sketchserve server; a context manager that closes its channel.

    ``SketchClient("localhost:50051", timeout=5.0)``: keyword settings override
    ``config`` (see :class:`ClientConfig`); ``options`` are extra gRPC channel
    arguments; ``credentials`` makes a TLS channel. Calls ride out a server
    restart (see ``sketchserve.client.retry``). Failed calls raise
    :class:`SketchServiceError`; malformed input raises ``ValueError``.
    """

    channels = grpc

    def _run(self, plan: CallPlan[ResultT]) -> ResultT:
        """Send the plan's requests; after UNAVAILABLE wait and resume from the first unanswered one."""
        method = getattr(self._stub, plan.method)
        responses: list[Any] = []
        backoff = Backoff(self.config)
        while len(responses) < len(plan.requests):
            start = len(responses)
            try:
                if plan.streaming:
                    for response in method(iter(plan.requests[start:]), **self._call_arguments(plan, start)):
                        responses.append(response)
                        backoff.answered()
                    break
                responses.append(method(plan.requests[len(responses)], **self._call_arguments(plan)))
                backoff.answered()
            except grpc.RpcError as error:
                wait = backoff.next_wait(error)
                if wait is None:
                    raise plans.failed(plan, error, start) from None
                time.sleep(wait)  # the backoff: nothing to wait on while the server is away
        return plans.finish(plan, responses)

    def encode(self, sketches: Sequence[SketchInput]) -> EncodeResult:
        """Latent codes ``mu`` and ``sigma`` of each sketch, in order."""
        return self._run(plans.encode(sketches, self.config))

    def assign(self, sketches: Sequence[SketchInput], top_k: int = 1) -> AssignResult:
        """Nearest stored cluster of each sketch, and its ``top_k`` nearest."""
        return self._run(plans.assign(sketches, top_k, self.config))

    def reconstruct(
        self,
        sketches: Sequence[SketchInput] | None = None,
        *,
        latents: Any = None,
        sampling: Sampling = Sampling(),
    ) -> ReconstructResult:
        """Redraw each sketch, or decode each row of ``latents`` (N, latent_size)."""
        return self._run(plans.reconstruct(sketches, latents, sampling, self.config))

    def score(self, sketches: Sequence[SketchInput]) -> ScoreResult:
        """Reconstruction NLL and KL of each sketch."""
        return self._run(plans.score(sketches, self.config))

    def model_info(self) -> ModelInfo:
        return self._run(plans.model_info())

    def clusters(self, exemplars: int = 0) -> ClusterList:
        """The stored clusters, each with up to ``exemplars`` member drawings."""
        return self._run(plans.list_clusters(exemplars))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SketchClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
