"""The application's ingress: Serve's HTTP proxies hand it every request, and it hands each to its model.

It only routes: the model a request is for is read from its path and the request goes,
as it came, to that model's deployment, whose replicas answer it with inferd's own app. Calls about the whole
server (`/models`, `/health`, the repository index, statistics) go to every deployment and their answers are
merged. A refusal by Serve (a deployment's queue full, no replica alive) becomes the JSON error with
Retry-After that `inferd serve` writes, so clients see one behaviour.

A request goes to its replica straight over Serve's inter-deployment gRPC channel rather than as a Ray actor
call, which passes an argument past 100 KiB (an image, a tensor) through the object store; bodies the replicas'
gRPC server would refuse (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH, 4 MiB by default) still go by reference.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from grpc.aio import AioRpcError
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve._private.constants import RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferd.deploy.ray.replica import Answer, Forwarded, bind_to_node_address
from inferd.deploy.ray.settings import RETRY_AFTER_S
from inferd.errors import InferdError, ModelNotFound
from inferd.serve.repository import check_name
from inferd.serve.responses import json_error

_MODEL_PATH = re.compile(r"^/(?:v2/models|predict|embed)/(?P<model>[^/]+)")
_REPOSITORY_CONTROL = re.compile(r"^/v2/repository/models/[^/]+/(?:load|unload)$")
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"content-length"}
# Server-wide answers, merged from every deployment: (method, path) -> the key of the list to merge, "" for a list
# (the repository index), None for an answer all must give alike (health: the first, unless one is not 200).
_FAN_OUT: dict[tuple[str, str], str | None] = {
    ("GET", "/models"): "models", ("GET", "/health"): None,
    ("POST", "/v2/repository/index"): "", ("GET", "/v2/models/stats"): "model_stats",
}
_STATE_RANK = {"READY": 0, "LOADING": 1, "UNLOADING": 2}
_REFUSALS = (BackPressureError, DeploymentUnavailableError, RayActorError, ActorUnavailableError, AioRpcError)
_GRPC_ROOM = 64 * 1024  # the pickled Forwarded around its body: method, path, headers
REFUSED_CONTROL = ("on Ray Serve the models are part of the application: change the repository and redeploy "
                   "(`serve deploy`, or `inferd serve --ray` again) instead of loading or unloading one replica's")


@dataclass(frozen=True)
class Catalog:
    """What the router knows of the repository: its models, and those `POST /predict` and `/embed` default to."""

    models: list[str]
    image_default: str | None
    text_default: str | None
    max_body_bytes: int
    multiplexed: bool


class Ingress:
    """`handles` maps each model to its deployment (multiplexed: every model to the one deployment)."""

    def __init__(self, catalog: Catalog, handles: dict[str, DeploymentHandle]) -> None:
        bind_to_node_address()
        self.catalog = catalog
        self.handles = handles
        self.direct = {model: handle.options(_by_reference=False) for model, handle in handles.items()}
        self.deployments = list({handle.deployment_name: handle for handle in handles.values()}.values())

    def __serve_build_asgi_app__(self) -> Starlette:
        methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", self.http, methods=methods)])

    # -- HTTP -------------------------------------------------------------------------------------

    async def http(self, request: Request) -> Response:
        path = request.url.path
        if path in ("/predict", "/embed"):  # the default models, named so the request lands where they live
            default = self.catalog.image_default if path == "/predict" else self.catalog.text_default
            path = f"{path}/{default}" if default else path
        if _REPOSITORY_CONTROL.match(path):
            return json_error(400, REFUSED_CONTROL)
        body = await _body(request, self.catalog.max_body_bytes)
        if isinstance(body, Response):
            return body
        raw_path = path if path != request.url.path else request.scope.get("raw_path", path.encode()).decode("latin-1")
        forwarded = Forwarded(request.method, raw_path, request.scope.get("query_string", b""),
                              [(k, v) for k, v in request.headers.raw if k not in _HOP_BY_HOP], body)
        if (request.method, path) in _FAN_OUT:
            return await self._fan_out(forwarded, _FAN_OUT[request.method, path])
        matched = _MODEL_PATH.match(path)
        model = matched["model"] if matched and path != "/v2/models/stats" else None
        if model is not None and model not in self.handles:
            if _is_model_name(model):
                return _not_found(model, self.catalog.models)
            model = None  # not a name at all: any replica's app answers it exactly as `inferd serve` does
        try:
            answer: Answer = await self._handle(model, len(body)).forward.remote(forwarded)
        except _REFUSALS as exc:
            return _refusal(exc)
        return _relay(answer)

    def _handle(self, model: str | None, size: int = 0) -> DeploymentHandle:
        """A model's deployment; for a model not in the repository, any one, whose app then says what is there."""
        handles = self.direct if size <= RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH - _GRPC_ROOM else self.handles
        if model is None or model not in handles:
            return self.deployments[0]
        handle = handles[model]
        return handle.options(multiplexed_model_id=model) if self.catalog.multiplexed else handle

    async def _fan_out(self, forwarded: Forwarded, key: str | None) -> Response:
        try:
            answers: list[Answer] = await asyncio.gather(*(h.forward.remote(forwarded) for h in self.deployments))
        except _REFUSALS as exc:
            return _refusal(exc)
        failed = next((answer for answer in answers if answer.status != 200), None)
        if failed is not None or key is None:
            return _relay(failed or answers[0])
        payloads = [json.loads(answer.body) for answer in answers]
        if key == "":  # each deployment lists every model on disk; the one that serves a model knows its state
            rows: dict[tuple[str, str], dict[str, str]] = {}
            for row in (row for payload in payloads for row in payload):
                known = rows.get((row["name"], row["version"]))
                if known is None or _STATE_RANK.get(row["state"], 3) < _STATE_RANK.get(known["state"], 3):
                    rows[row["name"], row["version"]] = row
            return JSONResponse([rows[k] for k in sorted(rows)])
        return JSONResponse({**payloads[0], key: [item for payload in payloads for item in payload[key]]})


def _retry_after(exc: Exception) -> float:
    return getattr(exc, "retry_after_s", None) or RETRY_AFTER_S


def _refusal_message(exc: Exception) -> str:
    if isinstance(exc, BackPressureError):
        return f"the model's queue is full ({exc.message}); retry after the Retry-After delay"
    if isinstance(exc, DeploymentUnavailableError):
        return "the model's deployment is unavailable; retry shortly"
    return "the replica serving this request was lost; retry: Serve routes the retry to a live replica"


def _refusal(exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, BackPressureError) else 503
    return json_error(status, _refusal_message(exc), {"Retry-After": str(max(1, round(_retry_after(exc))))})


async def _body(request: Request, limit: int) -> bytes | Response:
    """The whole body, or 413 past `limit` without reading the rest (the replica's app checks it again)."""
    declared = request.headers.get("content-length", "")
    too_large = json_error(413, f"the request body exceeds {limit} bytes; send a smaller one")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _is_model_name(model: str) -> bool:
    try:
        check_name(model)
    except InferdError:
        return False
    return True


def _not_found(model: str, models: list[str]) -> Response:
    return json_error(404, ModelNotFound(f"model {model!r} not found; available: {models}").message)


def _relay(answer: Answer) -> Response:
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = answer.headers  # as the replica's app wrote them, Content-Length included
    return response
