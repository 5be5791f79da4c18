"""What the V2 protocol says about the server and its models, as plain dicts both faces (HTTP and gRPC) send.

A text model shows its text input (BYTES, one string per batch row), not the token tensors it is
tokenized into.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd import __version__
from inferd.serve.repository import ModelEntry, ModelRepository
from inferd.serve.v2.codec import datatype_of
from inferd.types import ImageType

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics"]


def server_metadata(shared_memory: bool) -> dict[str, Any]:
    extensions = [*EXTENSIONS, "system_shared_memory"] if shared_memory else EXTENSIONS
    return {"name": "inferd", "version": __version__, "extensions": extensions}


def v2_datatype(dtype: str) -> str:
    return datatype_of(np.dtype(object if dtype == "string" else dtype))


def model_metadata(repository: ModelRepository, entry: ModelEntry) -> dict[str, Any]:
    manifest = entry.model.manifest
    return {
        "name": entry.name,
        "versions": repository.versions(entry.name),
        "platform": "onnx",
        "inputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": list(s.shape)} for s in manifest.inputs],
        "outputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": list(s.shape)}
                    for s in manifest.outputs],
        "parameters": {"backend": entry.model.load_info.backend, "device": entry.model.load_info.device,
                       "precision": entry.model.load_info.precision},
    }


def statistics(repository: ModelRepository, model: str | None, version: str | None) -> dict[str, Any]:
    """Triton's inference statistics: every model, every version of one, or one version."""
    if model is None:
        entries = repository.entries()
    elif version is None:
        repository.get(model)
        entries = [repository.get(model, v) for v in repository.versions(model)]
    else:
        entries = [repository.get(model, version)]
    return {"model_stats": [e.stats.as_triton(e.name, e.version) for e in entries]}


def _triton_type(dtype: str) -> str:
    datatype = v2_datatype(dtype)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def triton_config(entry: ModelEntry) -> dict[str, Any]:
    """Triton's model configuration: dims exclude the batch dimension when max_batch_size > 0."""
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
