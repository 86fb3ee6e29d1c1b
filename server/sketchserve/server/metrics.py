"""Prometheus metrics of one server, in its own CollectorRegistry (tests start many servers)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

# Request latency buckets (seconds): sub-millisecond encodes up to multi-second decodes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Batch sizes: powers of two up to the largest batch a config is likely to allow.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class MetricsHttp:
    server: WSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class ServerMetrics:
    """Requests by method and code, latencies, batch sizes, queue depths, drops, model info, reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sketchserve_requests",
            "RPCs finished, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sketchserve_request_seconds",
            "RPC latency in the server",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sketchserve_batch_size",
            "items per model call",
            ["batcher"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "sketchserve_batch_seconds",
            "model time per batch",
            ["batcher"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # CPU time of the batch functions (the worker thread's, with torch's default of one intra-op thread
        # that is the model's): with process CPU, it splits a call's cost into model and request path.
        self.batch_cpu = Counter(
            "sketchserve_batch_cpu_seconds",
            "CPU time of the batch function on the batcher's worker thread",
            ["batcher"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sketchserve_queue_depth",
            "items waiting for a batch",
            ["batcher"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "sketchserve_dropped_items",
            "queued items dropped before compute",
            ["batcher", "reason"],
            registry=self.registry,
        )
        self.simplified_further = Counter(
            "sketchserve_sketches_simplified_further",
            "sketches longer than the model's max_seq_len after preprocessing, simplified further to fit",
            registry=self.registry,
        )
        self.model = Info("sketchserve_model", "the served model", registry=self.registry)
        self.reloads = Counter(
            "sketchserve_reloads",
            "hot reloads (SIGHUP), by result: reloaded or refused",
            ["result"],
            registry=self.registry,
        )

    def on_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.latency.labels(method=method).observe(seconds)

    def on_batch(self, batcher: str, size: int, seconds: float, cpu_seconds: float) -> None:
        self.batch_size.labels(batcher=batcher).observe(size)
        self.batch_seconds.labels(batcher=batcher).observe(seconds)
        self.batch_cpu.labels(batcher=batcher).inc(cpu_seconds)

    def on_dropped(self, batcher: str, reason: str, count: int) -> None:
        self.dropped.labels(batcher=batcher, reason=reason).inc(count)

    def on_simplified_further(self, count: int) -> None:
        self.simplified_further.inc(count)

    def watch_queue(self, batcher: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(batcher=batcher).set_function(depth)

    def on_reload(self, result: str) -> None:
        self.reloads.labels(result=result).inc()

    def set_model(self, *, name: str, version: str, device: str) -> None:
        self.model.info({"name": name, "version": version, "device": device})

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's value (0.0 when absent), e.g. ``value("sketchserve_batch_size_count", {...})``."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found

    def serve_http(self, port: int, addr: str) -> MetricsHttp:
        """Serve ``/metrics`` on ``addr:port`` (the caller decides the address: no all-interfaces default).

        Raises OSError naming the endpoint when it cannot bind (e.g. the port is taken)."""
        try:
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(
                exc.errno, f"cannot bind the metrics endpoint {addr}:{port} ({reason}); see --metrics-port"
            ) from None
        return MetricsHttp(server, thread, server.server_port)
