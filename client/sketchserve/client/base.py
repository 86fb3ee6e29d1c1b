"""What the blocking and the asyncio client share: settings, channel, stub."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import grpc

from sketchserve.client.config import ClientConfig, call_metadata, channel_credentials, channel_options, resolve
from sketchserve.client.plans import CallPlan
from sketchserve.pb.sketch.v1 import sketch_pb2_grpc


class ClientBase:
    """Opens the channel with ``channels`` (the ``grpc`` or ``grpc.aio`` module).

    Keyword settings override ``config`` (see :class:`ClientConfig`, e.g.
    ``timeout=5.0``); ``options`` are extra gRPC channel arguments;
    ``credentials`` makes a TLS channel.
    """

    channels: ModuleType = grpc

    def __init__(
        self,
        target: str,
        config: ClientConfig | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        **overrides: Any,
    ) -> None:
        self.config = resolve(config, overrides)
        args = channel_options(self.config, tuple(options))
        credentials = credentials or channel_credentials(self.config)
        if credentials is None:
            self._channel = self.channels.insecure_channel(target, args)
        else:
            self._channel = self.channels.secure_channel(target, credentials, args)
        self._stub = sketch_pb2_grpc.SketchServiceStub(self._channel)

    def _call_arguments(self, plan: CallPlan[Any], answered: int = 0) -> dict[str, Any]:
        """Per-call keywords: a stream's deadline covers all its requests not yet ``answered``."""
        requests = len(plan.requests) - answered if plan.streaming else 1
        return {
            "timeout": self.config.timeout * requests,
            "wait_for_ready": self.config.wait_for_ready,
            "metadata": call_metadata(self.config),
        }
