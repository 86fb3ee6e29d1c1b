"""Real sketchserve servers for tests: a tiny random artifact, served on port 0.

``running_server(cfg)`` runs ``build_server(cfg)`` on its own event loop in a
background thread; tests talk to it through ordinary synchronous gRPC channels.
Import the fixtures into a test module with ``from tests.server_fixtures import ...``
or list this module in ``pytest_plugins``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import torch

from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.config import ServerConfig
from sketchserve.server.main import BuiltServer, build_server

T = TypeVar("T")

# Generous bounds for a loaded 2-core CI box; they only stop a wedged test.
START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 60.0
# Shared-server settings: small limits so the limit errors are cheap to provoke.
SHARED_MAX_SKETCHES = 16
SHARED_MAX_MESSAGE_BYTES = 64 * 1024
SHARED_MAX_BATCH = 8
# Long enough that concurrent calls coalesce even on a busy CI machine, short enough to keep tests fast.
SHARED_MAX_DELAY_MS = 10.0
TEST_CLUSTERS = 3


def server_config(model_dir: Path, **overrides: Any) -> ServerConfig:
    """A config for tests: loopback, port 0, no metrics HTTP unless asked, one torch thread."""
    base = ServerConfig(
        model_dir=Path(model_dir),
        host="127.0.0.1",
        port=0,
        device="cpu",
        metrics_port=-1,
        torch_threads=1,
        max_batch_size=SHARED_MAX_BATCH,
        max_delay_ms=SHARED_MAX_DELAY_MS,
        max_queue=64,
        max_sketches_per_request=SHARED_MAX_SKETCHES,
        max_message_bytes=SHARED_MAX_MESSAGE_BYTES,
        grace_seconds=5.0,
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class RunningServer:
    built: BuiltServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    channel: grpc.Channel

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.built.port}"

    @property
    def stub(self) -> sketch_pb2_grpc.SketchServiceStub:
        return sketch_pb2_grpc.SketchServiceStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT_S) -> T:
        """Run a coroutine on the server's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def metric(self, name: str, **labels: str) -> float:
        return self.built.metrics.value(name, labels)


async def _build(cfg: ServerConfig) -> BuiltServer:
    return build_server(cfg)


@contextmanager
def running_server(cfg: ServerConfig, *, load: bool = True) -> Iterator[RunningServer]:
    """A started server (listening; loaded and SERVING unless ``load=False``), stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    built = asyncio.run_coroutine_threadsafe(_build(cfg), loop).result(START_TIMEOUT_S)
    channel = grpc.insecure_channel(f"127.0.0.1:{built.port}")
    server = RunningServer(built, loop, thread, channel)
    try:
        server.run(built.listen())
        if load:
            server.run(built.load())
        yield server
    finally:
        channel.close()
        server.run(built.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
        loop.close()


def add_test_clusters(model_dir: Path, latent_size: int, seed: int = 0) -> None:
    """Write a small clusters.json (random centroids, two exemplars each) and refresh the checksums."""
    from sketchserve.artifact import ENCODER_FILE, read_manifest, sha256_file, write_manifest

    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(TEST_CLUSTERS, latent_size)).round(4)
    exemplars = [[[[3 * c + 1, 2, 0], [4, -5, 1]], [[c + 2, 7, 1]]] for c in range(TEST_CLUSTERS)]
    document = {
        "encoder_sha256": sha256_file(model_dir / ENCODER_FILE),
        "k": TEST_CLUSTERS,
        "centroids": centroids.tolist(),
        "sizes": [10 + c for c in range(TEST_CLUSTERS)],
        "exemplars": exemplars,
        "prototypes": [[[5, 5, 0], [c + 1, -3, 1]] for c in range(TEST_CLUSTERS)],
        "metrics": {"silhouette": 0.0},
        "data": {},
    }
    (model_dir / "clusters.json").write_text(json.dumps(document))
    write_manifest(model_dir, read_manifest(model_dir))


def ed25519_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """An ed25519 key pair as the PEM files `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def make_tiny_artifact(out_dir: Path) -> Path:
    from sketchserve.training.export import make_random_artifact

    make_random_artifact(out_dir, seed=0, tiny=True)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random artifact, without clusters."""
    torch.set_num_threads(1)
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def clustered_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random artifact with a small clusters.json."""
    out = make_tiny_artifact(tmp_path_factory.mktemp("tiny-clustered"))
    manifest = json.loads((out / "manifest.json").read_text())
    add_test_clusters(out, int(manifest["latent_size"]))
    return out


@pytest.fixture(scope="session")
def shared_server(tiny_model: Path) -> Iterator[RunningServer]:
    with running_server(server_config(tiny_model, metrics_port=0)) as server:
        yield server


@pytest.fixture(scope="session")
def clustered_server(clustered_model: Path) -> Iterator[RunningServer]:
    with running_server(server_config(clustered_model)) as server:
        yield server


def random_sketch(
    rng: np.random.Generator, strokes: int = 3, points: int = 12, sketch_id: str = ""
) -> sketch_pb2.Sketch:
    """A random-walk drawing in arbitrary units (the server canonicalizes it)."""
    result = sketch_pb2.Sketch(id=sketch_id)
    for _ in range(strokes):
        xy = np.cumsum(rng.normal(scale=20.0, size=(points, 2)), axis=0) + rng.uniform(0, 500, size=2)
        result.strokes.add(x=xy[:, 0].tolist(), y=xy[:, 1].tolist())
    return result


def random_sketches(seed: int, count: int) -> list[sketch_pb2.Sketch]:
    rng = np.random.default_rng(seed)
    return [random_sketch(rng, strokes=int(rng.integers(1, 5)), points=int(rng.integers(3, 15))) for _ in range(count)]
