"""The asyncio client: :class:`SketchClient`'s twin over ``grpc.aio``."""

from __future__ import annotations

import asyncio
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
        if not plan.streaming:
            return plans.finish(plan, await self._concurrently(plan, method, call))
        responses: list[Any] = []
        try:
            async for response in method(iter(plan.requests), **call):
                responses.append(response)
        except grpc.RpcError as error:
            raise plans.failed(plan, error, len(responses)) from None
        return plans.finish(plan, responses)

    async def _concurrently(self, plan: CallPlan[Any], method: Any, call: dict[str, Any]) -> list[Any]:
        """The plan's unary requests, ``max_calls_in_flight`` at a time; the first failure cancels the rest."""
        slots = asyncio.Semaphore(self.config.max_calls_in_flight)

        async def one(index: int, request: Any) -> Any:
            async with slots:
                try:
                    return await method(request, **call)
                except grpc.RpcError as error:
                    raise plans.failed(plan, error, index) from None

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(plan.requests)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

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
