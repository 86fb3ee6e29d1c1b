"""A `sketchserve serve` subprocess on 127.0.0.1 for bench_serving.py, and its metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # load, verify and warm up a model on a busy 2-core machine
WATCH_SLICE_S = 1.0  # how soon an exited server process is noticed while waiting
STOP_TIMEOUT_S = 30.0  # the server's own grace period is shorter
METRICS_TIMEOUT_S = 5.0
LOG_TAIL_CHARS = 2000
BATCH_SIZE_METRIC = "sketchserve_batch_size"
BATCH_CPU_METRIC = "sketchserve_batch_cpu_seconds"
REQUESTS_METRIC = "sketchserve_requests"
MODEL_BATCHERS = ("encode", "decode")  # the batchers whose time is the model's (preprocess is the other one)
PREPROCESS_BATCHER = "preprocess"
# /proc/PID/stat: utime and stime, in clock ticks, are fields 14 and 15 (1-based), i.e. 11 and 12 after the
# ") " that ends the command name.
STAT_UTIME_AFTER_COMM = 11
STAT_STIME_AFTER_COMM = 12


@dataclass(frozen=True)
class ServerSnapshot:
    """Cumulative counters of a server process at one moment."""

    cpu_s: float  # process CPU time, all threads (user + system)
    calls: float  # RPCs finished (any status)
    model_s: float  # CPU time inside model batches (encode and decode batchers)
    preprocess_s: float  # CPU time inside preprocessing batches
    batches: dict[str, BatchTotals]  # batch-size histogram totals, by batcher


@dataclass(frozen=True)
class CpuPerCall:
    """Server CPU per finished call over an interval, split by where it went (ms)."""

    total_ms: float
    model_ms: float
    preprocess_ms: float

    @property
    def outside_model_ms(self) -> float:
        """Everything but the model: gRPC, protobuf conversion and checks, preprocessing, hand-offs."""
        return self.total_ms - self.model_ms

    @classmethod
    def between(cls, before: ServerSnapshot, after: ServerSnapshot) -> CpuPerCall:
        calls = after.calls - before.calls
        if calls <= 0:
            return cls(float("nan"), float("nan"), float("nan"))
        per_call = 1000.0 / calls
        return cls(
            (after.cpu_s - before.cpu_s) * per_call,
            (after.model_s - before.model_s) * per_call,
            (after.preprocess_s - before.preprocess_s) * per_call,
        )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc; NaN where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = int(fields[STAT_UTIME_AFTER_COMM]) + int(fields[STAT_STIME_AFTER_COMM])
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port the OS considers free on 127.0.0.1 now (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def read_metric(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the Prometheus endpoint on 127.0.0.1:``port`` (0.0 when absent)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=METRICS_TIMEOUT_S) as response:
        text = response.read().decode("utf-8")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return 0.0


def serve_command(model_dir: Path, args: list[str], log_level: str = "WARNING") -> list[str]:
    """``sketchserve serve`` of ``model_dir`` on 127.0.0.1 with ``args``, as this tree's Python runs it."""
    cli = [sys.executable, "-m", "sketchserve.cli", "serve"]
    return [*cli, "--model", str(model_dir), "--host", HOST, "--log-level", log_level, *args]


@dataclass(frozen=True)
class BatchTotals:
    """Cumulative batch-size histogram sums of one batcher: items and batches so far."""

    items: float
    batches: float

    def mean_since(self, before: BatchTotals) -> float:
        batches = self.batches - before.batches
        return (self.items - before.items) / batches if batches > 0 else float("nan")


class ServerProcess:
    """Starts ``sketchserve serve`` with ``extra_args``; :meth:`wait_serving` waits until it is up.

    A context manager that stops the process with SIGTERM (servers start in parallel,
    each loading torch and the model, then are measured one at a time).
    """

    def __init__(self, model_dir: Path, extra_args: list[str]) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"{HOST}:{self.port}"
        self._log = tempfile.TemporaryFile(mode="w+")
        command = serve_command(
            model_dir, ["--port", str(self.port), "--metrics-port", str(self.metrics_port), *extra_args]
        )
        self.command = command
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def _log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-LOG_TAIL_CHARS:]

    def _watch_until_serving(self, stub: health_pb2_grpc.HealthStub) -> bool:
        """Follow the health Watch stream for up to WATCH_SLICE_S; True once SERVING."""
        request = health_pb2.HealthCheckRequest(service="")
        try:
            for reply in stub.Watch(request, timeout=WATCH_SLICE_S, wait_for_ready=True):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RuntimeError(f"server health: {error.code().name}:\n{self._log_tail()}") from None
        return False

    def wait_serving(self) -> None:
        """Watch the health service in slices, so a server that exits is noticed at once."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"server exited with {self._process.returncode}:\n{self._log_tail()}")
                if self._watch_until_serving(stub):
                    return
        raise RuntimeError(f"server not SERVING after {START_TIMEOUT_S} s:\n{self._log_tail()}")

    @property
    def pid(self) -> int:
        return self._process.pid

    def metric(self, name: str, **labels: str) -> float:
        return read_metric(self.metrics_port, name, labels)

    def _metrics(self) -> str:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:
            return str(response.read().decode("utf-8"))

    def snapshot(self) -> ServerSnapshot:
        """CPU time first, then the metrics (the scrape itself costs the server a little CPU after the reading)."""
        cpu = process_cpu_seconds(self._process.pid)
        calls = model = preprocess = 0.0
        sizes: dict[str, dict[str, float]] = {}  # batcher -> {"_sum": items, "_count": batches}
        for family in text_string_to_metric_families(self._metrics()):
            for sample in family.samples:
                batcher = sample.labels.get("batcher", "")
                if family.name == REQUESTS_METRIC and sample.name == f"{REQUESTS_METRIC}_total":
                    calls += sample.value
                elif family.name == BATCH_CPU_METRIC and sample.name == f"{BATCH_CPU_METRIC}_total":
                    model += sample.value if batcher in MODEL_BATCHERS else 0.0
                    preprocess += sample.value if batcher == PREPROCESS_BATCHER else 0.0
                elif family.name == BATCH_SIZE_METRIC:
                    sizes.setdefault(batcher, {})[sample.name[len(BATCH_SIZE_METRIC) :]] = sample.value
        batches = {b: BatchTotals(items=v.get("_sum", 0.0), batches=v.get("_count", 0.0)) for b, v in sizes.items()}
        return ServerSnapshot(cpu, calls, model, preprocess, batches)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
