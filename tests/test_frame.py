"""Issue 12's papercuts on the server's edges: drawings come back in the canonical frame, and a taken metrics
port is named when the server cannot start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches

from sketchserve.pb.sketch.v1 import sketch_pb2

STARTUP_TIMEOUT_S = 120  # the subprocess loads torch and the model before it gives up


def test_reconstructions_and_exemplars_are_in_the_canonical_frame(clustered_server: RunningServer) -> None:
    """Top-left at (0, 0): no negative coordinates (the decoder's drawings used to start at the origin)."""
    stub = clustered_server.stub
    request = sketch_pb2.ReconstructRequest(sketches=random_sketches(seed=11, count=8), temperature=0.7, seed=4)
    drawn = list(stub.Reconstruct(request, timeout=CALL_TIMEOUT_S).sketches)
    clusters = stub.ListClusters(sketch_pb2.ListClustersRequest(exemplars=3), timeout=CALL_TIMEOUT_S).clusters
    drawn += [e for c in clusters for e in c.exemplars] + [c.prototype for c in clusters if c.prototype.strokes]
    drawn = [s for s in drawn if s.strokes]
    assert drawn
    for sketch in drawn:
        xs = np.concatenate([np.asarray(s.x) for s in sketch.strokes])
        ys = np.concatenate([np.asarray(s.y) for s in sketch.strokes])
        assert xs.min() == 0.0 and ys.min() == 0.0


def test_a_taken_metrics_port_is_named(tiny_model: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "sketchserve.cli", "serve", "--model", str(tiny_model), "--port", "0"]
        command += ["--host", "127.0.0.1", "--metrics-port", str(port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"cannot bind the metrics endpoint 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
