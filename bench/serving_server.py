"""A `sketchserve serve` subprocess on 127.0.0.1 for bench_serving.py, and its metrics."""

from __future__ import annotations

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


def free_port() -> int:
    """A port the OS considers free on 127.0.0.1 now (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


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
        command = [
            sys.executable,
            "-m",
            "sketchserve.cli",
            "serve",
            "--model",
            str(model_dir),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            "WARNING",
            *extra_args,
        ]
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

    def batch_totals(self, batcher: str) -> BatchTotals:
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:
            text = response.read().decode("utf-8")
        values = {"_sum": 0.0, "_count": 0.0}
        for family in text_string_to_metric_families(text):
            if family.name != BATCH_SIZE_METRIC:
                continue
            for sample in family.samples:
                suffix = sample.name[len(BATCH_SIZE_METRIC) :]
                if sample.labels.get("batcher") == batcher and suffix in values:
                    values[suffix] = sample.value
        return BatchTotals(items=values["_sum"], batches=values["_count"])

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
