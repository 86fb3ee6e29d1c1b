"""The three models the Open Inference Protocol serves, over SketchService's engine (no torch).

Each model is the same engine call as a SketchService method, with the same
checks and limits (``sketchserve.server.service``'s helpers):

- ``sketch-encoder`` (SketchService's Encode): inputs ``points`` or ``stroke3``
  FP32 ``[-1, 3]`` and optional ``lengths`` INT64 ``[-1]``; outputs ``mu`` and
  ``sigma`` FP32 ``[-1, Nz]``; no parameters.
- ``sketch-assign`` (Assign): the same inputs; outputs ``cluster`` INT64 and
  ``distance`` FP32 ``[-1, -1]`` (sketches x top_k, closest first); parameter
  ``top_k`` (default 1, capped at the cluster count).
- ``sketch-decoder`` (Reconstruct from latents): input ``latent`` FP32
  ``[-1, Nz]``; outputs ``stroke3`` FP32 ``[-1, 3]`` and ``lengths`` INT64
  ``[-1]``; parameters ``temperature`` (default 0), ``max_points`` (default 0:
  the model's maximum) and ``seed`` (default 0).

The sketch layouts (``points``, ``stroke3``, ``lengths``) are
``sketchserve.server.oip_tensors``'s. Float inputs may also be FP64 and
``lengths`` any of INT32/INT64/UINT32/UINT64; the metadata names the usual type.
The decoder gives SketchService's drawings for the same latents, temperature,
``max_points`` and seed (sketch ``i`` of a request draws its noise from
``sketch_seed(seed, i)``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sketchserve.clusters import ClusterTable
from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.server.errors import FailedPrecondition, InvalidRequest
from sketchserve.server.oip_tensors import (
    FLOAT_TYPES,
    ROW_WIDTH,
    Tensor,
    checked_tensor,
    points_to_drawing,
    sketch_lengths,
    split_rows,
    stroke3_rows_to_drawing,
)
from sketchserve.server.results import Encoded, SketchTooLong
from sketchserve.server.service import ServingState, check_count, check_temperature, resolve_max_points
from sketchserve.strokes import Drawing

ENCODER = "sketch-encoder"
ASSIGN = "sketch-assign"
DECODER = "sketch-decoder"
POINTS, STROKE3, LENGTHS, LATENT = "points", "stroke3", "lengths", "latent"
# A dimension whose size varies from request to request, in the protocol's metadata.
VARIABLE = -1
# The protocol's parameter kinds this server reads.
INTEGER, NUMBER = "integer", "number"
NO_CLUSTERS = "the model has no clusters: run `sketchserve cluster MODEL_DIR` to add clusters.json, then restart"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Parameter:
    kind: str  # INTEGER or NUMBER
    default: float
    description: str


@dataclass(frozen=True)
class Outputs:
    """A model's answer: output name -> (datatype, array), in the model's output order."""

    arrays: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)


Infer = Callable[[ServingState, dict[str, Tensor], dict[str, float], float | None], Awaitable[Outputs]]


@dataclass(frozen=True)
class ServedModel:
    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, Parameter]
    infer: Infer
    needs_clusters: bool = False


def _sketch_inputs() -> tuple[TensorSpec, ...]:
    return (
        TensorSpec(POINTS, "FP32", (VARIABLE, ROW_WIDTH)),
        TensorSpec(STROKE3, "FP32", (VARIABLE, ROW_WIDTH)),
        TensorSpec(LENGTHS, "INT64", (VARIABLE,)),
    )


def served_models(latent_size: int) -> dict[str, ServedModel]:
    """The models, by name, for a model of latent size ``latent_size``."""
    models = (
        ServedModel(
            ENCODER,
            "sketches (points or stroke3 rows, optional lengths) -> posterior mu and sigma per sketch",
            _sketch_inputs(),
            (TensorSpec("mu", "FP32", (VARIABLE, latent_size)), TensorSpec("sigma", "FP32", (VARIABLE, latent_size))),
            {},
            _infer_encoder,
        ),
        ServedModel(
            ASSIGN,
            "sketches -> the top_k nearest k-means clusters of each sketch's mu and their distances, closest first",
            _sketch_inputs(),
            (
                TensorSpec("cluster", "INT64", (VARIABLE, VARIABLE)),
                TensorSpec("distance", "FP32", (VARIABLE, VARIABLE)),
            ),
            {"top_k": Parameter(INTEGER, 1, "nearest clusters per sketch, at least 1 (capped at the cluster count)")},
            _infer_assign,
            needs_clusters=True,
        ),
        ServedModel(
            DECODER,
            "latents -> drawings as stroke3 rows plus lengths",
            (TensorSpec(LATENT, "FP32", (VARIABLE, latent_size)),),
            (TensorSpec(STROKE3, "FP32", (VARIABLE, ROW_WIDTH)), TensorSpec(LENGTHS, "INT64", (VARIABLE,))),
            {
                "temperature": Parameter(NUMBER, 0.0, "sampling temperature in [0, 2]; 0 is the most likely drawing"),
                "max_points": Parameter(INTEGER, 0, "most stroke3 rows per drawing; 0 is the model's maximum"),
                "seed": Parameter(INTEGER, 0, "same seed and latents give the same drawings; at least 0"),
            },
            _infer_decoder,
        ),
    )
    return {m.name: m for m in models}


def unavailable_reason(model: ServedModel, state: ServingState) -> str:
    """Why ``model`` cannot infer with the loaded model; empty when it can."""
    return NO_CLUSTERS if model.needs_clusters and state.clusters is None else ""


def read_parameters(parameters: Mapping[str, oip_pb2.InferParameter], model: ServedModel) -> dict[str, float]:
    """The request's parameters with defaults filled in; unknown names and wrong kinds are errors."""
    values: dict[str, float] = {name: p.default for name, p in model.parameters.items()}
    for name, parameter in parameters.items():
        field_name = f"parameters[{name!r}]"
        if name not in model.parameters:
            accepted = ", ".join(model.parameters) or "none"
            raise InvalidRequest(field_name, f"{model.name} takes no such parameter (it takes: {accepted})")
        choice = parameter.WhichOneof("parameter_choice")
        kind = model.parameters[name].kind
        if choice in ("int64_param", "uint64_param"):
            values[name] = getattr(parameter, choice)
        elif choice == "double_param" and kind == NUMBER:
            values[name] = parameter.double_param
        else:
            wanted = "int64_param" if kind == INTEGER else "double_param or int64_param"
            raise InvalidRequest(field_name, f"expected {wanted}, got {choice or 'no value'}")
    return values


def _non_negative(values: dict[str, float], name: str) -> int:
    value = int(values[name])
    if value < 0:
        raise InvalidRequest(f"parameters[{name!r}]", f"is {value}, must be at least 0")
    return value


def _drawings(state: ServingState, inputs: dict[str, Tensor]) -> tuple[str, list[Drawing]]:
    """The request's sketches from ``points`` or ``stroke3`` (exactly one) and ``lengths``."""
    given = [name for name in (POINTS, STROKE3) if name in inputs]
    if len(given) != 1:
        raise InvalidRequest("inputs", f"give exactly one of {POINTS!r} or {STROKE3!r} (and optionally {LENGTHS!r})")
    name = given[0]
    rows = checked_tensor(inputs[name], FLOAT_TYPES, rank=2, width=ROW_WIDTH)
    lengths = sketch_lengths(inputs.get(LENGTHS), len(rows), name)
    check_count(len(lengths), state.max_sketches_per_request, "sketches")
    read = points_to_drawing if name == POINTS else stroke3_rows_to_drawing
    return name, [read(sketch, i) for i, sketch in enumerate(split_rows(rows, lengths))]


async def _encoded(state: ServingState, inputs: dict[str, Tensor], timeout: float | None) -> list[Encoded]:
    name, drawings = _drawings(state, inputs)
    try:
        return await state.engine.encode(drawings, timeout=timeout)
    except SketchTooLong as err:
        raise InvalidRequest(f"{name}: sketches[{err.index}]", str(err)) from None


async def _infer_encoder(
    state: ServingState, inputs: dict[str, Tensor], _params: dict[str, float], timeout: float | None
) -> Outputs:
    encoded = await _encoded(state, inputs, timeout)
    mu = np.stack([e.mu for e in encoded])
    sigma = np.stack([e.sigma for e in encoded])
    return Outputs({"mu": ("FP32", mu), "sigma": ("FP32", sigma)})


def _clusters(state: ServingState) -> ClusterTable:
    if state.clusters is None:
        raise FailedPrecondition(f"{ASSIGN}: {NO_CLUSTERS}")
    return state.clusters


async def _infer_assign(
    state: ServingState, inputs: dict[str, Tensor], params: dict[str, float], timeout: float | None
) -> Outputs:
    clusters = _clusters(state)
    top_k = int(params["top_k"])
    if top_k < 1:
        raise InvalidRequest("parameters['top_k']", f"is {top_k}, must be at least 1")
    encoded = await _encoded(state, inputs, timeout)
    neighbors = clusters.nearest(np.stack([e.mu for e in encoded]), top_k)
    cluster = np.array([[n.cluster for n in near] for near in neighbors], dtype=np.int64)
    distance = np.array([[n.distance for n in near] for near in neighbors], dtype=np.float32)
    return Outputs({"cluster": ("INT64", cluster), "distance": ("FP32", distance)})


async def _infer_decoder(
    state: ServingState, inputs: dict[str, Tensor], params: dict[str, float], timeout: float | None
) -> Outputs:
    spec = state.engine.spec
    if LATENT not in inputs:
        raise InvalidRequest("inputs", f"{DECODER} needs the input {LATENT!r}")
    latents = checked_tensor(inputs[LATENT], FLOAT_TYPES, rank=2, width=spec.latent_size).astype(np.float32)
    check_count(len(latents), state.max_sketches_per_request, "latents")
    finite = np.isfinite(latents).all(axis=1)
    if not finite.all():
        raise InvalidRequest(f"{LATENT}[{int(np.argmin(finite))}]", "holds NaN or infinite values")
    temperature = check_temperature(params["temperature"])
    max_points = resolve_max_points(_non_negative(params, "max_points"), spec.max_seq_len)
    drawings = await state.engine.sample(
        latents, temperature=temperature, max_points=max_points, seed=_non_negative(params, "seed"), timeout=timeout
    )
    rows = np.concatenate(drawings) if drawings else np.zeros((0, ROW_WIDTH), np.float32)
    lengths = np.array([len(d) for d in drawings], dtype=np.int64)
    return Outputs({STROKE3: ("FP32", rows.reshape(-1, ROW_WIDTH)), LENGTHS: ("INT64", lengths)})


def check_inputs(model: ServedModel, inputs: Mapping[str, Tensor]) -> None:
    """Every input is one the model declares."""
    names = [t.name for t in model.inputs]
    for name in inputs:
        if name not in names:
            raise InvalidRequest(f"inputs[{name!r}]", f"{model.name} has no such input (inputs: {', '.join(names)})")


def selected_outputs(model: ServedModel, requested: list[str]) -> list[str]:
    """The outputs to return: the requested ones in their order, or all when none is named."""
    names = [t.name for t in model.outputs]
    for index, name in enumerate(requested):
        if name not in names:
            raise InvalidRequest(
                f"outputs[{index}]", f"{name!r} is not an output of {model.name} (outputs: {', '.join(names)})"
            )
    return requested or names
