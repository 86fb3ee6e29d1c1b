"""Coverage-guided fuzzing of a real server with atheris: no request may end INTERNAL or UNKNOWN.

    .venv/bin/pip install -e '.[fuzz]'      # atheris
    .venv/bin/python bench/fuzz_server.py [--model DIR] [libFuzzer flags, e.g. -max_total_time=600 CORPUS_DIR]

The server (``build_server``, default batching, loopback, port 0) runs in this
process on its own event loop thread, so atheris sees the coverage of the
server's own code (decoding, validation, conversion, batching) and steers its
inputs towards new paths. Each input picks a SketchService method and is sent
either as raw bytes (whatever they decode to, if anything) or as a request
built field by field from the input (drawings, latents, temperature, limits).
An INTERNAL or UNKNOWN answer raises, and libFuzzer saves the input as a crash
file. ``tests/test_fuzz.py`` is the bounded hypothesis twin run by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris
import grpc

with atheris.instrument_imports():
    from sketchserve.pb.sketch.v1 import sketch_pb2
    from sketchserve.server.config import ServerConfig
    from sketchserve.server.main import BuiltServer, build_server

SERVICE = sketch_pb2.DESCRIPTOR.services_by_name["SketchService"]
METHODS = tuple(m.name for m in SERVICE.methods)
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "face"
CALL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 300.0
# Bounds of one built request: small enough for thousands of executions a minute.
MAX_SKETCHES = 4
MAX_STROKES = 4
MAX_POINTS = 40
MAX_STREAM = 4
FLOAT_LIMIT = 3.4028235e38


def serve_in_thread(model: Path) -> tuple[BuiltServer, asyncio.AbstractEventLoop]:
    """A loaded, SERVING server on its own event-loop thread (a daemon: it ends with the fuzzer)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="fuzz-server-loop", daemon=True).start()
    cfg = ServerConfig(model_dir=model, host="127.0.0.1", port=0, metrics_port=-1, device="cpu", log_level="ERROR")

    async def start() -> BuiltServer:
        built = build_server(cfg)
        await built.start()
        return built

    return asyncio.run_coroutine_threadsafe(start(), loop).result(START_TIMEOUT_S), loop


def consume_floats(fdp: atheris.FuzzedDataProvider, count: int) -> list[float]:
    """Any float32-representable values, NaN and infinities included."""
    return [
        fdp.ConsumeFloatInRange(-FLOAT_LIMIT, FLOAT_LIMIT) if fdp.ConsumeBool() else fdp.ConsumeFloat()
        for _ in range(count)
    ]


def build_sketch(fdp: atheris.FuzzedDataProvider) -> sketch_pb2.Sketch:
    sketch = sketch_pb2.Sketch(id=fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)))
    for _ in range(fdp.ConsumeIntInRange(0, MAX_STROKES)):
        points = fdp.ConsumeIntInRange(0, MAX_POINTS)
        y_points = points if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, MAX_POINTS)
        sketch.strokes.add(x=consume_floats(fdp, points), y=consume_floats(fdp, y_points))
    return sketch


def build_packed(fdp: atheris.FuzzedDataProvider) -> sketch_pb2.PackedSketches:
    """The packed form: float32 points and the counts that cut them into strokes and sketches."""
    counts = [fdp.ConsumeIntInRange(0, MAX_POINTS) for _ in range(fdp.ConsumeIntInRange(0, MAX_STROKES))]
    return sketch_pb2.PackedSketches(
        points=fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8 * MAX_POINTS)),
        stroke_points=counts,
        sketch_strokes=[fdp.ConsumeIntInRange(0, MAX_STROKES) for _ in range(fdp.ConsumeIntInRange(0, MAX_SKETCHES))],
    )


def sketch_fields(fdp: atheris.FuzzedDataProvider) -> dict[str, Any]:
    """A request's sketches, readable or packed (rarely both)."""
    fields: dict[str, Any] = {"sketches": [build_sketch(fdp) for _ in range(fdp.ConsumeIntInRange(0, MAX_SKETCHES))]}
    if fdp.ConsumeBool():
        fields["packed"] = build_packed(fdp)
        if fdp.ConsumeIntInRange(0, 3):
            fields["sketches"] = []
    return fields


def build_request(method: str, fdp: atheris.FuzzedDataProvider, latent_size: int) -> Any:
    """A request of ``method``'s type whose every field comes from the input."""
    sketches = sketch_fields(fdp)
    if method in {"Encode", "EncodeStream", "Score"}:
        return getattr(sketch_pb2, SERVICE.methods_by_name[method].input_type.name)(**sketches)
    if method == "Assign":
        return sketch_pb2.AssignRequest(**sketches, top_k=fdp.ConsumeIntInRange(0, 2**32 - 1))
    if method == "Reconstruct":
        latents = [
            sketch_pb2.Embedding(mu=consume_floats(fdp, latent_size + fdp.ConsumeIntInRange(-1, 1)))
            for _ in range(fdp.ConsumeIntInRange(0, MAX_SKETCHES))
        ]
        return sketch_pb2.ReconstructRequest(
            **(sketches if fdp.ConsumeBool() else {}),
            latents=latents,
            temperature=fdp.ConsumeFloat(),
            max_points=fdp.ConsumeIntInRange(0, 2**32 - 1),
            seed=fdp.ConsumeIntInRange(0, 2**64 - 1),
        )
    if method == "ListClusters":
        return sketch_pb2.ListClustersRequest(exemplars=fdp.ConsumeIntInRange(0, 2**32 - 1))
    return sketch_pb2.GetModelInfoRequest()


def one_body(method: str, fdp: atheris.FuzzedDataProvider, latent_size: int) -> bytes:
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    return build_request(method, fdp, latent_size).SerializeToString()


def make_target(channel: grpc.Channel, latent_size: int) -> Callable[[bytes], None]:
    def test_one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
        path = f"/{SERVICE.full_name}/{method}"
        try:
            if method == "EncodeStream":
                bodies = [one_body(method, fdp, latent_size) for _ in range(fdp.ConsumeIntInRange(0, MAX_STREAM))]
                list(channel.stream_stream(path)(iter(bodies), timeout=CALL_TIMEOUT_S))
            else:
                channel.unary_unary(path)(one_body(method, fdp, latent_size), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            if error.code() in FORBIDDEN:
                raise RuntimeError(f"{method} ended {error.code().name}: {error.details()}") from None

    return test_one_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="artifact directory (default: models/face)")
    args, fuzzer_argv = parser.parse_known_args()
    built, _ = serve_in_thread(args.model)
    channel = grpc.insecure_channel(f"127.0.0.1:{built.port}")
    latent_size = channel.unary_unary(
        f"/{SERVICE.full_name}/GetModelInfo", response_deserializer=sketch_pb2.ModelInfo.FromString
    )(b"", timeout=CALL_TIMEOUT_S).latent_size
    atheris.Setup([sys.argv[0], *fuzzer_argv], make_target(channel, latent_size))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
