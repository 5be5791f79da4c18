"""The API document (`/openapi.json`): every operation with the statuses it really answers and bodies as strict
as the server reads them.

FastAPI derives a document from handler signatures, which says too little here: it lists only 200 and a 422
the server never sends (validation errors are 400s), and the V2 routes read their bodies by hand. So the
document FastAPI builds is finished here: every error status an operation can answer, each with the one
error body (`inferd.serve.responses`), the statuses every route may answer because of the middlewares
around all of them, the V2 bodies of `inferd.serve.v2.schema`, exact path parameters, and, with an API key,
the security schemes and their 401. An operation missing from the tables is an error when the document is
built, so a new route cannot go undocumented.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI

from inferd.io.images import IMAGE_MEDIA_TYPES
from inferd.io.text import MAX_TEXT_CHARS
from inferd.serve.repository import ModelRepository
from inferd.serve.responses import ERROR_SCHEMA
from inferd.serve.settings import ServerSettings
from inferd.serve.text import takes_text
from inferd.serve.v2 import schema as v2
from inferd.serve.v2.schema_tensors import Schema, ref
from inferd.types import ImageType

MEANINGS = {
    400: "the request is malformed or names something invalid; the error says what and how to fix it",
    401: "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    403: "turned off on this server (system shared memory needs --allow-shared-memory)",
    404: "no such model or version, or no model that takes this kind of input",
    408: "the request body stalled (--body-timeout)",
    413: "the body, an image or a tensor is over the server's limits",
    415: "a Content-Encoding other than gzip, deflate or identity",
    429: "the model's queue is full; retry after Retry-After seconds",
    503: "the server or the model is loading or unloading; retry after Retry-After seconds",
    504: "the request's deadline passed before the model ran it",
}

# Answered on any route by the middlewares around all of them: a malformed Content-Length or compressed body
# (400), a body that stalls (408) or is over the limit (413), a Content-Encoding the server cannot read (415).
EVERY_ROUTE = (400, 408, 413, 415)

_RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                                "description": "seconds to wait before retrying"}}
_HEADERS = {429: _RETRY_AFTER, 503: _RETRY_AFTER,
            401: {"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}}}

_INFERENCE = (400, 404, 413, 429, 503, 504)


def _embed_body(rows: int) -> dict[str, Any]:
    texts = {"type": "array", "minItems": 1, "maxItems": rows, "items": {"type": "string", "maxLength": MAX_TEXT_CHARS},
             "description": f"at most {rows} texts (max_request_rows; a model's serving.toml may set its own)"}
    return {"required": True, "description": "a JSON list of texts, or {\"inputs\": [...]} as in Hugging Face's APIs",
            "content": {"application/json": {
                "schema": {"anyOf": [texts, {"type": "object", "required": ["inputs"], "additionalProperties": False,
                                             "properties": {"inputs": texts}}]},
                "example": {"inputs": ["a cat", "a kitten", "stock market"]}}}}


def _health(*states: str) -> Schema:
    return {"type": "object", "required": ["status"], "additionalProperties": False,
            "properties": {"status": {"enum": list(states)}}}


def rest_operations(rows: int) -> dict[str, dict[str, Any]]:
    """The simple REST face's operations, as the V2 face's are in `inferd.serve.v2.schema.OPERATIONS`; `images`
    names the multipart field that carries image files, `answers` the statuses whose body is not an error."""
    return {
        "GET /health": {"ok": _health("ok"), "answers": {503: ("loading or draining: send no work here",
                                                               _health("loading", "draining"))}},
        "GET /models": {},
        "POST /predict": {"errors": _INFERENCE, "images": "image"},
        "POST /predict/{model}": {"errors": _INFERENCE, "images": "image", "models": "classifiers"},
        "POST /predict/{model}/batch": {"errors": _INFERENCE, "images": "images", "rows": rows,
                                        "models": "classifiers"},
        "POST /embed": {"errors": _INFERENCE, "body": _embed_body(rows)},
        "POST /embed/{model}": {"errors": _INFERENCE, "body": _embed_body(rows), "models": "text"},
    }

# A name as `inferd.serve.repository.check_name` takes it: the pattern spells "no '..'" without a lookahead.
_NAME = {"type": "string", "maxLength": 128, "pattern": r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$"}
PATH_PARAMETERS: dict[str, Schema] = {
    "model": _NAME,
    "version": _NAME,
    "region": {"type": "string", "minLength": 1, "maxLength": 256},
}


def install(app: FastAPI, settings: ServerSettings, open_paths: Collection[str]) -> None:
    """Serve the finished document at the app's openapi URL, built again only when the models served change
    (the REST routes that take a model name list the models they take)."""
    derived: Callable[[], dict[str, Any]] = app.openapi
    built: dict[Served, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        served = _served(getattr(app.state, "repository", None))
        if served not in built:
            built.clear()
            built[served] = finish(copy.deepcopy(derived()), api_key=settings.api_key is not None,
                                   open_paths=open_paths, rows=settings.models.max_request_rows, served=served)
        return built[served]

    app.openapi = openapi  # type: ignore[method-assign]


Served = tuple[tuple[str, ...], tuple[str, ...]]
"""The image classifiers and the text models the repository serves."""


def _served(repository: ModelRepository | None) -> Served:
    if repository is None:
        return (), ()
    models = {name: repository.get(name).model for name in repository.names()}
    classifiers = tuple(name for name, model in models.items()
                        if model.manifest.classifier is not None and any(isinstance(spec, ImageType)
                                                                         for spec in model.manifest.inputs))
    return classifiers, tuple(name for name, model in models.items() if takes_text(model))


def finish(document: dict[str, Any], *, api_key: bool, open_paths: Collection[str], rows: int,
           served: Served = ((), ())) -> dict[str, Any]:
    """FastAPI's document with the truth about each operation; raises KeyError for an operation in no table.

    `rows` is the server's max_request_rows, the most images or texts one request may carry.
    """
    classifiers, texts = served
    names = {"classifiers": classifiers, "text": texts}
    operations = {**rest_operations(rows), **v2.OPERATIONS}
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update({"Error": ERROR_SCHEMA, **v2.COMPONENTS})
    if api_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"},
                                         "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            key = f"{method.upper()} {path}"
            if key not in operations:
                raise KeyError(f"{key} is not in the API document's tables; declare its statuses and bodies")
            secured = api_key and path not in open_paths
            truth = operations[key]
            _finish_operation(operation, truth, secured=secured, path=path)
            if "models" in truth:
                _only_models(operation, names[truth["models"]], truth["models"])
            if "rows" in operations[key]:
                body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                schemas[body["$ref"].rsplit("/", 1)[1]]["properties"]["images"]["maxItems"] = truth["rows"]
    return document


def _finish_operation(operation: dict[str, Any], truth: dict[str, Any], *, secured: bool, path: str) -> None:
    responses = operation["responses"]
    responses.pop("422", None)
    ok = responses.setdefault("200", {"description": "Successful Response"})
    if "ok" in truth:
        ok["content"] = {"application/json": {"schema": truth["ok"]}}
    if "ok_content" in truth:
        ok["content"] = truth["ok_content"]
        ok["headers"] = truth["ok_headers"]
    if "body" in truth:
        operation["requestBody"] = truth["body"]
    if "images" in truth:
        multipart = operation["requestBody"]["content"]["multipart/form-data"]
        multipart["encoding"] = {truth["images"]: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}}
    statuses = {*truth.get("errors", ()), *EVERY_ROUTE, *((401,) if secured else ())}
    for status in sorted(statuses):
        answer: dict[str, Any] = {"description": MEANINGS[status],
                                  "content": {"application/json": {"schema": ref("Error")}}}
        if status in _HEADERS:
            answer["headers"] = _HEADERS[status]
        responses[str(status)] = answer
    for status, (description, body) in truth.get("answers", {}).items():
        responses[str(status)] = {"description": description, "content": {"application/json": {"schema": body}}}
    if secured:
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
    # The path's own parameters, whether or not the handler takes them as arguments (some read them from the path).
    in_path = re.findall(r"{(\w+)}", path)
    others = [p for p in operation.get("parameters", []) if p["in"] not in ("path", "header")]
    operation["parameters"] = [
        {"name": name, "in": "path", "required": True, "schema": dict(PATH_PARAMETERS[name])} for name in in_path
    ] + others + truth.get("parameters", [])


def _only_models(operation: dict[str, Any], names: tuple[str, ...], kind: str) -> None:
    """A REST route's model: one of the served models it takes (others are answered 400 or 404)."""
    model = next(p for p in operation["parameters"] if p["name"] == "model")
    what = "image classifiers" if kind == "classifiers" else "text models"
    model["description"] = f"one of the {what} this server serves now"
    nothing: Schema = {"not": {}}
    model["schema"] = {"type": "string", "enum": list(names)} if names else nothing
