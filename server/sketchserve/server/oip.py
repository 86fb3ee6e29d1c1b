"""The Open Inference Protocol (KServe v2) service, ``inference.GRPCInferenceService``, beside SketchService.

Same port, same engine and batchers, same limits and deadlines (the call's
gRPC deadline bounds its time in the batchers); the StatusInterceptor of
``sketchserve.server.errors`` maps its errors and counts its calls in the
metrics, as for SketchService. The six RPCs of the standard
(``proto/inference/open_inference_grpc.proto``), plus Triton's read-only
``RepositoryIndex`` (``proto/inference/repository_index.proto``), which
tritonclient calls to list the models:

- ServerLive: true while the process answers.
- ServerReady: true once the model is loaded and warm, false again while draining
  (the same moments the health service reports SERVING and NOT_SERVING).
- ModelReady: ServerReady, and the model can infer (``sketch-assign`` needs clusters);
  NOT_FOUND for a model or version not served.
- ServerMetadata: ``sketchserve``, its package version, no extensions.
- ModelMetadata: inputs and outputs with datatypes and shapes (-1: variable);
  ``properties`` carries the description, parameters and limits. UNAVAILABLE until loaded.
- ModelInfer: the models of ``sketchserve.server.oip_models``. The only version is the
  artifact's (``model_version`` may be empty). INVALID_ARGUMENT names the input, sketch
  and field at fault; NOT_FOUND for an unknown model; UNAVAILABLE until loaded.
"""

from __future__ import annotations

import json
from importlib import metadata

import grpc

from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.pb.inference import open_inference_grpc_pb2_grpc as oip_pb2_grpc
from sketchserve.pb.inference import repository_index_pb2
from sketchserve.server.errors import FailedPrecondition, NotReady, UnknownModel
from sketchserve.server.oip_models import (
    ServedModel,
    check_inputs,
    read_parameters,
    selected_outputs,
    served_models,
    unavailable_reason,
)
from sketchserve.server.oip_tensors import add_output, read_inputs
from sketchserve.server.service import ServingState

INFERENCE_SERVICE_NAME = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
REPOSITORY_INDEX = "RepositoryIndex"
SERVER_NAME = "sketchserve"
# ModelMetadata.platform: what runs the models.
PLATFORM = "sketchserve_torchscript"
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
# Names for every model before the artifact (and so the latent size) is known.
MODEL_NAMES = tuple(served_models(latent_size=0))


def server_version() -> str:
    """The installed sketchserve package's version ("unknown" when running from an uninstalled tree)."""
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


class InferenceServicer(oip_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers UNAVAILABLE (and not ready) until :meth:`attach`; not ready again after :meth:`drain`."""

    def __init__(self) -> None:
        self._state: ServingState | None = None
        self._models: dict[str, ServedModel] = {}
        self._draining = False

    def attach(self, state: ServingState) -> None:
        self._models = served_models(state.engine.spec.latent_size)
        self._state = state

    def drain(self) -> None:
        self._draining = True

    @property
    def ready(self) -> bool:
        return self._state is not None and not self._draining

    def _ready(self) -> ServingState:
        if self._state is None:
            raise NotReady("the server is warming up; retry shortly")
        self._state.calls.enter()
        return self._state

    def _version_checked(self, name: str, version: str) -> str:
        """``name`` if it is a model served here and ``version`` is empty or the artifact's."""
        if name not in MODEL_NAMES:
            raise UnknownModel(f"model {name!r} is not served here; models: {', '.join(MODEL_NAMES)}")
        if version and (self._state is None or version != self._state.version):
            served = "none yet" if self._state is None else repr(self._state.version)
            raise UnknownModel(f"model {name!r} has no version {version!r} (served: {served})")
        return name

    def _model(self, name: str, version: str) -> tuple[ServingState, ServedModel]:
        self._version_checked(name, version)
        state = self._ready()
        return state, self._models[name]

    async def ServerLive(
        self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerLiveResponse:
        return oip_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerReadyResponse:
        return oip_pb2.ServerReadyResponse(ready=self.ready)

    async def ModelReady(
        self, request: oip_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelReadyResponse:
        self._version_checked(request.name, request.version)
        if not self.ready or self._state is None:
            return oip_pb2.ModelReadyResponse(ready=False)
        return oip_pb2.ModelReadyResponse(ready=not unavailable_reason(self._models[request.name], self._state))

    async def ServerMetadata(
        self, request: oip_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerMetadataResponse:
        return oip_pb2.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=[])

    async def ModelMetadata(
        self, request: oip_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelMetadataResponse:
        state, model = self._model(request.name, request.version)
        spec = state.engine.spec
        tensor = oip_pb2.ModelMetadataResponse.TensorMetadata
        properties = {
            "description": model.description,
            "parameters": json.dumps(
                {
                    n: {"kind": p.kind, "default": p.default, "description": p.description}
                    for n, p in model.parameters.items()
                }
            ),
            "latent_size": str(spec.latent_size),
            "max_points": str(spec.max_seq_len),
            "max_sketches_per_request": str(state.max_sketches_per_request),
        }
        reason = unavailable_reason(model, state)
        if reason:
            properties["unavailable"] = reason
        return oip_pb2.ModelMetadataResponse(
            name=model.name,
            versions=[state.version],
            platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.outputs],
            properties=properties,
        )

    async def ModelInfer(
        self, request: oip_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelInferResponse:
        state, model = self._model(request.model_name, request.model_version)
        reason = unavailable_reason(model, state)
        if reason:
            raise FailedPrecondition(f"{model.name}: {reason}")
        inputs = read_inputs(request)
        check_inputs(model, inputs)
        outputs = selected_outputs(model, [o.name for o in request.outputs])
        parameters = read_parameters(request.parameters, model)
        result = await model.infer(state, inputs, parameters, context.time_remaining())
        response = oip_pb2.ModelInferResponse(model_name=model.name, model_version=state.version, id=request.id)
        raw = bool(request.raw_input_contents)
        for name in outputs:
            datatype, array = result.arrays[name]
            add_output(response, name, array, datatype, raw)
        return response

    async def RepositoryIndex(
        self, request: repository_index_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> repository_index_pb2.RepositoryIndexResponse:
        """Triton's model list: every model, READY or UNAVAILABLE with the reason (only READY ones if asked)."""
        response = repository_index_pb2.RepositoryIndexResponse()
        for name in MODEL_NAMES:
            if self._state is None or not self.ready:
                version, reason = "", "the server is not ready"
            else:
                version, reason = self._state.version, unavailable_reason(self._models[name], self._state)
            if request.ready and reason:
                continue
            response.models.add(name=name, version=version, state=UNAVAILABLE if reason else READY, reason=reason)
        return response


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register the protocol's service and Triton's RepositoryIndex method (same service name) on ``server``."""
    oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    repository_index = grpc.unary_unary_rpc_method_handler(
        servicer.RepositoryIndex,
        request_deserializer=repository_index_pb2.RepositoryIndexRequest.FromString,
        response_serializer=repository_index_pb2.RepositoryIndexResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(INFERENCE_SERVICE_NAME, {REPOSITORY_INDEX: repository_index}),)
    )
