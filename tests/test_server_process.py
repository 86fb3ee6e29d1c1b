"""`sketchserve serve` as a process: --port-file, --log-format json, and a call that cannot
finish is cut when --grace-seconds run out, after which the server still exits 0.
Synchronised on the server's own log lines, read from its stderr pipe."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from server_fixtures import CALL_TIMEOUT_S, random_sketches

from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc

pytestmark = pytest.mark.timeout(120)

# The fields every JSON log line carries (sketchserve.server.logs).
LOG_FIELDS = {"time", "level", "logger", "event"}
GRACE_SECONDS = 1.0
# Batches wait this long for company, far beyond the test: a lone call cannot finish.
NEVER_MS = 600_000


class JsonLog:
    """The server's stderr, one JSON object per line, each checked for the documented fields."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.lines: list[dict[str, Any]] = []

    def _read(self) -> Iterator[dict[str, Any]]:
        for text in self._stream:
            line = json.loads(text)
            assert isinstance(line, dict) and LOG_FIELDS <= set(line), text
            self.lines.append(line)
            yield line

    def until(self, event: str, **fields: Any) -> dict[str, Any]:
        """Read lines until one has ``event`` and ``fields``; that line."""
        for line in self._read():
            if line["event"] == event and all(line.get(k) == v for k, v in fields.items()):
                return line
        raise AssertionError(f"server log ended before event {event!r} {fields}")

    def rest(self) -> list[dict[str, Any]]:
        return list(self._read())


@pytest.mark.slow
def test_port_file_json_logs_and_a_call_cut_at_the_grace_period(tiny_model: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "run" / "port"
    port_file.parent.mkdir()
    command = [sys.executable, "-m", "sketchserve.cli", "serve", "--model", str(tiny_model)]
    command += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--torch-threads", "1"]
    command += ["--max-delay-ms", str(NEVER_MS), "--grace-seconds", str(GRACE_SECONDS), "--port-file", str(port_file)]
    command += ["--log-format", "json", "--log-level", "DEBUG"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    log = JsonLog(proc.stderr)
    try:
        listening = log.until("listening")
        serving = log.until("serving")
        assert serving["port"] == listening["port"] > 0 and serving["level"] == "info"
        assert port_file.read_text() == f"{serving['port']}\n"
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub = sketch_pb2_grpc.SketchServiceStub(channel)
            request = sketch_pb2.EncodeRequest(sketches=random_sketches(1, 1))
            stuck = stub.Encode.future(request, timeout=CALL_TIMEOUT_S)
            log.until("call accepted", method="Encode")
            proc.send_signal(signal.SIGTERM)
            assert log.until("draining")["grace_seconds"] == GRACE_SECONDS
            with pytest.raises(grpc.RpcError) as caught:
                stuck.result(timeout=CALL_TIMEOUT_S)
            assert caught.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
        log.until("stopped")
        assert proc.wait(timeout=CALL_TIMEOUT_S) == 0
        log.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
