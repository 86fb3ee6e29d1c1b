"""Hot reload: a new model is verified and warmed beside the serving one, swapped in on SIGHUP; calls in flight
finish on the model they started with; a broken artifact is refused and the old model keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import (
    CALL_TIMEOUT_S,
    TEST_CLUSTERS,
    RunningServer,
    add_test_clusters,
    random_sketches,
    running_server,
    server_config,
)
from test_oip import infer_request

from sketchserve.artifact import read_manifest, write_manifest
from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.pb.inference import open_inference_grpc_pb2_grpc as oip_pb2_grpc
from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.logs import FIELDS_ATTR
from sketchserve.server.main import _load_state
from sketchserve.server.metrics import ServerMetrics
from sketchserve.server.probe import ProbeFailed, probe_state
from sketchserve.server.reload import REFUSED, RELOADED, close_state, warm_state
from sketchserve.server.service import ServingState

pytestmark = pytest.mark.timeout(300)

log = logging.getLogger(__name__)

SERVICE = "sketch.v1.SketchService"
SERVING = health_pb2.HealthCheckResponse.SERVING
# The second artifact's seed: its version is "seed1", the fixtures' is "seed0".
OTHER_SEED = 1
SWAPS = 20
LOAD_THREADS = 6
# Calls each model must answer after a swap before the next one: every swap happens under load.
CALLS_PER_MODEL = 10
# Calls that must succeed after the refused reload.
CALLS_AFTER_REFUSAL = 20
# Every RPC of a model with clusters, as the probe names them.
EVERY_RPC = {
    "Encode",
    "EncodeStream",
    "Score",
    "GetModelInfo",
    "Reconstruct(sketches, temperature=0)",
    "Reconstruct(latents, temperature=0)",
    "Reconstruct(sketches, temperature=1)",
    "Reconstruct(latents, temperature=1)",
    "Assign",
    "ListClusters",
}


def version_of(model_dir: Path) -> str:
    return read_manifest(model_dir).version


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second clustered tiny artifact, of another version than ``clustered_model``."""
    from sketchserve.training.export import make_random_artifact

    out = make_random_artifact(tmp_path_factory.mktemp("tiny-other"), seed=OTHER_SEED, tiny=True)
    add_test_clusters(out, read_manifest(out).latent_size, seed=OTHER_SEED)
    return out


def point(link: Path, target: Path) -> None:
    """Re-point the symlink ``link`` at ``target`` atomically, as a deploy does."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def tampered_encoder(source: Path, out: Path) -> Path:
    shutil.copytree(source, out)
    with (out / "encoder.pt").open("ab") as handle:
        handle.write(b"tampered")
    return out


def misshapen_clusters(source: Path, out: Path) -> Path:
    """Checksums that match, but centroids one value short of the latent size."""
    shutil.copytree(source, out)
    document = json.loads((out / "clusters.json").read_text())
    document["centroids"] = [row[:-1] for row in document["centroids"]]
    (out / "clusters.json").write_text(json.dumps(document))
    write_manifest(out, read_manifest(out))
    return out


def encode_version(server: RunningServer) -> str:
    response = server.stub.Encode(sketch_pb2.EncodeRequest(sketches=random_sketches(0, 2)), timeout=CALL_TIMEOUT_S)
    assert len(response.embeddings) == 2
    return response.model_version


def health(server: RunningServer) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=CALL_TIMEOUT_S).status


def model_info(server: RunningServer, version: str) -> float:
    """The sketchserve_model_info sample of ``version`` (1 while it is the served model's, else 0)."""
    labels = {"name": "random-tiny", "version": version, "device": "cpu"}
    return server.built.metrics.value("sketchserve_model_info", labels)


@pytest.fixture
def linked_server(clustered_model: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """A server whose --model is a symlink, pointing at ``clustered_model``."""
    link = tmp_path / "current"
    point(link, clustered_model)
    with running_server(server_config(link)) as server:
        yield server, link


def test_reload_swaps_in_the_new_model_metrics_and_info(
    linked_server: tuple[RunningServer, Path], clustered_model: Path, other_model: Path
) -> None:
    server, link = linked_server
    old, new = version_of(clustered_model), version_of(other_model)
    assert encode_version(server) == old
    old_state = server.built.state
    assert old_state is not None
    point(link, other_model)
    outcome = server.run(server.built.reload())
    assert (outcome.result, outcome.version, outcome.previous_version) == (RELOADED, new, old)
    assert outcome.model_dir == other_model.resolve()
    assert encode_version(server) == new
    info = server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
    assert info.version == new and json.loads(info.manifest_json)["version"] == new
    assigned = server.stub.Assign(sketch_pb2.AssignRequest(sketches=random_sketches(1, 1)), timeout=CALL_TIMEOUT_S)
    assert assigned.model_version == new
    oip = oip_pb2_grpc.GRPCInferenceServiceStub(server.channel)
    metadata = oip.ModelMetadata(oip_pb2.ModelMetadataRequest(name="sketch-decoder"), timeout=CALL_TIMEOUT_S)
    assert list(metadata.versions) == [new]
    latent = np.zeros((1, read_manifest(other_model).latent_size), dtype=np.float32)
    inferred = oip.ModelInfer(infer_request("sketch-decoder", {"latent": latent}), timeout=CALL_TIMEOUT_S)
    assert inferred.model_version == new
    assert model_info(server, new) == 1
    assert model_info(server, old) == 0
    assert server.metric("sketchserve_reloads_total", result=RELOADED) == 1
    server.run(server.built.reloader.wait_retired())
    assert old_state.engine.join(0), "the replaced model's batcher threads still run"
    assert health(server) == SERVING


def test_a_call_in_flight_finishes_on_the_model_it_started_with(
    linked_server: tuple[RunningServer, Path], clustered_model: Path, other_model: Path
) -> None:
    """An EncodeStream opened before the swap keeps the old model (and it stays open) until the stream ends."""
    server, link = linked_server
    old, new = version_of(clustered_model), version_of(other_model)
    old_state = server.built.state
    assert old_state is not None
    requests: queue.Queue = queue.Queue()
    requests.put(sketch_pb2.EncodeRequest(sketches=random_sketches(2, 2)))
    stream = server.stub.EncodeStream(iter(requests.get, None), timeout=CALL_TIMEOUT_S)
    assert next(stream).model_version == old
    point(link, other_model)
    assert server.run(server.built.reload()).ok
    assert encode_version(server) == new
    requests.put(sketch_pb2.EncodeRequest(sketches=random_sketches(3, 3)))
    answer = next(stream)
    assert (answer.model_version, len(answer.embeddings)) == (old, 3)
    assert not old_state.engine.join(0), "the old model closed while a call still used it"
    requests.put(None)
    assert list(stream) == []
    server.run(server.built.reloader.wait_retired())
    assert old_state.engine.join(0)
    assert len(old_state.calls) == 0


def test_clusters_written_into_the_served_directory_are_served_after_a_reload(tiny_model: Path, tmp_path: Path) -> None:
    """What `sketchserve cluster MODEL_DIR` does to a served model (clusters.json, manifest re-signed), then SIGHUP."""
    served = tmp_path / "served"
    shutil.copytree(tiny_model, served)
    request = sketch_pb2.AssignRequest(sketches=random_sketches(4, 2))
    with running_server(server_config(served)) as server:
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.Assign(request, timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        add_test_clusters(served, read_manifest(served).latent_size)
        assert server.run(server.built.reload()).ok
        assert len(server.stub.Assign(request, timeout=CALL_TIMEOUT_S).assignments) == 2
        listed = server.stub.ListClusters(sketch_pb2.ListClustersRequest(), timeout=CALL_TIMEOUT_S)
        assert len(listed.clusters) == TEST_CLUSTERS
        info = server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
        assert info.cluster_count == TEST_CLUSTERS


@pytest.mark.parametrize(
    ("breakage", "named"),
    [(tampered_encoder, ("encoder.pt", "sha256")), (misshapen_clusters, ("clusters.json", "centroids"))],
)
def test_a_broken_artifact_is_refused_and_the_old_model_keeps_serving(
    linked_server: tuple[RunningServer, Path],
    clustered_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    breakage,
    named: tuple[str, str],
) -> None:
    server, link = linked_server
    old = version_of(clustered_model)
    point(link, breakage(clustered_model, tmp_path / "broken"))
    with caplog.at_level(logging.INFO, logger="sketchserve.server.reload"):
        outcome = server.run(server.built.reload())
    assert outcome.result == REFUSED
    refusals = [r for r in caplog.records if r.getMessage() == "reload refused"]
    assert len(refusals) == 1
    line = getattr(refusals[0], FIELDS_ATTR)
    assert line["model_dir"] == (tmp_path / "broken").resolve()
    assert all(word in line["error"] for word in named), line["error"]
    assert "\n" not in line["error"]
    assert encode_version(server) == old
    info = server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)
    assert info.version == old
    assert model_info(server, old) == 1
    assert server.metric("sketchserve_reloads_total", result=REFUSED) == 1
    assert health(server) == SERVING


def load(model_dir: Path) -> ServingState:
    return _load_state(server_config(model_dir), ServerMetrics(), model_dir)


async def probed_calls(model_dir: Path) -> set[str]:
    """The RPCs the probe answers on a freshly loaded model."""
    state = load(model_dir)
    state.engine.start()
    try:
        return set((await probe_state(state)).calls)
    finally:
        await close_state(state)


async def warm_and_close(model_dir: Path) -> None:
    await close_state(await warm_state(load, model_dir))


def test_the_warm_up_answers_every_rpc_the_model_serves(clustered_model: Path, tiny_model: Path) -> None:
    assert asyncio.run(probed_calls(clustered_model)) == EVERY_RPC
    assert asyncio.run(probed_calls(tiny_model)) == EVERY_RPC - {"Assign", "ListClusters"}


def nan_weights(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))


def test_a_model_that_loads_but_cannot_answer_is_refused(tmp_path: Path) -> None:
    """Weights gone NaN (a diverged run, exported): every check of the loader passes, the probe's Encode sees
    codes that are not finite."""
    from sketchserve.training.export import make_random_artifact

    broken = make_random_artifact(tmp_path / "nan", seed=OTHER_SEED, tiny=True, prepare=nan_weights)
    with pytest.raises(ProbeFailed, match=r"^Encode: embeddings\[0\]: mu or sigma not finite"):
        asyncio.run(warm_and_close(broken))


@dataclasses.dataclass
class LoadTally:
    """What the load threads saw: calls by (method, code) and the versions that answered."""

    lock: threading.Condition = dataclasses.field(default_factory=threading.Condition)
    calls: Counter = dataclasses.field(default_factory=Counter)
    versions: Counter = dataclasses.field(default_factory=Counter)
    failures: list[str] = dataclasses.field(default_factory=list)

    def record(self, method: str, code: grpc.StatusCode, version: str = "", error: str = "") -> None:
        with self.lock:
            self.calls[method, code.name] += 1
            if version:
                self.versions[version] += 1
            if error:
                self.failures.append(f"{method}: {code.name}: {error}")
            self.lock.notify_all()

    def wait_for(self, version: str, count: int) -> None:
        """Block until ``count`` more calls answered by ``version`` (or a failure)."""
        with self.lock:
            goal = self.versions[version] + count
            done = self.lock.wait_for(lambda: self.versions[version] >= goal or self.failures, CALL_TIMEOUT_S)
        assert done, f"no {count} calls answered by {version} within {CALL_TIMEOUT_S} s"

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def run_load(target: str, worker: int, stop: threading.Event, tally: LoadTally) -> None:
    """Encode, Assign and Reconstruct (greedy and sampled) in turn until ``stop``."""
    with grpc.insecure_channel(target) as channel:
        stub = sketch_pb2_grpc.SketchServiceStub(channel)
        turn = 0
        while not stop.is_set():
            sketches = random_sketches(worker * 100_000 + turn, 1 + turn % 3)
            calls = (
                ("Encode", stub.Encode, sketch_pb2.EncodeRequest(sketches=sketches)),
                ("Assign", stub.Assign, sketch_pb2.AssignRequest(sketches=sketches)),
                (
                    "Reconstruct",
                    stub.Reconstruct,
                    sketch_pb2.ReconstructRequest(sketches=sketches, temperature=0.5 * (turn % 2), max_points=16),
                ),
            )
            method, rpc, request = calls[turn % len(calls)]
            try:
                response = rpc(request, timeout=CALL_TIMEOUT_S)
                tally.record(method, grpc.StatusCode.OK, response.model_version)
            except grpc.RpcError as err:
                tally.record(method, err.code(), error=err.details() or "")
            turn += 1


def read_until(stream, pattern: re.Pattern[str]) -> re.Match[str]:
    for line in stream:
        found = pattern.search(line)
        if found:
            return found
    raise AssertionError(f"server log ended before {pattern.pattern!r}")


def watch_health(target: str, seen: list[int], started: threading.Event) -> grpc.Channel:
    """Record every health status of SketchService from a Watch stream, on a daemon thread."""
    channel = grpc.insecure_channel(target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))

    def follow() -> None:
        try:
            for update in watch:
                seen.append(update.status)
                started.set()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise

    threading.Thread(target=follow, name="health-watch", daemon=True).start()
    return channel


@pytest.mark.slow
def test_twenty_swaps_under_load_fail_no_call(clustered_model: Path, other_model: Path, tmp_path: Path) -> None:
    """A real server process; concurrent Encode/Assign/Reconstruct; 20 SIGHUPs alternating two artifacts (each
    answers calls before the next swap), then one to a tampered artifact, refused while calls keep succeeding."""
    models = {version_of(clustered_model): clustered_model, version_of(other_model): other_model}
    link = tmp_path / "current"
    point(link, clustered_model)
    command = [
        sys.executable, "-m", "sketchserve.cli", "serve", "--model", str(link), "--host", "127.0.0.1",
        "--port", "0", "--metrics-port", "-1", "--torch-threads", "1", "--max-batch-size", "8",
        "--log-level", "INFO",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    tally, stop, watching = LoadTally(), threading.Event(), threading.Event()
    health_seen: list[int] = []
    threads: list[threading.Thread] = []
    try:
        port = read_until(proc.stderr, re.compile(r"event=serving port=(\d+)")).group(1)
        target = f"127.0.0.1:{port}"
        health_channel = watch_health(target, health_seen, watching)
        threads = [
            threading.Thread(target=run_load, args=(target, w, stop, tally), daemon=True) for w in range(LOAD_THREADS)
        ]
        for thread in threads:
            thread.start()
        current = version_of(clustered_model)
        tally.wait_for(current, CALLS_PER_MODEL)
        for _ in range(SWAPS):
            current = next(v for v in models if v != current)
            point(link, models[current])
            proc.send_signal(signal.SIGHUP)
            reloaded = read_until(proc.stderr, re.compile(r"event=(reloaded|\"reload refused\") .*"))
            assert reloaded.group(1) == "reloaded", reloaded.group(0)
            assert f"version={current}" in reloaded.group(0)
            tally.wait_for(current, CALLS_PER_MODEL)
        point(link, tampered_encoder(other_model, tmp_path / "tampered"))
        proc.send_signal(signal.SIGHUP)
        refused = read_until(proc.stderr, re.compile(r"event=(reloaded|\"reload refused\") .*"))
        assert refused.group(1) == '"reload refused"' and "encoder.pt" in refused.group(0), refused.group(0)
        tally.wait_for(current, CALLS_AFTER_REFUSAL)
        stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_S)
        health_channel.close()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=CALL_TIMEOUT_S)
        assert proc.returncode == 0, rest
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log.info(
        "hot reload: %d failed of %d calls across %d swaps and 1 refused reload; by version %s; by call %s",
        len(tally.failures), tally.total, SWAPS, dict(tally.versions), dict(tally.calls),
    )  # fmt: skip
    assert tally.failures == []
    assert set(tally.versions) == set(models)
    assert sum(tally.versions.values()) == tally.total
    assert watching.is_set() and set(health_seen) == {SERVING}, health_seen
