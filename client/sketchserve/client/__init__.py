"""The typed sketchserve client (base install: grpcio, protobuf, numpy; no torch).

from sketchserve.client import SketchClient

with SketchClient("localhost:50051") as client:
    codes = client.encode([stroke3_array, drawing]).mu
"""

from sketchserve.client.aio import AsyncSketchClient
from sketchserve.client.config import ClientConfig
from sketchserve.client.errors import SketchServiceError
from sketchserve.client.plans import Sampling
from sketchserve.client.sync import SketchClient
from sketchserve.client.types import (
    AssignResult,
    Cluster,
    ClusterList,
    EncodeResult,
    ModelInfo,
    ReconstructResult,
    ScoreResult,
    Sketch,
)

__all__ = [
    "AssignResult",
    "AsyncSketchClient",
    "ClientConfig",
    "Cluster",
    "ClusterList",
    "EncodeResult",
    "ModelInfo",
    "ReconstructResult",
    "Sampling",
    "ScoreResult",
    "Sketch",
    "SketchClient",
    "SketchServiceError",
]
