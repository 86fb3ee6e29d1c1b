"""ListClusters' ``exemplars``: 0 gives none, more than stored gives every stored one, once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import CALL_TIMEOUT_S, TEST_CLUSTERS, RunningServer

from sketchserve.pb.sketch.v1 import sketch_pb2
from sketchserve.server.service import stroke3_to_proto

pytestmark = pytest.mark.timeout(120)


def list_clusters(server: RunningServer, exemplars: int) -> list[sketch_pb2.Cluster]:
    request = sketch_pb2.ListClustersRequest(exemplars=exemplars)
    return list(server.stub.ListClusters(request, timeout=CALL_TIMEOUT_S).clusters)


def stored_exemplars(model_dir: Path) -> list[list[sketch_pb2.Sketch]]:
    document = json.loads((model_dir / "clusters.json").read_text())
    return [[stroke3_to_proto(np.asarray(s, dtype=np.float32)) for s in cluster] for cluster in document["exemplars"]]


def test_zero_exemplars_lists_every_cluster_without_members(clustered_server: RunningServer) -> None:
    clusters = list_clusters(clustered_server, 0)
    assert [c.id for c in clusters] == list(range(TEST_CLUSTERS))
    assert [len(c.exemplars) for c in clusters] == [0] * TEST_CLUSTERS
    assert all(len(c.prototype.strokes) > 0 for c in clusters)


def test_more_exemplars_than_stored_gives_each_stored_one_once(
    clustered_server: RunningServer, clustered_model: Path
) -> None:
    stored = stored_exemplars(clustered_model)
    clusters = list_clusters(clustered_server, 99)
    assert [list(c.exemplars) for c in clusters] == stored
    assert all(len(c.exemplars) == len(s) >= 1 for c, s in zip(clusters, stored))
    assert [list(c.exemplars) for c in list_clusters(clustered_server, 1)] == [s[:1] for s in stored]
