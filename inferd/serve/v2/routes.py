"""The Open Inference Protocol (KServe V2) face, with the Triton extensions that tooling relies on.

Only HTTP plumbing lives here: the wire format is in `codec.py`, the models and
their batching in the repository. Requests with a JSON body, the binary tensor
extension, encoded images as BYTES for image models and UTF-8 strings as BYTES
for text models all end in the same `ModelEntry.infer` the simple REST face uses.
A text model shows its text input (BYTES, one string per batch row), not the
token tensors it is tokenized into.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.routing import Route

from inferd import __version__
from inferd.errors import InvalidInput, NotReady
from inferd.io import top_k
from inferd.serve.disconnect import when_client_gone
from inferd.serve.images import decode_batch
from inferd.serve.repository import ModelEntry, ModelRepository
from inferd.serve.v2.codec import (
    INFERENCE_HEADER,
    InferInput,
    InferRequest,
    InferResponse,
    SharedMemoryRef,
    binary_outputs_for,
    datatype_of,
    decode_request,
    encode_response,
)
from inferd.serve.v2.shared_memory import SystemSharedMemory
from inferd.types import ImageType, TextType

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics"]


def _repository(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository


def _shared_memory(request: Request) -> SystemSharedMemory:
    shared_memory: SystemSharedMemory = request.app.state.shared_memory
    return shared_memory


def _datatype(dtype: str) -> str:
    return datatype_of(np.dtype(object if dtype == "string" else dtype))


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    extensions = [*EXTENSIONS, "system_shared_memory"] if _shared_memory(request).enabled else EXTENSIONS
    return {"name": "inferd", "version": __version__, "extensions": extensions}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    if not getattr(request.app.state, "ready", False):
        raise NotReady("the server is still loading its models")
    return {"ready": True}


def _metadata(repository: ModelRepository, entry: ModelEntry) -> dict[str, Any]:
    manifest = entry.model.manifest
    return {
        "name": entry.name,
        "versions": repository.versions(entry.name),
        "platform": "onnx",
        "inputs": [{"name": s.name, "datatype": _datatype(s.dtype), "shape": list(s.shape)} for s in manifest.inputs],
        "outputs": [{"name": s.name, "datatype": _datatype(s.dtype), "shape": list(s.shape)} for s in manifest.outputs],
        "parameters": {"backend": entry.model.load_info.backend, "device": entry.model.load_info.device,
                       "precision": entry.model.load_info.precision},
    }


@router.get("/models/stats")
@router.get("/models/{model}/stats")
@router.get("/models/{model}/versions/{version}/stats")
async def model_stats(request: Request, model: str | None = None, version: str | None = None) -> dict[str, Any]:
    repository = _repository(request)
    if model is None:
        entries = repository.entries()
    elif version is None:
        repository.get(model)
        entries = [repository.get(model, v) for v in repository.versions(model)]
    else:
        entries = [repository.get(model, version)]
    return {"model_stats": [e.stats.as_triton(e.name, e.version) for e in entries]}


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(request: Request, model: str, version: str | None = None) -> dict[str, Any]:
    repository = _repository(request)
    return _metadata(repository, repository.get(model, version))


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> dict[str, Any]:
    entry = _repository(request).get(model, version)
    return {"name": entry.name, "version": entry.version, "ready": True}


def _triton_type(dtype: str) -> str:
    datatype = _datatype(dtype)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@router.get("/models/{model}/config")
@router.get("/models/{model}/versions/{version}/config")
async def model_config(request: Request, model: str, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration: dims exclude the batch dimension when max_batch_size > 0."""
    entry = _repository(request).get(model, version)
    manifest = entry.model.manifest
    max_batch = entry.config.max_batch_size if manifest.batch_dynamic else 0

    def tensor(spec: Any) -> dict[str, Any]:
        dims = list(spec.shape[1:] if max_batch > 0 else spec.shape)
        described: dict[str, Any] = {"name": spec.name, "data_type": _triton_type(spec.dtype), "dims": dims}
        if isinstance(spec, ImageType):
            described["format"] = f"FORMAT_{spec.channel_layout}"
        if not dims:  # one string per batch row: Triton spells a per-row scalar as dims [1] reshaped to []
            described.update(dims=[1], reshape={"shape": []})
        return described

    config: dict[str, Any] = {
        "name": entry.name,
        "platform": "onnxruntime_onnx",
        "backend": entry.model.load_info.backend,
        "version_policy": {"all": {}},
        "max_batch_size": max_batch,
        "input": [tensor(s) for s in manifest.inputs],
        "output": [tensor(s) for s in manifest.outputs],
        "instance_group": [{"name": entry.name, "kind": "KIND_CPU" if "CPU" in entry.model.load_info.device.upper()
                            else "KIND_GPU", "count": entry.config.instances}],
        "parameters": {"precision": {"string_value": entry.model.load_info.precision}},
    }
    if max_batch > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": entry.config.preferred_batch_sizes,
            "max_queue_delay_microseconds": int(entry.config.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": entry.config.max_queue_size,
                                     "default_timeout_microseconds": int((entry.config.timeout_s or 0) * 1e6)},
        }
    return config


@router.post("/repository/index")
async def repository_index(request: Request) -> list[dict[str, str]]:
    return _repository(request).index()


@router.post("/repository/models/{model}/load")
async def load_model(request: Request, model: str) -> dict[str, Any]:
    entries = await _repository(request).load(model)
    return {"name": model, "versions": [e.version for e in entries], "state": "READY"}


@router.post("/repository/models/{model}/unload")
async def unload_model(request: Request, model: str) -> dict[str, str]:
    await _repository(request).unload(model)
    return {"name": model, "state": "UNAVAILABLE"}


# -- system shared memory (on with --allow-shared-memory) ----------------------------------------


class RegionRegistration(BaseModel):
    key: str = Field(description="POSIX shared-memory name of the object, e.g. /input0")
    offset: int = Field(0, ge=0, description="where the region starts in the object, in bytes")
    byte_size: int = Field(gt=0, description="the region's size in bytes")


@router.get("/systemsharedmemory/status")
@router.get("/systemsharedmemory/region/{region}/status")
async def shared_memory_status(request: Request, region: str | None = None) -> list[dict[str, Any]]:
    return _shared_memory(request).status(region)


_REGISTRATION_BODY = {"required": True, "content": {"application/json": {
    "schema": RegionRegistration.model_json_schema()}}}


@router.post("/systemsharedmemory/region/{region}/register", openapi_extra={"requestBody": _REGISTRATION_BODY})
async def register_shared_memory(request: Request, region: str) -> dict[str, Any]:
    """The body is read by hand: tritonclient sends its JSON without a JSON content type."""
    shared_memory = _shared_memory(request)
    shared_memory.check_enabled()
    try:
        registration = RegionRegistration.model_validate_json(await request.body())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(
            f'the register body must be JSON like {{"key": "/input0", "offset": 0, "byte_size": 1024}}: {problems}'
        ) from None
    shared_memory.register(region, registration.key, registration.offset, registration.byte_size)
    return {}


@router.post("/systemsharedmemory/unregister")
@router.post("/systemsharedmemory/region/{region}/unregister")
async def unregister_shared_memory(request: Request, region: str | None = None) -> dict[str, Any]:
    _shared_memory(request).unregister(region)
    return {}


# -- inference ---------------------------------------------------------------------------------


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    entry = _repository(request).get(model, version)
    entry.batcher.admit()  # refuse overload before buffering the body: memory stays flat under a flood
    body = await request.body()
    shared_memory = _shared_memory(request)
    decoded = decode_request(body, request.headers.get(INFERENCE_HEADER), shared_memory=shared_memory)
    settings = request.app.state.settings
    feeds = await _feeds(entry, decoded, settings.max_image_pixels)
    outputs = await entry.infer(feeds, timeout_s=_timeout_s(decoded), disconnected=when_client_gone(request))
    response = InferResponse(
        model_name=entry.name, model_version=entry.version, id=decoded.id,
        outputs=_requested_outputs(entry, decoded, outputs), shared_memory_outputs=_output_regions(decoded),
    )
    payload, header_length = encode_response(
        response, binary_outputs=binary_outputs_for(decoded, default_binary=False), shared_memory=shared_memory
    )
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream", headers={INFERENCE_HEADER: str(header_length)})


def fast_infer_routes() -> list[Route]:
    """The infer endpoints as plain Starlette routes, to be matched before everything else.

    FastAPI's route matching and dependency solving cost about 0.2 ms of event-loop
    time per request (measured with py-spy at 1,200 req/s), a fifth of what the
    server spends on a 600 KB binary request; `infer` takes only the request and
    its path parameters, so it needs none of it. The FastAPI routes above stay
    for the OpenAPI docs.
    """

    async def endpoint(request: Request) -> Response:
        return await infer(request, **request.path_params)

    return [Route(f"{router.prefix}{path}", endpoint, methods=["POST"], include_in_schema=False)
            for path in ("/models/{model}/infer", "/models/{model}/versions/{version}/infer")]


def _output_regions(decoded: InferRequest) -> dict[str, SharedMemoryRef]:
    return {o.name: o.shared_memory for o in decoded.outputs or () if o.shared_memory is not None}


def _timeout_s(decoded: InferRequest) -> float | None:
    """The `timeout` request parameter, in microseconds as tritonclient sends it."""
    timeout = decoded.parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidInput(f"the timeout parameter must be a positive number of microseconds, got {timeout!r}")
    return float(timeout) / 1e6


async def _feeds(entry: ModelEntry, decoded: InferRequest, max_pixels: int) -> dict[str, np.ndarray]:
    specs = {spec.name: spec for spec in entry.model.manifest.inputs}
    names = [i.name for i in decoded.inputs]
    if sorted(names) != sorted(specs):
        raise InvalidInput(f"model {entry.name!r} takes inputs {sorted(specs)}; the request has {sorted(names)}")
    feeds = {}
    for item in decoded.inputs:
        spec = specs[item.name]
        if isinstance(spec, TextType):
            feeds[item.name] = _texts(item)
            continue
        if item.datatype == "BYTES" and isinstance(spec, ImageType):
            images = [bytes(x) for x in item.data.reshape(-1)]
            if not images:
                raise InvalidInput(f"input {item.name!r} holds no images")
            feeds[item.name] = await anyio.to_thread.run_sync(decode_batch, entry.model, images, max_pixels)
            continue
        expected = _datatype(spec.dtype)
        if item.datatype != expected:
            hint = " or BYTES holding encoded images" if isinstance(spec, ImageType) else ""
            raise InvalidInput(f"input {item.name!r} must be {expected}{hint}; got {item.datatype}")
        feeds[item.name] = item.data
    return feeds


def _texts(item: InferInput) -> np.ndarray:
    """A text input's strings, one per batch row: shape [N], or [N, 1] as Triton clients send per-row strings."""
    if item.datatype != "BYTES":
        raise InvalidInput(f"input {item.name!r} is text: send it as BYTES holding UTF-8 strings, not {item.datatype}")
    if len(item.shape) not in (1, 2) or (len(item.shape) == 2 and item.shape[1] != 1):
        raise InvalidInput(f"input {item.name!r} takes one string per batch row: shape [N] or [N, 1], "
                           f"got {list(item.shape)}")
    if item.data.size == 0:
        raise InvalidInput(f"input {item.name!r} holds no texts; send at least one")
    return item.data.reshape(-1)


def _requested_outputs(
    entry: ModelEntry, decoded: InferRequest, outputs: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray]]:
    if decoded.outputs is None:
        return list(outputs.items())
    selected = []
    for requested in decoded.outputs:
        if requested.name not in outputs:
            raise InvalidInput(f"model {entry.name!r} has no output {requested.name!r}; it has {list(outputs)}")
        value = outputs[requested.name]
        count = requested.parameters.get("classification")
        if count is not None:
            value = _classification(entry, requested.name, value, count)
        selected.append((requested.name, value))
    return selected


def _classification(entry: ModelEntry, output: str, scores: np.ndarray, count: Any) -> np.ndarray:
    """Triton's classification extension: 'score:index:label' strings for the top `count` classes."""
    classifier = entry.model.manifest.classifier
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput(f"the classification parameter must be a positive integer, got {count!r}")
    labels = classifier.labels if classifier and classifier.output == output else []
    activation = classifier.activation if classifier and classifier.output == output else "none"
    ranked = top_k(scores.reshape(scores.shape[0], -1), labels, count, activation=activation)
    return np.array([[f"{p.probability:f}:{p.index}:{p.label}".encode() for p in row] for row in ranked], dtype=object)


