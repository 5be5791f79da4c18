"""What the V2 protocol says about the server and its models, as plain dicts both faces (HTTP and gRPC) send.

A text model shows its text input (BYTES, one string per batch row), not the token tensors it is
tokenized into. Triton's model configuration also goes the other way: a load request may carry one
as its `config` parameter, as Triton's Model Analyzer does to try batch sizes and instance counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from inferd.errors import InvalidInput
from inferd.runtime import devices
from inferd.serve.repository import ModelEntry, ModelRepository
from inferd.serve.v2.json_values import as_object, parse_object
from inferd.serve.v2.types import datatype_of
from inferd.types import ImageType, TextType
from inferd.version import __version__

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics", "logging"]


def server_metadata(shared_memory: bool) -> dict[str, Any]:
    extensions = [*EXTENSIONS, "system_shared_memory"] if shared_memory else EXTENSIONS
    return {"name": "inferd", "version": __version__, "extensions": extensions}


def v2_datatype(dtype: str) -> str:
    return datatype_of(np.dtype(object if dtype == "string" else dtype))


def model_metadata(repository: ModelRepository, entry: ModelEntry) -> dict[str, Any]:
    """Shapes as Triton derives them from the configuration (`triton_config`): a text input, one string per row,
    is configured as dims [1] reshaped to [], so its shape here is [-1, 1], as Triton's tools (perf_analyzer)
    expect; requests may send the strings as [N] or [N, 1]."""
    manifest = entry.model.manifest

    def input_shape(spec: Any) -> list[int]:
        return [-1, 1] if isinstance(spec, TextType) and manifest.batch_dynamic else list(spec.shape)

    return {
        "name": entry.name,
        "versions": repository.versions(entry.name),
        "platform": "onnx",
        "inputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": input_shape(s)} for s in manifest.inputs],
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
        "instance_group": [{"name": entry.name, "kind": _instance_kind(entry.model.load_info.device),
                            "count": entry.config.instances}],
        "parameters": {"precision": {"string_value": entry.model.load_info.precision},
                       "precision_choice": {"string_value": entry.model.load_info.precision_choice.get("reason", "")}},
    }
    if max_batch > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": entry.config.preferred_batch_sizes,
            "max_queue_delay_microseconds": int(entry.config.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": entry.config.max_queue_size,
                                     "default_timeout_microseconds": int((entry.config.timeout_s or 0) * 1e6)},
        }
    return config


# Fields of a Triton config that describe the model rather than how it is served: taken as they are
# (a client sends back what `triton_config` gave it), since the package, not the config, decides them.
_DESCRIPTIVE = frozenset({"name", "platform", "backend", "runtime", "version_policy", "input", "output", "parameters",
                          "default_model_filename"})
_BATCHING = frozenset({"max_queue_delay_microseconds", "preferred_batch_size", "default_queue_policy"})
_QUEUE_POLICY = frozenset({"max_queue_size", "default_timeout_microseconds"})
_INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")


def serving_overrides(model: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The serving settings a load request's parameters set: Triton's `config` override, read as a patch.

    Settings the config leaves out keep their values (flags and serving.toml),
    where Triton would reset them, so that `{"max_batch_size": 4}` is a whole request.
    """
    if any(key.startswith("file:") for key in parameters):
        raise InvalidInput("inferd loads packages from its repository; put the package in the repository "
                           "directory instead of sending model files with the load request")
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        raise InvalidInput(f"unknown load parameter(s) {unknown}; a load takes only 'config', a Triton model config")
    if "config" not in parameters:
        return {}
    config = _json_object(parameters["config"], "the 'config' parameter")
    if config.get("name", model) != model:
        raise InvalidInput(f"the config is for model {config['name']!r}, not {model!r}")
    _only(config, _DESCRIPTIVE | {"max_batch_size", "dynamic_batching", "instance_group"}, "config",
          "max_batch_size, dynamic_batching and instance_group (the rest describes the package)")
    overrides: dict[str, Any] = {}
    if "max_batch_size" in config:
        size = config["max_batch_size"]
        overrides["max_batch_size"] = 1 if size == 0 else size  # Triton's 0: requests are not batched
    batching = config.get("dynamic_batching")
    if batching is not None:
        batching = as_object(batching, "dynamic_batching")
        _only(batching, _BATCHING, "dynamic_batching", ", ".join(sorted(_BATCHING)))
        if "max_queue_delay_microseconds" in batching:
            overrides["max_queue_delay_ms"] = _number(batching["max_queue_delay_microseconds"],
                                                      "max_queue_delay_microseconds") / 1000
        if "preferred_batch_size" in batching:
            overrides["preferred_batch_sizes"] = batching["preferred_batch_size"]
        policy = as_object(batching.get("default_queue_policy"), "default_queue_policy")
        _only(policy, _QUEUE_POLICY, "default_queue_policy", ", ".join(sorted(_QUEUE_POLICY)))
        if "max_queue_size" in policy:
            overrides["max_queue_size"] = policy["max_queue_size"]
        if "default_timeout_microseconds" in policy:
            timeout_us = _number(policy["default_timeout_microseconds"], "default_timeout_microseconds")
            overrides["timeout_s"] = timeout_us / 1e6 if timeout_us else None  # Triton's 0: no deadline
    groups = config.get("instance_group")
    if groups is not None:
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise InvalidInput("instance_group must be a list of objects such as {\"count\": 2, \"kind\": \"KIND_CPU\"}")
        _check_instance_kinds(groups)
        overrides["instances"] = sum(_number(g.get("count", 1), "an instance group's count") for g in groups)
    return overrides


def _instance_kind(device: str) -> str:
    """Triton's name for where the model runs; KIND_MODEL (the model decides) for what Triton has no kind for."""
    device = device.upper()
    return "KIND_CPU" if "CPU" in device else "KIND_GPU" if "GPU" in device else "KIND_MODEL"


def _check_instance_kinds(groups: list[dict[str, Any]]) -> None:
    """A kind that cannot hold is refused rather than ignored: KIND_GPU on a machine whose backends reach no GPU."""
    kinds = [group.get("kind", "KIND_AUTO") for group in groups]
    for kind in kinds:
        if kind not in _INSTANCE_KINDS:
            raise InvalidInput(f"instance_group kind {json.dumps(kind)} is not one of {', '.join(_INSTANCE_KINDS)}")
    if "KIND_GPU" in kinds and not any(device.kind == "gpu" for device in devices()):
        raise InvalidInput("instance_group kind KIND_GPU: no backend on this machine reaches a GPU (`inferd devices` "
                           "lists what they reach); use KIND_CPU or KIND_AUTO")


def check_unload_parameters(parameters: Mapping[str, Any]) -> None:
    """Triton's one unload parameter, `unload_dependents`, changes nothing here: no inferd model depends on another."""
    unknown = sorted(set(parameters) - {"unload_dependents"})
    if unknown:
        raise InvalidInput(f"unknown unload parameter(s) {unknown}; an unload takes only 'unload_dependents'")


def _json_object(text: Any, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string holding a JSON object (a Triton model config)")
    return parse_object(text, what)


def _only(fields: Mapping[str, Any], known: frozenset[str], what: str, read: str) -> None:
    unsupported = sorted(set(fields) - known)
    if unsupported:
        raise InvalidInput(f"{what} field(s) {unsupported} are not supported; inferd reads {read} there")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number, not {json.dumps(value)}")
    return value
