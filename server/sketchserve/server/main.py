"""``sketchserve serve``: build, start, warm up and drain the gRPC server.

Lifecycle: bind the port with health NOT_SERVING; verify the artifact's
checksums, load it on the device and warm it up (off the event loop), answer one
call of every RPC it serves (``probe.py``); attach it to the servicers
(SketchService and the Open Inference Protocol's ``inference.GRPCInferenceService``,
``sketchserve.server.oip``); only then report SERVING (and write ``--port-file``).
On SIGHUP: hot reload (``reload.py``: the same steps beside the serving model,
then an atomic swap for both servicers; health stays SERVING). On SIGTERM or
SIGINT: health NOT_SERVING, open EncodeStreams take no new requests (they answer
what they accepted, then end UNAVAILABLE "draining", which the client resumes
elsewhere), stop taking new calls, let accepted calls finish within
``--grace-seconds`` (``server.stop(grace)``), stop the batchers, exit 0.

Who may call is decided in ``security`` (TLS, mutual TLS, bearer tokens);
the default address is loopback, and metrics bind the gRPC host unless
``--metrics-host`` says otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sketchserve.pb.sketch.v1 import sketch_pb2_grpc
from sketchserve.server.config import ConfigError, ServerConfig, config_from_args
from sketchserve.server.errors import StatusInterceptor
from sketchserve.server.logs import configure_logging, fields
from sketchserve.server.metrics import MetricsHttp, ServerMetrics
from sketchserve.server.oip import INFERENCE_SERVICE_NAME, InferenceServicer, add_inference_service
from sketchserve.server.reload import Reloader, ReloadOutcome, close_state, warm_state
from sketchserve.server.security import AuthInterceptor, read_tokens, server_credentials
from sketchserve.server.service import SERVICE_NAME, ServingState, SketchServicer

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The overall server's health entry, by the grpc.health.v1 convention.
OVERALL = ""
# The health entries the server reports: overall, and one per served gRPC service.
HEALTH_ENTRIES = (OVERALL, SERVICE_NAME, INFERENCE_SERVICE_NAME)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_USAGE = 2
MS_PER_S = 1000
# Clients ping idle connections (sketchserve.client.config.ClientConfig.keepalive_seconds, 30 s) to notice
# a dead replica; gRPC's server default answers pings more often than every 5 minutes with GOAWAY
# "too_many_pings". Accept them down to this interval, with or without calls in flight.
MIN_CLIENT_PING_INTERVAL_S = 10.0


def _load_state(cfg: ServerConfig, metrics: ServerMetrics, model_dir: Path) -> ServingState:
    """Verify, load and warm up the model in ``model_dir``, batchers not started (blocking; a worker thread)."""
    import torch

    from sketchserve.runtime import SketchRuntime
    from sketchserve.server.engine import SketchEngine

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    runtime = SketchRuntime.load(model_dir, cfg.device, trusted_key=cfg.trusted_key)
    if cfg.warmup:
        runtime.warm_up(tuple(sorted({1, cfg.max_batch_size})))
    engine = SketchEngine(runtime, cfg, observer=metrics)
    return ServingState(
        engine=engine,
        manifest=runtime.manifest,
        clusters=runtime.clusters,
        max_sketches_per_request=cfg.max_sketches_per_request,
        stream_window=cfg.stream_window,
    )


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


@dataclass
class BuiltServer:
    """A bound, not yet started server and what tests and ``main`` need to drive it."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: SketchServicer
    metrics: ServerMetrics
    inference: InferenceServicer
    state: ServingState | None = None
    metrics_http: MetricsHttp | None = None
    stopped: bool = field(default=False)
    reloader: Reloader = field(init=False)

    def __post_init__(self) -> None:
        self.reloader = Reloader(
            self.config.model_dir,
            functools.partial(_load_state, self.config, self.metrics),
            self.attach,
            self.metrics.on_reload,
        )

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_http is None else self.metrics_http.port

    async def start(self) -> None:
        """Start listening (NOT_SERVING), load and warm the model, then report SERVING."""
        await self.listen()
        await self.load()

    async def listen(self) -> None:
        """Accept calls with health NOT_SERVING; SketchService calls answer UNAVAILABLE until :meth:`load`."""
        for service in HEALTH_ENTRIES:
            await self.health.set(service, NOT_SERVING)
        await self.server.start()
        if self.config.metrics_port >= 0:
            self.metrics_http = self.metrics.serve_http(self.config.metrics_port, metrics_address(self.config))
        metrics_port = "off" if self.metrics_port is None else self.metrics_port
        log.info(
            "listening",
            extra=fields(
                host=self.config.host,
                port=self.port,
                metrics_port=metrics_port,
                tls=tls_mode(self.config),
                tokens=self.config.auth_tokens_file is not None,
                reflection=self.config.reflection,
            ),
        )

    async def load(self) -> None:
        """Verify, load and warm the model off the event loop, then report SERVING and take reload requests."""
        state = await warm_state(self.reloader.load, self.config.model_dir.resolve())
        self.attach(state)
        spec = state.engine.spec
        for service in HEALTH_ENTRIES:
            await self.health.set(service, SERVING)
        if self.config.port_file is not None:
            _write_port_file(self.config.port_file, self.port)
        self.reloader.start()
        log.info(
            "serving",
            extra=fields(
                port=self.port,
                model=spec.name,
                version=spec.version,
                device=spec.device,
                max_batch_size=self.config.max_batch_size,
                max_delay_ms=self.config.max_delay_ms,
                torch_threads=self.config.torch_threads,
            ),
        )

    def attach(self, state: ServingState) -> ServingState | None:
        """Make a warm ``state`` the serving one of both servicers (new calls, metrics, GetModelInfo, the OIP's
        model metadata); returns the replaced state.

        Calls already running keep the state they read: every handler of both servicers reads it
        once per call, recorded in ``ServingState.calls``. A further servicer is attached here too."""
        previous, self.state = self.state, state
        self.servicer.attach(state)
        self.inference.attach(state)
        for batcher in state.engine.batchers:
            self.metrics.watch_queue(batcher.name, batcher.depth)
        spec = state.engine.spec
        self.metrics.set_model(name=spec.name, version=spec.version, device=spec.device)
        return previous

    async def reload(self) -> ReloadOutcome:
        """Hot reload now (what SIGHUP asks for): the new model serves, or the old one keeps serving."""
        return await self.reloader.reload()

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING, refuse new calls, finish accepted ones within ``grace`` seconds, stop batchers."""
        if self.stopped:
            return
        self.stopped = True
        await self.reloader.cancel()
        await self.health.enter_graceful_shutdown()
        self.inference.drain()
        self.servicer.drain()
        log.info("draining", extra=fields(grace_seconds=grace))
        await self.server.stop(grace)
        await self.reloader.wait_retired()
        if self.state is not None:
            await close_state(self.state)
        if self.metrics_http is not None:
            self.metrics_http.close()
        log.info("stopped")


def server_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    """The grpc server's channel arguments: message size, connection age, client keepalive policy."""
    options = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_CLIENT_PING_INTERVAL_S * MS_PER_S)),
    ]
    if cfg.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * MS_PER_S)),
            # An aged-out connection's calls get the drain's grace to finish, as on SIGTERM.
            ("grpc.max_connection_age_grace_ms", int(cfg.grace_seconds * MS_PER_S)),
        ]
    return options


def metrics_address(cfg: ServerConfig) -> str:
    """The metrics HTTP address: ``--metrics-host``, else ``--host``, without IPv6 brackets."""
    return (cfg.metrics_host or cfg.host).strip("[]")


def tls_mode(cfg: ServerConfig) -> str:
    if cfg.tls_cert is None:
        return "off"
    return "mutual" if cfg.tls_client_ca is not None else "server"


def build_server(cfg: ServerConfig) -> BuiltServer:
    """Create the grpc.aio server with every service and bind its port (call inside the event loop).

    Raises ConfigError when a TLS or token file cannot be read, OSError when the port cannot be bound.
    """
    metrics = ServerMetrics()
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if cfg.auth_tokens_file is not None:
        grants = read_tokens(cfg.auth_tokens_file)
        interceptors.append(AuthInterceptor(grants, metrics.on_call, exempt_health=not cfg.auth_health))
    interceptors.append(StatusInterceptor(metrics.on_call))
    credentials = server_credentials(cfg)
    server = grpc.aio.server(interceptors=interceptors, options=server_options(cfg))
    servicer = SketchServicer()
    sketch_pb2_grpc.add_SketchServiceServicer_to_server(servicer, server)
    inference = InferenceServicer()
    add_inference_service(inference, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if cfg.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, INFERENCE_SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
    address = f"{cfg.host}:{cfg.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return BuiltServer(cfg, server, port, health_servicer, servicer, metrics, inference)


async def serve(cfg: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean drain, 1 when startup fails."""
    try:
        built = build_server(cfg)
    except (OSError, ConfigError) as exc:
        log.error("startup failed", extra=fields(error=str(exc)))
        return EXIT_STARTUP_FAILED
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, built.reloader.request)
    try:
        await built.start()
    except Exception as exc:  # noqa: BLE001 - any startup failure is reported in one line, exit 1
        log.error("startup failed", extra=fields(error=f"{type(exc).__name__}: {exc}"))
        log.debug("startup failure traceback", exc_info=exc)
        await built.stop(0)
        return EXIT_STARTUP_FAILED
    await stop_requested.wait()
    await built.stop(cfg.grace_seconds)
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    try:
        cfg = config_from_args(argv)
    except ConfigError as exc:
        sys.stderr.write(f"sketchserve serve: {exc}\n")
        return EXIT_USAGE
    configure_logging(cfg.log_format, cfg.log_level)
    return asyncio.run(serve(cfg))
