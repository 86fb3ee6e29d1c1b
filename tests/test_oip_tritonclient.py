"""The real tritonclient (PyPI ``tritonclient``) against a real server: every RPC it needs, each model's
answer equal to SketchService's for the same sketches and seed, and an error per model.

tritonclient runs in a child process (tests/oip_tritonclient_calls.py): it cannot share a
process with the server's generated protocol modules (proto/inference/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches
from test_readme import README, README_TARGET, python_blocks

from sketchserve.pb.sketch.v1 import sketch_pb2
from sketchserve.server.oip_tensors import drawings_to_points
from sketchserve.strokes import drawing_from_xy, stroke3_to_drawing

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.slow,
    # Looked up, not imported: importing it here would clash with the server's modules.
    pytest.mark.skipif(
        importlib.util.find_spec("tritonclient") is None,
        reason="tritonclient is in the dev extra: pip install -e '.[dev]'",
    ),
]

CALLS = Path(__file__).with_name("oip_tritonclient_calls.py")
TOLERANCE = 1e-6
SKETCHES = 4
TEMPERATURE, SEED, MAX_POINTS = 0.6, 9, 24
DECODER_PARAMETERS = {"temperature": TEMPERATURE, "seed": SEED, "max_points": MAX_POINTS}
MODELS = ("sketch-encoder", "sketch-assign", "sketch-decoder")


@pytest.fixture(scope="module")
def sketches() -> list[sketch_pb2.Sketch]:
    return random_sketches(61, SKETCHES)


@pytest.fixture(scope="module")
def mu(clustered_server: RunningServer, sketches: list[sketch_pb2.Sketch]) -> np.ndarray:
    response = clustered_server.stub.Encode(sketch_pb2.EncodeRequest(sketches=sketches), timeout=CALL_TIMEOUT_S)
    return np.array([list(e.mu) for e in response.embeddings], dtype=np.float32)


@pytest.fixture(scope="module")
def answers(clustered_server: RunningServer, sketches: list[sketch_pb2.Sketch], mu: np.ndarray) -> dict[str, Any]:
    """What tritonclient got from the server, one child process for every call."""
    rows, lengths = drawings_to_points([drawing_from_xy([(s.x, s.y) for s in k.strokes]) for k in sketches])
    plan = {
        "url": clustered_server.target,
        "points": rows.tolist(),
        "lengths": lengths.tolist(),
        "latents": mu.tolist(),
        "decoder_parameters": DECODER_PARAMETERS,
    }
    done = subprocess.run(
        [sys.executable, str(CALLS)], input=json.dumps(plan), capture_output=True, text=True, timeout=150, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_server_and_model_rpcs(answers: dict[str, Any]) -> None:
    assert answers["live"] and answers["ready"]
    assert answers["model_ready"] == {m: True for m in MODELS}
    assert answers["server_metadata"]["name"] == "sketchserve"
    index = {m["name"]: m["state"] for m in answers["index"]["models"]}
    assert index == {m: "READY" for m in MODELS}


def test_model_metadata(answers: dict[str, Any], mu: np.ndarray) -> None:
    encoder = answers["model_metadata"]["sketch-encoder"]
    assert {t["name"]: [int(d) for d in t["shape"]] for t in encoder["outputs"]} == {
        "mu": [-1, mu.shape[1]],
        "sigma": [-1, mu.shape[1]],
    }
    decoder = answers["model_metadata"]["sketch-decoder"]
    assert [(t["name"], t["datatype"]) for t in decoder["inputs"]] == [("latent", "FP32")]


def test_encoder_equals_sketchservice(answers: dict[str, Any], mu: np.ndarray) -> None:
    np.testing.assert_allclose(np.array(answers["encoder"]["mu"]), mu, atol=TOLERANCE, rtol=0)


def test_assign_equals_sketchservice(
    answers: dict[str, Any], clustered_server: RunningServer, sketches: list[sketch_pb2.Sketch]
) -> None:
    expected = clustered_server.stub.Assign(
        sketch_pb2.AssignRequest(sketches=sketches, top_k=2), timeout=CALL_TIMEOUT_S
    ).assignments
    assert answers["assign"]["cluster"] == [[n.cluster for n in a.nearest] for a in expected]
    np.testing.assert_allclose(
        answers["assign"]["distance"], [[n.distance for n in a.nearest] for a in expected], atol=TOLERANCE, rtol=0
    )


def test_decoder_equals_sketchservice_for_the_same_seed(
    answers: dict[str, Any], clustered_server: RunningServer, mu: np.ndarray
) -> None:
    expected = clustered_server.stub.Reconstruct(
        sketch_pb2.ReconstructRequest(
            latents=[sketch_pb2.Embedding(mu=r.tolist()) for r in mu],
            temperature=TEMPERATURE,
            seed=SEED,
            max_points=MAX_POINTS,
        ),
        timeout=CALL_TIMEOUT_S,
    ).sketches
    rows = np.array(answers["decoder"]["stroke3"], dtype=np.float32).reshape(-1, 3)
    drawings = np.split(rows, np.cumsum(answers["decoder"]["lengths"])[:-1])
    assert len(drawings) == SKETCHES and len(rows) > 0
    for s3, sketch in zip(drawings, expected):
        if len(s3) == 0:
            assert not sketch.strokes
            continue
        ours, theirs = stroke3_to_drawing(s3), [np.stack([s.x, s.y], axis=1) for s in sketch.strokes]
        assert [len(s) for s in ours] == [len(s) for s in theirs]
        points = np.concatenate(ours)  # stroke-3 starts at the origin; SketchService's drawing at its top-left
        np.testing.assert_allclose(points - points.min(axis=0), np.concatenate(theirs), atol=TOLERANCE, rtol=TOLERANCE)


def test_an_error_per_model(answers: dict[str, Any]) -> None:
    errors = answers["errors"]
    assert errors["sketch-encoder"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "points: sketches[1].strokes[0].y" in errors["sketch-encoder"]["message"]
    assert errors["sketch-assign"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "top_k" in errors["sketch-assign"]["message"]
    assert errors["sketch-decoder"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "inputs['latent'].shape" in errors["sketch-decoder"]["message"]
    assert errors["unknown"]["status"] == errors["unknown_ready"]["status"] == "StatusCode.NOT_FOUND"


def test_the_readme_tritonclient_example_gives_sketchservices_assignment(clustered_server: RunningServer) -> None:
    """The README's tritonclient block, run as written (only the address changed), prints Assign's answer."""
    (block,) = [b for b in python_blocks(README.read_text(encoding="utf-8")) if "tritonclient" in b]
    done = subprocess.run(
        [sys.executable, "-c", block.replace(README_TARGET, clustered_server.target)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    square = sketch_pb2.Sketch(strokes=[sketch_pb2.Stroke(x=[10, 60, 60, 10, 10], y=[10, 10, 60, 60, 10])])
    (expected,) = clustered_server.stub.Assign(
        sketch_pb2.AssignRequest(sketches=[square], top_k=2), timeout=CALL_TIMEOUT_S
    ).assignments
    clusters = " ".join(str(n.cluster) for n in expected.nearest)
    assert done.stdout.startswith(f"[[{clusters}]] [[")
    printed = [float(v) for v in done.stdout.split("[[")[2].split("]]")[0].split()]
    np.testing.assert_allclose(printed, [n.distance for n in expected.nearest], rtol=1e-6)
