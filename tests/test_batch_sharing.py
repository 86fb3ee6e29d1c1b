"""Batch independence, with proof that the calls shared a batch: on a server whose batches
start only when full (the delay is far beyond any test), CALLS concurrent calls fill exactly
one batch, which the batch-size metric shows; each call's answer equals its answer alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches, running_server, server_config

from sketchserve.pb.sketch.v1 import sketch_pb2

pytestmark = pytest.mark.timeout(120)

CALLS = 4
PER_CALL = 2
BATCH = CALLS * PER_CALL
# A batch waits this long for company: far beyond any test, so batches start only when full.
NEVER_MS = 600_000.0
# Batched and unbatched encodes may differ by float rounding only.
MU_TOLERANCE = 1e-5
POINT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def full_batch_server(tiny_model: Path) -> Iterator[RunningServer]:
    cfg = server_config(tiny_model, max_batch_size=BATCH, max_delay_ms=NEVER_MS, warmup=False)
    with running_server(cfg) as server:
        yield server


def batches(server: RunningServer, batcher: str) -> tuple[float, float]:
    """(batches run, items in them) by ``batcher`` so far."""
    return (
        server.metric("sketchserve_batch_size_count", batcher=batcher),
        server.metric("sketchserve_batch_size_sum", batcher=batcher),
    )


def one_full_batch(server: RunningServer, batcher: str, before: tuple[float, float]) -> bool:
    after = batches(server, batcher)
    return (after[0] - before[0], after[1] - before[1]) == (1, BATCH)


def mus(response: sketch_pb2.EncodeResponse) -> np.ndarray:
    return np.array([list(e.mu) for e in response.embeddings])


def test_encodes_that_shared_a_batch_equal_their_answers_alone(
    shared_server: RunningServer, full_batch_server: RunningServer
) -> None:
    requests = [sketch_pb2.EncodeRequest(sketches=random_sketches(80 + i, PER_CALL)) for i in range(CALLS)]
    alone = [mus(shared_server.stub.Encode(r, timeout=CALL_TIMEOUT_S)) for r in requests]
    before = batches(full_batch_server, "encode")
    futures = [full_batch_server.stub.Encode.future(r, timeout=CALL_TIMEOUT_S) for r in requests]
    together = [mus(f.result()) for f in futures]
    assert one_full_batch(full_batch_server, "encode", before), "the calls did not share one batch"
    for a, t in zip(alone, together):
        np.testing.assert_allclose(t, a, atol=MU_TOLERANCE)


def test_reconstructions_that_shared_a_batch_equal_their_answers_alone(
    shared_server: RunningServer, full_batch_server: RunningServer
) -> None:
    embeddings = shared_server.stub.Encode(
        sketch_pb2.EncodeRequest(sketches=random_sketches(90, CALLS * PER_CALL)), timeout=CALL_TIMEOUT_S
    ).embeddings
    latents = [sketch_pb2.Embedding(mu=e.mu) for e in embeddings]
    requests = [
        sketch_pb2.ReconstructRequest(
            latents=latents[i * PER_CALL : (i + 1) * PER_CALL], temperature=1.0, seed=5 + i, max_points=12
        )
        for i in range(CALLS)
    ]
    alone = [shared_server.stub.Reconstruct(r, timeout=CALL_TIMEOUT_S) for r in requests]
    before = batches(full_batch_server, "decode")
    futures = [full_batch_server.stub.Reconstruct.future(r, timeout=CALL_TIMEOUT_S) for r in requests]
    together = [f.result() for f in futures]
    assert one_full_batch(full_batch_server, "decode", before), "the calls did not share one batch"
    for a, t in zip(alone, together):
        assert [len(s.strokes) for s in t.sketches] == [len(s.strokes) for s in a.sketches]
        for sa, st in zip(a.sketches, t.sketches):
            for stroke_a, stroke_t in zip(sa.strokes, st.strokes):
                np.testing.assert_allclose(stroke_t.x, stroke_a.x, atol=POINT_TOLERANCE)
                np.testing.assert_allclose(stroke_t.y, stroke_a.y, atol=POINT_TOLERANCE)
