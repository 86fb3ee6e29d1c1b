"""Several ``sketchserve serve`` subprocesses on 127.0.0.1, as replicas behind one client target.

Each replica binds port 0 and a free metrics port and logs at DEBUG to a pipe;
a reader thread follows the log, so a test waits on events (SERVING, the n-th
accepted call, exit) instead of the clock. ``metric`` reads the replica's own
Prometheus endpoint, as a scraper would.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from serving_server import HOST, read_metric, serve_command

START_TIMEOUT_S = 120.0  # import torch, verify, load and warm the model on a busy 2-core box
STOP_TIMEOUT_S = 60.0  # above the replicas' --grace-seconds
LOG_TAIL_LINES = 40
LISTENING = re.compile(r"event=listening\b.*?\bport=(\d+) metrics_port=(\d+)")
SERVING = re.compile(r"event=serving port=\d+")
ACCEPTED = re.compile(r"event=\"call accepted\" method=(\w+)")


class Replica:
    """One server process; ``target`` once :meth:`wait_serving` returned."""

    def __init__(self, model_dir: Path, extra_args: Sequence[str] = ()) -> None:
        ports = ["--port", "0", "--metrics-port", "0", "--torch-threads", "1"]
        command = serve_command(model_dir, [*ports, *extra_args], log_level="DEBUG")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = 0
        self.metrics_port = 0
        self.serving = threading.Event()
        self.ended = threading.Event()
        self._accepted: dict[str, int] = {}
        self._accepted_changed = threading.Condition()
        self._tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._reader = threading.Thread(target=self._follow_log, name="replica-log", daemon=True)
        self._reader.start()

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def _follow_log(self) -> None:
        stream = self.process.stderr
        if stream is None:
            raise RuntimeError("replica started without a log pipe")
        for line in stream:
            self._tail.append(line)
            if listening := LISTENING.search(line):
                self.port, self.metrics_port = int(listening.group(1)), int(listening.group(2))
            elif SERVING.search(line):
                self.serving.set()
            elif accepted := ACCEPTED.search(line):
                with self._accepted_changed:
                    method = accepted.group(1)
                    self._accepted[method] = self._accepted.get(method, 0) + 1
                    self._accepted_changed.notify_all()
        self.ended.set()
        with self._accepted_changed:
            self._accepted_changed.notify_all()

    def log_tail(self) -> str:
        return "".join(self._tail)

    def wait_serving(self) -> None:
        if not self.serving.wait(START_TIMEOUT_S):
            raise RuntimeError(f"replica not SERVING after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def wait_accepted(self, method: str, count: int, timeout: float = START_TIMEOUT_S) -> None:
        """Until the replica has accepted ``count`` calls of ``method`` (its DEBUG log says so)."""
        with self._accepted_changed:
            reached = self._accepted_changed.wait_for(
                lambda: self._accepted.get(method, 0) >= count or self.ended.is_set(), timeout
            )
        if not reached or self._accepted.get(method, 0) < count:
            raise RuntimeError(f"replica accepted fewer than {count} {method} calls:\n{self.log_tail()}")

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the replica's /metrics (0.0 when absent), as a scraper reads it."""
        return read_metric(self.metrics_port, name, labels)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait_exit(self) -> int:
        code = self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.wait_exit()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(STOP_TIMEOUT_S)


def multi_target(replicas: Sequence[Replica]) -> str:
    """gRPC's own list syntax: ``ipv4:127.0.0.1:5001,127.0.0.1:5002``."""
    return "ipv4:" + ",".join(r.target for r in replicas)


@contextmanager
def replicas(model_dir: Path, count: int, extra_args: Sequence[str] = ()) -> Iterator[list[Replica]]:
    """``count`` replicas started together (they load in parallel), SERVING, stopped on exit."""
    with ExitStack() as stack:
        started = []
        for _ in range(count):
            replica = Replica(model_dir, extra_args)
            stack.callback(replica.stop)
            started.append(replica)
        for replica in started:
            replica.wait_serving()
        yield started
