"""Every call tests/test_oip_tritonclient.py makes with tritonclient, in a process of its own.

tritonclient.grpc and the server's generated ``sketchserve.pb.inference`` modules
both register the ``inference.*`` protobuf symbols in the default descriptor pool,
so one process cannot import both (proto/inference/README.md). This script imports
only tritonclient and numpy. It reads a JSON plan on stdin (the server's address,
the sketches as ``points`` rows and ``lengths``, latents, decoder parameters) and
writes what the server answered as JSON on stdout: arrays as nested lists, errors
as ``{"status": ..., "message": ...}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

MODELS = ("sketch-encoder", "sketch-assign", "sketch-decoder")


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    """An input whose data travels in raw_input_contents (tritonclient's gRPC default)."""
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def sketches(plan: dict[str, Any], nan_in_sketch: int | None = None) -> list[triton.InferInput]:
    points = np.array(plan["points"], dtype=np.float32)
    lengths = np.array(plan["lengths"], dtype=np.int64)
    if nan_in_sketch is not None:
        points[int(lengths[:nan_in_sketch].sum()), 1] = np.nan
    return [tensor("points", points, "FP32"), tensor("lengths", lengths, "INT64")]


def outputs(result: triton.InferResult, names: tuple[str, ...]) -> dict[str, list]:
    return {name: result.as_numpy(name).tolist() for name in names}


def error_of(call: Callable[[], object]) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as err:
        return {"status": str(err.status()), "message": str(err.message())}
    return {"status": "OK", "message": ""}


def run(plan: dict[str, Any]) -> dict[str, Any]:
    client = triton.InferenceServerClient(plan["url"])
    latents = np.array(plan["latents"], dtype=np.float32)
    decoder_parameters = plan["decoder_parameters"]
    wide = np.zeros((1, latents.shape[1] + 1), dtype=np.float32)
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": {m: client.is_model_ready(m) for m in MODELS},
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": {m: client.get_model_metadata(m, as_json=True) for m in MODELS},
        "index": client.get_model_repository_index(as_json=True),
        "encoder": outputs(client.infer("sketch-encoder", sketches(plan)), ("mu", "sigma")),
        "assign": outputs(
            client.infer("sketch-assign", sketches(plan), parameters={"top_k": 2}), ("cluster", "distance")
        ),
        "decoder": outputs(
            client.infer("sketch-decoder", [tensor("latent", latents, "FP32")], parameters=decoder_parameters),
            ("stroke3", "lengths"),
        ),
        "errors": {
            "sketch-encoder": error_of(lambda: client.infer("sketch-encoder", sketches(plan, nan_in_sketch=1))),
            "sketch-assign": error_of(lambda: client.infer("sketch-assign", sketches(plan), parameters={"top_k": 0})),
            "sketch-decoder": error_of(lambda: client.infer("sketch-decoder", [tensor("latent", wide, "FP32")])),
            "unknown": error_of(lambda: client.infer("sketch-unknown", sketches(plan))),
            "unknown_ready": error_of(lambda: client.is_model_ready("sketch-unknown")),
        },
    }


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
