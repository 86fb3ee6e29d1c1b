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
from sketchserve.client.retry import Backoff, masked_by_write
from sketchserve.client.types import AssignResult, ClusterList, EncodeResult, ModelInfo, ReconstructResult, ScoreResult


class AsyncSketchClient(ClientBase):
    """Asyncio version of :class:`SketchClient` (same settings, same results).

    Create it inside a running event loop; ``async with`` closes the channel.
    """

    channels = grpc.aio

    async def _run(self, plan: CallPlan[ResultT]) -> ResultT:
        method = getattr(self._stub, plan.method)
        if not plan.streaming:
            return plans.finish(plan, await self._concurrently(plan, method))
        responses: list[Any] = []
        backoff = Backoff(self.config)
        while len(responses) < len(plan.requests):
            start, alone = len(responses), False
            try:
                remaining = iter(plan.requests[start:])
                async for response in method(remaining, **self._call_arguments(plan, start)):
                    responses.append(response)
                    backoff.answered()
                break
            except grpc.RpcError as masked:
                error = masked
            if masked_by_write(error):
                alone = True
                try:
                    responses.append(await self._unary_twin(plan, len(responses)))
                    backoff.answered()
                    continue
                except grpc.RpcError as real:
                    error = real
            wait = backoff.next_wait(error)
            if wait is None:
                raise plans.failed(plan, error, len(responses) if alone else start, alone=alone) from None
            await asyncio.sleep(wait)
        return plans.finish(plan, responses)

    async def _unary_twin(self, plan: CallPlan[Any], index: int) -> Any:
        """Request ``index`` of a streaming plan, sent alone: its answer, or its real status."""
        twin = getattr(self._stub, plan.unary_twin)
        single = CallPlan(plan.unary_twin, plan.requests[index : index + 1], plan.offsets[index : index + 1], list)
        return await twin(plan.requests[index], **self._call_arguments(single))

    async def _concurrently(self, plan: CallPlan[Any], method: Any) -> list[Any]:
        """The plan's unary requests, ``max_calls_in_flight`` at a time, each retried on its own.

        The first failure that is not retried cancels the rest.
        """
        slots = asyncio.Semaphore(self.config.max_calls_in_flight)
        call = self._call_arguments(plan)

        async def one(index: int, request: Any) -> Any:
            backoff = Backoff(self.config)
            async with slots:
                while True:
                    try:
                        return await method(request, **call)
                    except grpc.RpcError as error:
                        wait = backoff.next_wait(error)
                        if wait is None:
                            raise plans.failed(plan, error, index) from None
                    await asyncio.sleep(wait)

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
