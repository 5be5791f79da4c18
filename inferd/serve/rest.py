"""The simple REST face: multipart image uploads in, top-k labels out; JSON texts in, embeddings out.

For people with curl and a photo or a sentence. Everything a tensor client needs
lives in the V2 face; both share the repository and the paths in `images.py` and `text.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from inferd.errors import InvalidInput, ModelNotFound
from inferd.io import Prediction
from inferd.runtime import CompiledModel
from inferd.serve import text
from inferd.serve.batching.inputs import Checked, text_rows
from inferd.serve.disconnect import when_client_gone
from inferd.serve.images import classify
from inferd.serve.repository import ModelRepository
from inferd.serve.settings import MAX_TIMEOUT_S, ServerSettings
from inferd.serve.v2.json_values import loads
from inferd.types import ImageType

router = APIRouter(tags=["simple REST"])


class Label(BaseModel):
    label: str
    index: int
    probability: float


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Label]
    latency_ms: float


class BatchItem(BaseModel):
    filename: str | None
    predictions: list[Label]


class BatchResponse(BaseModel):
    model: str
    version: str
    results: list[BatchItem]
    latency_ms: float


class EmbedResponse(BaseModel):
    model: str
    version: str
    embeddings: list[list[float]]
    dim: int
    latency_ms: float


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    inputs: list[dict[str, object]]
    labels: int
    backend: str
    device: str
    precision: str


def _repository(request: Request) -> ModelRepository:
    return request.app.state.repository


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _labels(predictions: list[Prediction]) -> list[Label]:
    return [Label(label=p.label, index=p.index, probability=p.probability) for p in predictions]


def _takes_image(model: CompiledModel) -> bool:
    return any(isinstance(spec, ImageType) for spec in model.manifest.inputs)


def _default_model_name(request: Request, serves: Callable[[CompiledModel], bool], what: str) -> str:
    """`--default-model` where it takes `what` the route receives (or is not loaded, to say so), else the first such."""
    settings, repository = _settings(request), _repository(request)
    default = settings.default_model
    if default and (default not in repository.names() or serves(repository.get(default).model)):
        return default
    names = [name for name in repository.names() if serves(repository.get(name).model)]
    if not names:
        raise ModelNotFound(f"the repository {settings.repository} holds no model that takes {what} "
                            f"(models: {repository.names()}); run `inferd prepare` first")
    return names[0]


TopK = Annotated[int, Query(ge=1, le=1000, description="how many labels to return")]
TimeoutMs = Annotated[float | None, Query(gt=0, le=MAX_TIMEOUT_S * 1000, allow_inf_nan=False,
                                          description="deadline in milliseconds (default: the model's)")]


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while serving, 503 while loading or draining, so a balancer stops sending work; open without the API
    key, so it names no model (GET /models does, with the key)."""
    state = request.app.state
    status = "ok" if state.ready else "draining" if getattr(state, "draining", False) else "loading"
    return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)


@router.get("/models")
async def models(request: Request) -> dict[str, list[ModelSummary]]:
    repository = _repository(request)
    summaries = []
    for name in repository.names():
        model = repository.get(name).model
        classifier = model.manifest.classifier
        summaries.append(ModelSummary(
            name=name, versions=repository.versions(name),
            inputs=[spec.model_dump(mode="json") for spec in model.manifest.inputs],
            labels=len(classifier.labels) if classifier else 0,
            backend=model.load_info.backend, device=model.load_info.device, precision=model.load_info.precision,
        ))
    return {"models": summaries}


async def _predict_one(
    request: Request, name: str, image: UploadFile, top_k: int, timeout_ms: float | None
) -> PredictResponse:
    started = time.perf_counter()
    entry = _repository(request).get(name)
    request.state.model, request.state.model_version = entry.name, entry.version  # labels for metrics and logs
    settings = _settings(request)
    data = await image.read()
    with entry.measured() as phases:
        (predictions,) = await classify(
            entry, [data], k=top_k, max_pixels=settings.max_image_pixels, phases=phases,
            timeout_s=timeout_ms / 1000 if timeout_ms else None, disconnected=when_client_gone(request),
        )
    return PredictResponse(model=entry.name, version=entry.version, predictions=_labels(predictions),
                           latency_ms=(time.perf_counter() - started) * 1000)


@router.post("/predict", response_model=PredictResponse)
async def predict_default(
    request: Request, image: Annotated[UploadFile, File()], top_k: TopK = 5, timeout_ms: TimeoutMs = None
) -> PredictResponse:
    """Classify one image with the default model."""
    return await _predict_one(request, _default_model_name(request, _takes_image, "images"), image, top_k, timeout_ms)


@router.post("/predict/{model}", response_model=PredictResponse)
async def predict(
    request: Request, model: str, image: Annotated[UploadFile, File()], top_k: TopK = 5, timeout_ms: TimeoutMs = None
) -> PredictResponse:
    """Classify one image with the named model."""
    return await _predict_one(request, model, image, top_k, timeout_ms)


@router.post("/predict/{model}/batch", response_model=BatchResponse)
async def predict_batch(
    request: Request, model: str, images: Annotated[list[UploadFile], File()], top_k: TopK = 5,
    timeout_ms: TimeoutMs = None,
) -> BatchResponse:
    """Classify several images in one inference batch."""
    started = time.perf_counter()
    entry = _repository(request).get(model)
    settings = _settings(request)
    payloads = [await upload.read() for upload in images]
    with entry.measured() as phases:
        ranked = await classify(entry, payloads, k=top_k, max_pixels=settings.max_image_pixels, phases=phases,
                                timeout_s=timeout_ms / 1000 if timeout_ms else None,
                                disconnected=when_client_gone(request))
    return BatchResponse(
        model=entry.name, version=entry.version,
        results=[BatchItem(filename=upload.filename, predictions=_labels(p)) for upload, p in zip(images, ranked, strict=True)],
        latency_ms=(time.perf_counter() - started) * 1000,
    )


TEXTS_EXAMPLE = {"inputs": ["a cat", "a kitten", "stock market"]}


def _texts(body: bytes) -> np.ndarray:
    """The texts of an /embed body, a JSON list of strings or {"inputs": [...]} as in Hugging Face's APIs, checked
    once and held as the batcher carries them."""
    usage = 'send a JSON list of strings like ["a cat", "a dog"], or {"inputs": ["a cat", "a dog"]}'
    payload: Any = loads(body, "the body", usage)
    if isinstance(payload, dict):
        unknown = sorted(set(payload) - {"inputs"})
        if unknown or "inputs" not in payload:
            raise InvalidInput(f"the JSON object must have exactly the key 'inputs', got {sorted(payload)}; {usage}")
        payload = payload["inputs"]
    if not isinstance(payload, list):
        raise InvalidInput(f"expected a list of texts, got {type(payload).__name__}; {usage}")
    return text_rows(payload)


async def _embed(request: Request, name: str, timeout_ms: float | None) -> EmbedResponse:
    started = time.perf_counter()
    entry = _repository(request).get(name)
    request.state.model, request.state.model_version = entry.name, entry.version  # labels for metrics and logs
    spec = text.text_spec(entry.model, entry.name)  # a wrong model is named before the body is read
    entry.admit()
    body = await request.body()
    outputs = [output.name for output in entry.model.manifest.outputs]
    if len(outputs) != 1:
        raise InvalidInput(f"model {entry.name!r} has outputs {outputs}, not one embedding; "
                           f"use /v2/models/{entry.name}/infer")
    with entry.measured() as phases:
        with phases.input():
            texts = _texts(body)
        result = await entry.infer(Checked({spec.name: texts}), phases=phases, disconnected=when_client_gone(request),
                                   timeout_s=timeout_ms / 1000 if timeout_ms else None)
        with phases.output():
            embeddings = result[outputs[0]]
            response = EmbedResponse(model=entry.name, version=entry.version, embeddings=embeddings.tolist(),
                                     dim=int(embeddings.shape[1]), latency_ms=(time.perf_counter() - started) * 1000)
    return response


# The body is read in the handler, after the admission check, so any mistake gets inferd's own message;
# this only documents it for /docs.
_TEXTS_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"anyOf": [{"type": "array", "items": {"type": "string"}},
                         {"type": "object", "properties": {"inputs": {"type": "array", "items": {"type": "string"}}},
                          "required": ["inputs"]}]},
    "example": TEXTS_EXAMPLE,
}}}}


@router.post("/embed", response_model=EmbedResponse, openapi_extra=_TEXTS_BODY)
async def embed_default(request: Request, timeout_ms: TimeoutMs = None) -> EmbedResponse:
    """Embed texts with the default text model: one unit vector per text."""
    return await _embed(request, _default_model_name(request, text.takes_text, "text"), timeout_ms)


@router.post("/embed/{model}", response_model=EmbedResponse, openapi_extra=_TEXTS_BODY)
async def embed(request: Request, model: str, timeout_ms: TimeoutMs = None) -> EmbedResponse:
    """Embed texts with the named model: one unit vector per text."""
    return await _embed(request, model, timeout_ms)
