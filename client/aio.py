"""The asyncio client: :class:`SketchClient`'s twin over ``grpc.aio``."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from sketchserve.client import plans
from sketchserve.client.base import ClientBase
from sketchserve.client.convert import SketchInput
from sketchserve.client.plans import CallPlan, ResultT, Sampling
from sketchserve.client.types import AssignResult, ClusterList, EncodeResult, ModelInfo, ReconstructResult, ScoreResult


class AsyncSketchClient(ClientBase):
    """Asyncio version of :class:`SketchClient` (same settings, same results).

    Create it inside a running event loop; ``async with`` closes the channel.
    """

    channels = grpc.aio

    async def _run(self, plan: CallPlan[ResultT]) -> ResultT:
        method = getattr(self._stub, plan.method)
        call = self._call_arguments(plan)
        responses: list[Any] = []
        try:
            if plan.streaming:
                async for response in method(iter(plan.requests), **call):
                    responses.append(response)
            else:
                for request in plan.requests:
                    responses.append(await method(request, **call))
        except grpc.RpcError as error:
            raise plans.failed(plan, error, len(responses)) from None
        return plans.finish(plan, responses)

    async def encode(self, sketches: Sequence[SketchInput]) -> EncodeResult:
        return await self._run(plans.encode(sketches, self.config))

    async def assign(self, sketches: Sequence[SketchInput], top_k: int = 1) -> AssignResult:
        return await self._run(plans.assign(sketches, top_k, self.config))

    async def reconstruct(
        self,
        sketches: Sequence[SketchInput] | None = None,
        *,
        latents: Any = None,
        sampling: Sampling = Sampling(),
    ) -> ReconstructResult:
        return await self._run(plans.reconstruct(sketches, latents, sampling, self.config))

    async def score(self, sketches: Sequence[SketchInput]) -> ScoreResult:
        return await self._run(plans.score(sketches, self.config))

    async def model_info(self) -> ModelInfo:
        return await self._run(plans.model_info())

    async def clusters(self, exemplars: int = 0) -> ClusterList:
        return await self._run(plans.list_clusters(exemplars))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncSketchClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
