"""The Open Inference Protocol (KServe V2) over HTTP, with the Triton extensions that tooling relies on.

Only HTTP plumbing lives here: the body's wire format is read by `decode.py` and
written by `encode.py`, what the server says about its models is `metadata.py`'s,
the inference itself `inference.py`'s (shared with the gRPC face), the models and
their batching the repository's.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.routing import Route

from inferd.errors import InvalidInput, NotReady, dotted, validation_summary
from inferd.serve.disconnect import when_client_gone
from inferd.serve.log_settings import LogSettings
from inferd.serve.repository import ModelRepository
from inferd.serve.v2.decode import INFERENCE_HEADER, decode_request
from inferd.serve.v2.encode import encode_response
from inferd.serve.v2.inference import run_inference
from inferd.serve.v2.json_values import as_object, parse_object
from inferd.serve.v2.metadata import check_unload_parameters, serving_overrides, statistics, triton_config
from inferd.serve.v2.metadata import model_metadata as describe_model
from inferd.serve.v2.metadata import server_metadata as describe_server
from inferd.serve.v2.shared_memory import SystemSharedMemory

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

def _repository(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository


def _log_settings(request: Request) -> LogSettings:
    settings: LogSettings = request.app.state.log_settings
    return settings


def _shared_memory(request: Request) -> SystemSharedMemory:
    shared_memory: SystemSharedMemory = request.app.state.shared_memory
    return shared_memory


def _path(request: Request, name: str) -> str | None:
    """A path parameter that only some of a handler's paths have (`version`, `region`), read from the path alone:
    as a handler argument with a default, FastAPI would also take it from the query string of the other paths."""
    value: str | None = request.path_params.get(name)
    return value


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    return describe_server(shared_memory=_shared_memory(request).enabled)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    if not getattr(request.app.state, "ready", False):
        draining = getattr(request.app.state, "draining", False)
        raise NotReady("the server is shutting down" if draining else "the server is still loading its models")
    return {"ready": True}


@router.get("/models/stats")
@router.get("/models/{model}/stats")
@router.get("/models/{model}/versions/{version}/stats")
async def model_stats(request: Request) -> dict[str, Any]:
    return statistics(_repository(request), _path(request, "model"), _path(request, "version"))


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(request: Request, model: str) -> dict[str, Any]:
    repository = _repository(request)
    return describe_model(repository, repository.get(model, _path(request, "version")))


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str) -> dict[str, Any]:
    entry = _repository(request).get(model, _path(request, "version"))
    return {"name": entry.name, "version": entry.version, "ready": True}


@router.get("/models/{model}/config")
@router.get("/models/{model}/versions/{version}/config")
async def model_config(request: Request, model: str) -> dict[str, Any]:
    """Triton's model configuration: dims exclude the batch dimension when max_batch_size > 0."""
    return triton_config(_repository(request).get(model, _path(request, "version")))


@router.get("/logging")
async def log_settings(request: Request) -> dict[str, Any]:
    """Triton's logging extension: what the server logs."""
    return _log_settings(request).as_triton()


@router.post("/logging")
async def update_log_settings(request: Request) -> dict[str, Any]:
    """Change some of the log settings, e.g. `{"log_verbose_level": 1}` or `{"log_info": false}`; returns them all."""
    return _log_settings(request).update(await _json_body(request, "log settings"))


@router.post("/repository/index")
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Every model on disk or loaded; with `{"ready": true}`, only those ready to serve."""
    given = await _json_body(request, "repository index")
    ready = given.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput(f'"ready" must be true or false, not {json.dumps(ready)}')
    return _repository(request).index(ready_only=ready)


@router.post("/repository/models/{model}/load")
async def load_model(request: Request, model: str) -> dict[str, Any]:
    """Optionally with `{"parameters": {"config": "<Triton model config JSON>"}}` to set its serving settings."""
    overrides = serving_overrides(model, await _repository_parameters(request, "load"))
    entries = await _repository(request).load(model, overrides)
    return {"name": model, "versions": [e.version for e in entries], "state": "READY"}


@router.post("/repository/models/{model}/unload")
async def unload_model(request: Request, model: str) -> dict[str, str]:
    check_unload_parameters(await _repository_parameters(request, "unload"))
    await _repository(request).unload(model)
    return {"name": model, "state": "UNAVAILABLE"}


async def _json_body(request: Request, action: str) -> dict[str, Any]:
    """A control request's JSON object body, which may also be empty."""
    body = await request.body()
    return parse_object(body, f"the {action} request body") if body.strip() else {}


async def _repository_parameters(request: Request, action: str) -> dict[str, Any]:
    """The `parameters` of a load or unload body."""
    return as_object((await _json_body(request, action)).get("parameters"), f"the {action} parameters")


# -- system shared memory (on with --allow-shared-memory) ----------------------------------------


class RegionRegistration(BaseModel):
    key: str = Field(description="POSIX shared-memory name of the object, e.g. /input0")
    offset: int = Field(0, ge=0, description="where the region starts in the object, in bytes")
    byte_size: int = Field(gt=0, description="the region's size in bytes")


@router.get("/systemsharedmemory/status")
@router.get("/systemsharedmemory/region/{region}/status")
async def shared_memory_status(request: Request) -> list[dict[str, Any]]:
    return _shared_memory(request).status(_path(request, "region"))


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
        problems = validation_summary(exc, lambda location: dotted(location) or "body")
        raise InvalidInput(
            f'the register body must be JSON like {{"key": "/input0", "offset": 0, "byte_size": 1024}}: {problems}'
        ) from None
    shared_memory.register(region, registration.key, registration.offset, registration.byte_size)
    return {}


@router.post("/systemsharedmemory/unregister")
@router.post("/systemsharedmemory/region/{region}/unregister")
async def unregister_shared_memory(request: Request) -> dict[str, Any]:
    _shared_memory(request).unregister(_path(request, "region"))
    return {}


# -- inference ---------------------------------------------------------------------------------


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(request: Request, model: str) -> Response:
    entry = _repository(request).get(model, _path(request, "version"))
    entry.admit()  # refuse overload before buffering the body: memory stays flat under a flood
    body = await request.body()
    shared_memory = _shared_memory(request)
    with entry.measured() as phases:
        with phases.input():
            decoded = decode_request(body, request.headers.get(INFERENCE_HEADER), shared_memory=shared_memory)
        response = await run_inference(entry, decoded, phases=phases, disconnected=when_client_gone(request),
                                       max_image_pixels=request.app.state.settings.max_image_pixels)
        with phases.output():
            payload, header_length = encode_response(response, shared_memory=shared_memory)
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
        return await infer(request, request.path_params["model"])

    return [Route(f"{router.prefix}{path}", endpoint, methods=["POST"], include_in_schema=False)
            for path in ("/models/{model}/infer", "/models/{model}/versions/{version}/infer")]
