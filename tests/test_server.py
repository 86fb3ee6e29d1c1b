"""Every RPC of SketchService against a real server on port 0 (tiny random artifact)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from server_fixtures import (
    CALL_TIMEOUT_S,
    SHARED_MAX_SKETCHES,
    TEST_CLUSTERS,
    RunningServer,
    random_sketches,
    running_server,
    server_config,
)

from sketchserve.pb.sketch.v1 import sketch_pb2

pytestmark = pytest.mark.timeout(120)

SERVICE = "sketch.v1.SketchService"
# Batched and unbatched encodes may differ by float rounding only.
MU_TOLERANCE = 1e-5
CONCURRENT_CALLS = 24


def mus(response: sketch_pb2.EncodeResponse) -> np.ndarray:
    return np.array([list(e.mu) for e in response.embeddings])


def encode(server: RunningServer, sketches: list[sketch_pb2.Sketch]) -> sketch_pb2.EncodeResponse:
    return server.stub.Encode(sketch_pb2.EncodeRequest(sketches=sketches), timeout=CALL_TIMEOUT_S)


def info(server: RunningServer) -> sketch_pb2.ModelInfo:
    return server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S)


def test_encode_gives_one_posterior_per_sketch(shared_server: RunningServer) -> None:
    model = info(shared_server)
    response = encode(shared_server, random_sketches(1, 5))
    assert len(response.embeddings) == 5
    assert response.model_version == model.version
    assert all(len(e.mu) == model.latent_size and len(e.sigma) == model.latent_size for e in response.embeddings)
    assert all(min(e.sigma) > 0 for e in response.embeddings)


def test_encode_does_not_depend_on_position_or_scale(shared_server: RunningServer) -> None:
    sketch = random_sketches(2, 1)[0]
    moved = sketch_pb2.Sketch()
    for stroke in sketch.strokes:
        moved.strokes.add(x=[3.0 * v + 1000.0 for v in stroke.x], y=[3.0 * v - 77.0 for v in stroke.y])
    np.testing.assert_allclose(
        mus(encode(shared_server, [sketch])), mus(encode(shared_server, [moved])), atol=MU_TOLERANCE
    )


def test_encode_real_quickdraw_drawings(shared_server: RunningServer, data_dir: Path) -> None:
    path = data_dir / "simplified" / "face.ndjson"
    records = [json.loads(line) for line in path.read_text().splitlines()[:SHARED_MAX_SKETCHES]]
    max_points = info(shared_server).max_points
    sketches = [
        sketch_pb2.Sketch(id=r["key_id"], strokes=[sketch_pb2.Stroke(x=s[0], y=s[1]) for s in r["drawing"]])
        for r in records
    ]
    fitting = []
    for sketch in sketches:
        try:
            encode(shared_server, [sketch])
            fitting.append(sketch)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"the model accepts at most {max_points}" in err.details()
    assert fitting, "no real face drawing fits the tiny model"
    assert np.isfinite(mus(encode(shared_server, fitting))).all()


def test_concurrent_calls_coalesce_with_identical_results(shared_server: RunningServer) -> None:
    sketches = random_sketches(3, CONCURRENT_CALLS)
    alone = np.concatenate([mus(encode(shared_server, [s])) for s in sketches])
    size_one = shared_server.metric("sketchserve_batch_size_bucket", batcher="encode", le="1.0")
    batches = shared_server.metric("sketchserve_batch_size_count", batcher="encode")
    futures = [
        shared_server.stub.Encode.future(sketch_pb2.EncodeRequest(sketches=[s]), timeout=CALL_TIMEOUT_S)
        for s in sketches
    ]
    together = np.concatenate([mus(f.result()) for f in futures])
    new_batches = shared_server.metric("sketchserve_batch_size_count", batcher="encode") - batches
    new_size_one = shared_server.metric("sketchserve_batch_size_bucket", batcher="encode", le="1.0") - size_one
    assert new_size_one < new_batches, "no batch of the concurrent calls held more than one sketch"
    np.testing.assert_allclose(together, alone, atol=MU_TOLERANCE)


def test_a_request_larger_than_a_batch_is_split(shared_server: RunningServer) -> None:
    sketches = random_sketches(4, SHARED_MAX_SKETCHES)
    alone = np.concatenate([mus(encode(shared_server, [s])) for s in sketches[:3]])
    np.testing.assert_allclose(mus(encode(shared_server, sketches))[:3], alone, atol=MU_TOLERANCE)


def test_assign_returns_nearest_centroids(clustered_server: RunningServer) -> None:
    sketches = random_sketches(5, 4)
    mu = mus(encode(clustered_server, sketches))
    clusters = clustered_server.stub.ListClusters(sketch_pb2.ListClustersRequest(), timeout=CALL_TIMEOUT_S).clusters
    centroids = np.array([list(c.centroid) for c in clusters])
    distances = np.linalg.norm(mu[:, None, :] - centroids[None], axis=-1)
    response = clustered_server.stub.Assign(
        sketch_pb2.AssignRequest(sketches=sketches, top_k=2), timeout=CALL_TIMEOUT_S
    )
    for row, assignment in enumerate(response.assignments):
        assert assignment.cluster == int(np.argmin(distances[row]))
        assert assignment.distance == pytest.approx(distances[row].min(), rel=1e-4)
        assert [n.cluster for n in assignment.nearest] == list(np.argsort(distances[row])[:2])
    default_k = clustered_server.stub.Assign(sketch_pb2.AssignRequest(sketches=sketches[:1]), timeout=CALL_TIMEOUT_S)
    assert len(default_k.assignments[0].nearest) == 1
    capped = clustered_server.stub.Assign(
        sketch_pb2.AssignRequest(sketches=sketches[:1], top_k=99), timeout=CALL_TIMEOUT_S
    )
    assert len(capped.assignments[0].nearest) == TEST_CLUSTERS


def test_list_clusters_returns_exemplars_and_prototypes(clustered_server: RunningServer) -> None:
    response = clustered_server.stub.ListClusters(sketch_pb2.ListClustersRequest(exemplars=1), timeout=CALL_TIMEOUT_S)
    assert [c.id for c in response.clusters] == list(range(TEST_CLUSTERS))
    assert [c.size for c in response.clusters] == [10, 11, 12]
    assert all(len(c.exemplars) == 1 for c in response.clusters)
    first = response.clusters[0]
    assert list(first.exemplars[0].strokes[0].x) == [0.0, 1.0, 5.0]
    assert list(first.exemplars[0].strokes[0].y) == [3.0, 5.0, 0.0]  # the canonical frame: top-left at (0, 0)
    assert list(first.prototype.strokes[0].x) == [0.0, 5.0, 6.0]
    assert clustered_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest()).cluster_count == TEST_CLUSTERS


@pytest.mark.parametrize("method", ["Assign", "ListClusters"])
def test_cluster_calls_without_clusters_fail_precondition(shared_server: RunningServer, method: str) -> None:
    request = (
        sketch_pb2.AssignRequest(sketches=random_sketches(6, 1))
        if method == "Assign"
        else sketch_pb2.ListClustersRequest()
    )
    with pytest.raises(grpc.RpcError) as caught:
        getattr(shared_server.stub, method)(request, timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no clusters" in caught.value.details()


def reconstruct(server: RunningServer, **fields: Any) -> sketch_pb2.ReconstructResponse:
    return server.stub.Reconstruct(sketch_pb2.ReconstructRequest(**fields), timeout=CALL_TIMEOUT_S)


def test_reconstruct_is_reproducible_and_bounded(shared_server: RunningServer) -> None:
    sketches = random_sketches(7, 3)
    first = reconstruct(shared_server, sketches=sketches, temperature=0.8, seed=42, max_points=20)
    again = reconstruct(shared_server, sketches=sketches, temperature=0.8, seed=42, max_points=20)
    assert_same_drawings(first, again)
    assert all(sum(len(s.x) for s in sk.strokes) <= 20 + len(sk.strokes) for sk in first.sketches)
    other_seed = reconstruct(shared_server, sketches=sketches, temperature=0.8, seed=43, max_points=20)
    assert [flat_points(s).tolist() for s in other_seed.sketches] != [flat_points(s).tolist() for s in first.sketches]


def flat_points(sketch: sketch_pb2.Sketch) -> np.ndarray:
    """All x then all y values of a sketch, stroke by stroke."""
    xs = [v for stroke in sketch.strokes for v in stroke.x]
    ys = [v for stroke in sketch.strokes for v in stroke.y]
    return np.array(xs + ys)


def assert_same_drawings(a: sketch_pb2.ReconstructResponse, b: sketch_pb2.ReconstructResponse) -> None:
    assert [len(s.strokes) for s in a.sketches] == [len(s.strokes) for s in b.sketches]
    for x, y in zip(a.sketches, b.sketches):
        np.testing.assert_allclose(flat_points(x), flat_points(y), atol=1e-3)


def test_reconstruct_from_latents_matches_reconstruct_from_sketches(shared_server: RunningServer) -> None:
    sketches = random_sketches(8, 2)
    latents = [sketch_pb2.Embedding(mu=e.mu) for e in encode(shared_server, sketches).embeddings]
    from_sketches = reconstruct(shared_server, sketches=sketches, temperature=0.5, seed=7, max_points=16)
    from_latents = reconstruct(shared_server, latents=latents, temperature=0.5, seed=7, max_points=16)
    assert_same_drawings(from_sketches, from_latents)


def test_greedy_reconstruction_ignores_the_seed(shared_server: RunningServer) -> None:
    latents = [sketch_pb2.Embedding(mu=e.mu) for e in encode(shared_server, random_sketches(12, 2)).embeddings]
    first, second = (
        reconstruct(shared_server, latents=latents, temperature=0.0, seed=s, max_points=12) for s in (1, 2)
    )
    assert_same_drawings(first, second)


def test_score_reports_nll_and_kl(shared_server: RunningServer) -> None:
    sketches = random_sketches(10, 3)
    embeddings = encode(shared_server, sketches).embeddings
    scores = shared_server.stub.Score(sketch_pb2.ScoreRequest(sketches=sketches), timeout=CALL_TIMEOUT_S).scores
    assert len(scores) == 3
    for score, e in zip(scores, embeddings):
        mu, sigma = np.array(e.mu, dtype=np.float64), np.array(e.sigma, dtype=np.float64)
        expected_kl = 0.5 * np.sum(sigma**2 + mu**2 - 1.0 - np.log(sigma**2))
        assert score.kl == pytest.approx(expected_kl, rel=1e-3, abs=1e-4)
        assert np.isfinite(score.reconstruction_nll)


def test_encode_stream_answers_in_order(shared_server: RunningServer) -> None:
    batches = [random_sketches(20 + i, i + 1) for i in range(6)]
    responses = list(
        shared_server.stub.EncodeStream(
            iter([sketch_pb2.EncodeRequest(sketches=b) for b in batches]), timeout=CALL_TIMEOUT_S
        )
    )
    assert [len(r.embeddings) for r in responses] == [1, 2, 3, 4, 5, 6]
    for batch, response in zip(batches, responses):
        np.testing.assert_allclose(mus(response), mus(encode(shared_server, batch)), atol=MU_TOLERANCE)


def test_model_info_describes_the_artifact(shared_server: RunningServer, tiny_model: Path) -> None:
    model = info(shared_server)
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    assert model.latent_size == manifest["latent_size"]
    assert model.max_points == manifest["max_seq_len"]
    assert model.version == str(manifest["version"])
    assert model.device == "cpu"
    assert model.cluster_count == 0
    assert model.max_sketches_per_request == SHARED_MAX_SKETCHES
    assert json.loads(model.manifest_json)["files"] == manifest["files"]


def test_health_reports_serving(shared_server: RunningServer) -> None:
    stub = health_pb2_grpc.HealthStub(shared_server.channel)
    for service in ("", SERVICE):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(shared_server: RunningServer) -> None:
    database = ProtoReflectionDescriptorDatabase(shared_server.channel)
    assert SERVICE in database.get_services()
    service = descriptor_pool.DescriptorPool(database).FindServiceByName(SERVICE)
    assert {m.name for m in service.methods} >= {"Encode", "Assign", "Reconstruct", "Score", "EncodeStream"}


def test_metrics_endpoint_exposes_requests_batches_and_model(shared_server: RunningServer) -> None:
    encode(shared_server, random_sketches(11, 2))
    port = shared_server.built.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CALL_TIMEOUT_S) as reply:
        text = reply.read().decode()
    assert 'sketchserve_requests_total{code="OK",method="Encode"}' in text
    assert 'sketchserve_request_seconds_bucket{le="0.001",method="Encode"}' in text
    assert 'sketchserve_batch_size_count{batcher="encode"}' in text
    assert 'sketchserve_queue_depth{batcher="decode"}' in text
    assert "sketchserve_model_info{" in text


def test_a_length_conditioned_model_redraws_each_sketch_at_its_own_point_count(tmp_path: Path) -> None:
    """Reconstruct passes each input's preprocessed point count to the decoder, and the
    decoder's typical length for latents: the server's drawings equal in-process ones."""
    import torch

    from sketchserve.client.convert import sketch_from_pb
    from sketchserve.runtime import SketchRuntime, sketch_noise, sketch_seed
    from sketchserve.server.service import stroke3_to_proto
    from sketchserve.strokes import preprocess, stroke5_to_stroke3
    from sketchserve.training.export import make_random_artifact

    model_dir = make_random_artifact(tmp_path / "length-model", decoder_condition="latent+length")
    runtime = SketchRuntime.load(model_dir)
    sketches = random_sketches(21, 3)
    max_points, seed = 24, 9
    with running_server(server_config(model_dir)) as server:
        latents = [sketch_pb2.Embedding(mu=e.mu) for e in encode(server, sketches).embeddings]
        from_sketches = reconstruct(server, sketches=sketches, temperature=0.6, seed=seed, max_points=max_points)
        from_latents = reconstruct(server, latents=latents, temperature=0.6, seed=seed, max_points=max_points)
    z = torch.tensor(np.array([list(e.mu) for e in latents]), dtype=torch.float32)
    noise = torch.stack([sketch_noise(sketch_seed(seed, i), max_points) for i in range(len(sketches))])

    def expected(targets: torch.Tensor | None) -> sketch_pb2.ReconstructResponse:
        s5, lengths = runtime.sample(z, noise, 0.6, targets)
        drawn = [stroke5_to_stroke3(s5[i, : int(n)].numpy()) for i, n in enumerate(lengths.tolist())]
        return sketch_pb2.ReconstructResponse(sketches=[stroke3_to_proto(d) for d in drawn])

    counts = torch.tensor([len(preprocess(sketch_from_pb(s).strokes)) for s in sketches])
    assert_same_drawings(from_sketches, expected(counts))
    assert_same_drawings(from_latents, expected(None))
    assert [flat_points(s).tolist() for s in from_sketches.sketches] != [
        flat_points(s).tolist() for s in from_latents.sketches
    ]
