"""The Open Inference Protocol service against real servers, through its generated stubs.

Every RPC, raw and typed contents, both sketch layouts, answers equal to
SketchService's for the same sketches, and the errors. tests/test_oip_tritonclient.py
checks the same server through tritonclient.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import CALL_TIMEOUT_S, TEST_CLUSTERS, RunningServer, random_sketches, running_server, server_config

from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.pb.inference import open_inference_grpc_pb2_grpc as oip_pb2_grpc
from sketchserve.pb.inference import repository_index_pb2
from sketchserve.pb.sketch.v1 import sketch_pb2
from sketchserve.server.oip_tensors import DATATYPES, drawings_to_points, points_to_drawing, read_inputs
from sketchserve.strokes import drawing_from_xy, drawing_to_stroke3, stroke3_to_drawing

pytestmark = pytest.mark.timeout(120)

# The same sketches through the same engine calls, one batch each: equal up to float rounding.
TOLERANCE = 1e-6
ENCODER, ASSIGN, DECODER = "sketch-encoder", "sketch-assign", "sketch-decoder"
DTYPE_NAMES = {np.dtype(dtype): name for name, (dtype, _) in DATATYPES.items()}
REPOSITORY_INDEX = "/inference.GRPCInferenceService/RepositoryIndex"


def stub(server: RunningServer) -> oip_pb2_grpc.GRPCInferenceServiceStub:
    return oip_pb2_grpc.GRPCInferenceServiceStub(server.channel)


def infer_request(
    model: str, tensors: dict[str, np.ndarray], raw: bool = True, outputs: tuple[str, ...] = (), **parameters: object
) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=model, id="req-1")
    for name, array in tensors.items():
        datatype = DTYPE_NAMES[array.dtype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, DATATYPES[datatype][1]).extend(array.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    for name, value in parameters.items():
        if isinstance(value, float):
            request.parameters[name].double_param = value
        elif isinstance(value, int):
            request.parameters[name].int64_param = value
        else:
            request.parameters[name].string_param = str(value)
    return request


def infer(server: RunningServer, request: oip_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    response = stub(server).ModelInfer(request, timeout=CALL_TIMEOUT_S)
    result = {}
    for index, tensor in enumerate(response.outputs):
        dtype, contents_field = DATATYPES[tensor.datatype]
        if response.raw_output_contents:
            flat = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:
            flat = np.asarray(getattr(tensor.contents, contents_field), dtype=dtype)
        result[tensor.name] = flat.reshape(list(tensor.shape))
    return result


def infer_error(server: RunningServer, request: oip_pb2.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub(server).ModelInfer(request, timeout=CALL_TIMEOUT_S)
    return caught.value


def drawings(sketches: list[sketch_pb2.Sketch]) -> list[list[np.ndarray]]:
    return [drawing_from_xy([(s.x, s.y) for s in sketch.strokes]) for sketch in sketches]


def points_input(sketches: list[sketch_pb2.Sketch]) -> dict[str, np.ndarray]:
    rows, lengths = drawings_to_points(drawings(sketches))
    return {"points": rows, "lengths": lengths}


def sketch_service_mu(server: RunningServer, sketches: list[sketch_pb2.Sketch]) -> np.ndarray:
    response = server.stub.Encode(sketch_pb2.EncodeRequest(sketches=sketches), timeout=CALL_TIMEOUT_S)
    return np.array([list(e.mu) for e in response.embeddings], dtype=np.float32)


def latent_size(server: RunningServer) -> int:
    return server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S).latent_size


def test_server_rpcs_report_live_ready_and_metadata(clustered_server: RunningServer) -> None:
    oip = stub(clustered_server)
    assert oip.ServerLive(oip_pb2.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
    assert oip.ServerReady(oip_pb2.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
    metadata = oip.ServerMetadata(oip_pb2.ServerMetadataRequest(), timeout=CALL_TIMEOUT_S)
    assert metadata.name == "sketchserve" and metadata.version
    for model in (ENCODER, ASSIGN, DECODER):
        assert oip.ModelReady(oip_pb2.ModelReadyRequest(name=model), timeout=CALL_TIMEOUT_S).ready


def test_model_metadata_declares_names_datatypes_and_shapes(clustered_server: RunningServer) -> None:
    nz = latent_size(clustered_server)
    version = clustered_server.stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S).version

    def tensors(model: str, which: str) -> dict[str, tuple[str, list[int]]]:
        metadata = stub(clustered_server).ModelMetadata(
            oip_pb2.ModelMetadataRequest(name=model), timeout=CALL_TIMEOUT_S
        )
        assert metadata.name == model and list(metadata.versions) == [version]
        return {t.name: (t.datatype, list(t.shape)) for t in getattr(metadata, which)}

    sketch_inputs = {"points": ("FP32", [-1, 3]), "stroke3": ("FP32", [-1, 3]), "lengths": ("INT64", [-1])}
    assert tensors(ENCODER, "inputs") == sketch_inputs
    assert tensors(ENCODER, "outputs") == {"mu": ("FP32", [-1, nz]), "sigma": ("FP32", [-1, nz])}
    assert tensors(ASSIGN, "inputs") == sketch_inputs
    assert tensors(ASSIGN, "outputs") == {"cluster": ("INT64", [-1, -1]), "distance": ("FP32", [-1, -1])}
    assert tensors(DECODER, "inputs") == {"latent": ("FP32", [-1, nz])}
    assert tensors(DECODER, "outputs") == {"stroke3": ("FP32", [-1, 3]), "lengths": ("INT64", [-1])}


def test_repository_index_lists_the_models(clustered_server: RunningServer) -> None:
    call = clustered_server.channel.unary_unary(
        REPOSITORY_INDEX,
        request_serializer=repository_index_pb2.RepositoryIndexRequest.SerializeToString,
        response_deserializer=repository_index_pb2.RepositoryIndexResponse.FromString,
    )
    index = call(repository_index_pb2.RepositoryIndexRequest(), timeout=CALL_TIMEOUT_S)
    assert {(m.name, m.state) for m in index.models} == {(ENCODER, "READY"), (ASSIGN, "READY"), (DECODER, "READY")}


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_encoder_gives_sketchservices_posteriors(clustered_server: RunningServer, raw: bool) -> None:
    sketches = random_sketches(31, 5)
    request = infer_request(ENCODER, points_input(sketches), raw=raw)
    response = stub(clustered_server).ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert len(response.raw_output_contents) == (2 if raw else 0)  # outputs go back the way inputs came
    assert all(len(t.contents.fp32_contents) == (0 if raw else 5 * t.shape[1]) for t in response.outputs)
    result = infer(clustered_server, request)
    expected = sketch_service_mu(clustered_server, sketches)
    assert result["mu"].shape == expected.shape
    np.testing.assert_allclose(result["mu"], expected, atol=TOLERANCE, rtol=0)
    assert (result["sigma"] > 0).all()


def test_encoder_takes_stroke3_rows_and_one_sketch_without_lengths(clustered_server: RunningServer) -> None:
    sketches = random_sketches(32, 3)
    strokes3 = [drawing_to_stroke3(d) for d in drawings(sketches)]
    ragged = {"stroke3": np.concatenate(strokes3), "lengths": np.array([len(s) for s in strokes3], dtype=np.int32)}
    expected = sketch_service_mu(clustered_server, sketches)
    np.testing.assert_allclose(infer(clustered_server, infer_request(ENCODER, ragged))["mu"], expected, atol=TOLERANCE)
    alone = infer(clustered_server, infer_request(ENCODER, {"points": points_input(sketches[:1])["points"]}))
    np.testing.assert_allclose(alone["mu"], expected[:1], atol=TOLERANCE, rtol=0)


def test_encoder_returns_only_the_requested_outputs(clustered_server: RunningServer) -> None:
    result = infer(clustered_server, infer_request(ENCODER, points_input(random_sketches(33, 2)), outputs=("sigma",)))
    assert list(result) == ["sigma"]


def test_assign_gives_sketchservices_clusters_and_distances(clustered_server: RunningServer) -> None:
    sketches = random_sketches(34, 4)
    result = infer(clustered_server, infer_request(ASSIGN, points_input(sketches), top_k=2))
    expected = clustered_server.stub.Assign(
        sketch_pb2.AssignRequest(sketches=sketches, top_k=2), timeout=CALL_TIMEOUT_S
    ).assignments
    assert result["cluster"].tolist() == [[n.cluster for n in a.nearest] for a in expected]
    np.testing.assert_allclose(
        result["distance"], [[n.distance for n in a.nearest] for a in expected], atol=TOLERANCE, rtol=0
    )
    assert result["cluster"].shape == (4, 2) and result["cluster"].max() < TEST_CLUSTERS


def test_decoder_gives_sketchservices_drawings_for_the_same_seed(clustered_server: RunningServer) -> None:
    mu = sketch_service_mu(clustered_server, random_sketches(35, 3))
    expected = clustered_server.stub.Reconstruct(
        sketch_pb2.ReconstructRequest(
            latents=[sketch_pb2.Embedding(mu=row.tolist()) for row in mu], temperature=0.7, seed=11, max_points=20
        ),
        timeout=CALL_TIMEOUT_S,
    ).sketches
    result = infer(clustered_server, infer_request(DECODER, {"latent": mu}, temperature=0.7, seed=11, max_points=20))
    rows = np.split(result["stroke3"], np.cumsum(result["lengths"])[:-1])
    assert len(rows) == len(expected)
    assert sum(len(s3) for s3 in rows) > 0
    for s3, sketch in zip(rows, expected):
        assert len(s3) <= 20
        if len(s3) == 0:  # the decoder ended at once: SketchService answers a sketch without strokes
            assert not sketch.strokes
            continue
        theirs = drawing_from_xy([(s.x, s.y) for s in sketch.strokes])
        ours = stroke3_to_drawing(s3)
        assert [len(s) for s in ours] == [len(s) for s in theirs]
        points = np.concatenate(ours)  # stroke-3 starts at the origin; SketchService's drawing at its top-left
        np.testing.assert_allclose(points - points.min(axis=0), np.concatenate(theirs), atol=TOLERANCE, rtol=TOLERANCE)


def test_decoder_is_deterministic_per_seed_and_varies_with_it(clustered_server: RunningServer) -> None:
    mu = np.random.default_rng(3).normal(size=(2, latent_size(clustered_server))).astype(np.float32)
    runs = [infer(clustered_server, infer_request(DECODER, {"latent": mu}, temperature=1.0, seed=s)) for s in (4, 4, 5)]
    np.testing.assert_array_equal(runs[0]["stroke3"], runs[1]["stroke3"])
    assert not np.array_equal(runs[0]["stroke3"], runs[2]["stroke3"])


def assert_invalid(error: grpc.RpcError, *fragments: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for fragment in fragments:
        assert fragment in error.details()


def test_encoder_names_the_sketch_and_field_at_fault(clustered_server: RunningServer) -> None:
    tensors = points_input(random_sketches(36, 3))
    first_two = int(tensors["lengths"][:2].sum())
    tensors["points"][first_two + 1, 0] = np.nan
    error = infer_error(clustered_server, infer_request(ENCODER, tensors))
    assert_invalid(error, "points: sketches[2].strokes[0].x", "not finite")


def test_ragged_layout_errors_name_the_input(clustered_server: RunningServer) -> None:
    tensors = points_input(random_sketches(37, 2))
    tensors["lengths"] = tensors["lengths"] + 1
    assert_invalid(infer_error(clustered_server, infer_request(ENCODER, tensors)), "lengths: sum to")
    request = infer_request(ENCODER, points_input(random_sketches(37, 2)))
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    assert_invalid(infer_error(clustered_server, request), "inputs['points']", "bytes")
    empty = infer_error(clustered_server, infer_request(ENCODER, {"stroke3": np.zeros((0, 3), np.float32)}))
    assert_invalid(empty, "no sketches given")
    both = {**points_input(random_sketches(37, 1)), "stroke3": np.zeros((2, 3), np.float32)}
    assert_invalid(infer_error(clustered_server, infer_request(ENCODER, both)), "exactly one of")


def test_assign_rejects_a_bad_top_k_and_unknown_parameters(clustered_server: RunningServer) -> None:
    tensors = points_input(random_sketches(38, 1))
    assert_invalid(infer_error(clustered_server, infer_request(ASSIGN, tensors, top_k=0)), "top_k", "at least 1")
    assert_invalid(infer_error(clustered_server, infer_request(ASSIGN, tensors, topk=2)), "'topk'", "top_k")


def test_decoder_rejects_a_latent_of_the_wrong_size_and_a_wild_temperature(clustered_server: RunningServer) -> None:
    nz = latent_size(clustered_server)
    wrong = np.zeros((2, nz + 1), np.float32)
    assert_invalid(infer_error(clustered_server, infer_request(DECODER, {"latent": wrong})), "inputs['latent'].shape")
    latent = np.zeros((1, nz), np.float32)
    error = infer_error(clustered_server, infer_request(DECODER, {"latent": latent}, temperature=3.0))
    assert_invalid(error, "temperature")


def test_unknown_models_and_versions_are_not_found(clustered_server: RunningServer) -> None:
    error = infer_error(clustered_server, infer_request("sketch-nope", {"latent": np.zeros((1, 2), np.float32)}))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "sketch-encoder" in (error.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        stub(clustered_server).ModelReady(
            oip_pb2.ModelReadyRequest(name=DECODER, version="999"), timeout=CALL_TIMEOUT_S
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_assign_without_clusters_is_not_ready_and_fails_its_precondition(shared_server: RunningServer) -> None:
    ready = stub(shared_server).ModelReady(oip_pb2.ModelReadyRequest(name=ASSIGN), timeout=CALL_TIMEOUT_S)
    assert not ready.ready
    error = infer_error(shared_server, infer_request(ASSIGN, points_input(random_sketches(39, 1))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "clusters" in (error.details() or "")


def test_before_loading_nothing_is_ready_infer_is_unavailable_and_calls_are_counted(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model), load=False) as server:
        oip = stub(server)
        assert oip.ServerLive(oip_pb2.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
        assert not oip.ServerReady(oip_pb2.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
        assert not oip.ModelReady(oip_pb2.ModelReadyRequest(name=ENCODER), timeout=CALL_TIMEOUT_S).ready
        error = infer_error(server, infer_request(ENCODER, {"points": np.zeros((2, 3), np.float32)}))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        server.run(server.built.load())
        assert oip.ModelReady(oip_pb2.ModelReadyRequest(name=ENCODER), timeout=CALL_TIMEOUT_S).ready
        missing = infer_error(server, infer_request("missing", {"latent": np.zeros((1, 2), np.float32)}))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
    # Read once the server has stopped: it counts a call just after answering it.
    for code in ("UNAVAILABLE", "NOT_FOUND"):
        assert server.metric("sketchserve_requests_total", method="ModelInfer", code=code) == 1


coordinate = st.floats(-1e4, 1e4, allow_nan=False, width=32)
stroke = st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=6)
drawing_strategy = st.lists(stroke, min_size=1, max_size=4)


@settings(max_examples=50, deadline=None)
@given(st.lists(drawing_strategy, min_size=1, max_size=5))
def test_points_rows_round_trip_to_the_same_drawings(sketches: list[list[list[tuple[float, float]]]]) -> None:
    originals = [[np.array(s, dtype=np.float64) for s in sketch] for sketch in sketches]
    rows, lengths = drawings_to_points(originals)
    for index, sketch in enumerate(np.split(rows, np.cumsum(lengths)[:-1])):
        back = points_to_drawing(sketch, index)
        assert len(back) == len(originals[index])
        for ours, theirs in zip(back, originals[index]):
            np.testing.assert_array_equal(ours, theirs)


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(sorted(DATATYPES)),
    st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=12),
)
def test_raw_and_typed_contents_decode_to_the_same_tensor(datatype: str, values: list[int]) -> None:
    array = np.asarray(values, dtype=DATATYPES[datatype][0]).reshape(-1, 1)
    raw = read_inputs(infer_request("m", {"x": array}, raw=True))["x"]
    typed = read_inputs(infer_request("m", {"x": array}, raw=False))["x"]
    assert raw.datatype == typed.datatype == datatype
    np.testing.assert_array_equal(raw.array, typed.array)
    np.testing.assert_array_equal(raw.array, array)


def test_draining_makes_the_server_and_models_not_ready(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model)) as server:
        inference = server.built.inference
        assert inference.ready
        server.run(server.built.stop(0))
        assert not inference.ready
        answer = server.run(inference.ServerReady(oip_pb2.ServerReadyRequest(), context=None))
        assert not answer.ready
