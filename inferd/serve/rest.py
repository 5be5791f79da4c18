"""The simple REST face: multipart image uploads in, top-k labels out.

For people with curl and a photo. Everything a tensor client needs lives in the
V2 face; both share the repository and the image path in `images.py`.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel

from inferd.errors import InvalidInput, ModelNotFound
from inferd.io import Prediction
from inferd.serve.images import classify
from inferd.serve.repository import ModelRepository
from inferd.serve.settings import ServerSettings

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


def _default_model_name(request: Request) -> str:
    settings, repository = _settings(request), _repository(request)
    if settings.default_model:
        return settings.default_model
    names = repository.names()
    if not names:
        raise ModelNotFound(f"the repository {settings.repository} holds no models; run `inferd prepare` first")
    return names[0]


TopK = Annotated[int, Query(ge=1, le=1000, description="how many labels to return")]
TimeoutMs = Annotated[float | None, Query(gt=0, description="deadline in milliseconds (default: the model's)")]


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    ready = getattr(request.app.state, "ready", False)
    return {"status": "ok" if ready else "loading", "models": _repository(request).names()}


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
    (predictions,) = await classify(
        entry, [data], k=top_k, max_pixels=settings.max_image_pixels,
        timeout_s=timeout_ms / 1000 if timeout_ms else None, disconnected=request.is_disconnected,
    )
    return PredictResponse(model=entry.name, version=entry.version, predictions=_labels(predictions),
                           latency_ms=(time.perf_counter() - started) * 1000)


@router.post("/predict", response_model=PredictResponse)
async def predict_default(
    request: Request, image: Annotated[UploadFile, File()], top_k: TopK = 5, timeout_ms: TimeoutMs = None
) -> PredictResponse:
    """Classify one image with the default model."""
    return await _predict_one(request, _default_model_name(request), image, top_k, timeout_ms)


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
    if len(images) > 256:
        raise InvalidInput(f"{len(images)} images in one batch; send at most 256 per request")
    payloads = [await upload.read() for upload in images]
    ranked = await classify(entry, payloads, k=top_k, max_pixels=settings.max_image_pixels,
                            timeout_s=timeout_ms / 1000 if timeout_ms else None, disconnected=request.is_disconnected)
    return BatchResponse(
        model=entry.name, version=entry.version,
        results=[BatchItem(filename=upload.filename, predictions=_labels(p)) for upload, p in zip(images, ranked, strict=True)],
        latency_ms=(time.perf_counter() - started) * 1000,
    )
