"""The V2 bodies as JSON Schema, for the API document: what the HTTP face reads and writes, as strictly as it does.

The V2 routes read their bodies by hand (tritonclient sends JSON without a JSON content type, and the
decoder's own messages beat a generic validation error), so their schemas are written here rather than
derived from handler signatures. Each is held to the decoder's rules: an element of an INT8 tensor is an
integer from -128 to 127, a float may be "NaN", "Infinity" or "-Infinity", a shape has at most 32
non-negative dimensions, and JSON null for an optional field means the field is absent. What JSON Schema
cannot say (the values must fill the shape, the inputs must be the model's) is said in the descriptions;
`GET /v2/models/{model}` gives each model's inputs. The inference bodies are `schema_tensors.py`'s; the
control bodies and every operation's statuses are here.
"""

from __future__ import annotations

from typing import Any

from inferd.serve.log_settings import LogSettings
from inferd.serve.v2.decode import INFERENCE_HEADER
from inferd.serve.v2.schema_tensors import (
    BINARY_BODY,
    BINARY_RESPONSE,
    COUNT,
    INFERENCE_HEADER_PARAMETER,
    TENSOR_COMPONENTS,
    Schema,
    nullable,
    ref,
)
from inferd.serve.v2.types import DATATYPES

_TENSOR_METADATA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "datatype": {"enum": list(DATATYPES)},
                   "shape": {"type": "array", "items": {"type": "integer", "minimum": -1},
                             "description": "-1 for a dimension of any size"}},
}

_DURATION = {"type": "object", "required": ["count", "ns"], "additionalProperties": False,
             "properties": {"count": COUNT, "ns": COUNT}}

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")

_MODEL_STATS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "version", "last_inference", "inference_count", "execution_count", "inference_stats",
                 "batch_stats"],
    "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "last_inference": {**COUNT, "description": "milliseconds since the epoch; 0 before the first"},
        "inference_count": COUNT, "execution_count": COUNT,
        "inference_stats": {"type": "object", "additionalProperties": False, "required": list(_PHASES),
                            "properties": dict.fromkeys(_PHASES, ref("V2Duration"))},
        "batch_stats": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["batch_size", *_BATCH_PHASES],
            "properties": {"batch_size": {"type": "integer", "minimum": 1},
                           **dict.fromkeys(_BATCH_PHASES, ref("V2Duration"))}}},
    },
}

_TRITON_TENSOR = {
    "type": "object",
    "required": ["name", "data_type", "dims"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "data_type": {"enum": [f"TYPE_{d}" if d != "BYTES" else "TYPE_STRING" for d in DATATYPES]},
        "dims": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        "format": {"enum": ["FORMAT_NCHW", "FORMAT_NHWC"]},
        "reshape": {"type": "object", "required": ["shape"], "additionalProperties": False,
                    "properties": {"shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}}},
    },
}


def _string_value() -> Schema:
    return {"type": "object", "required": ["string_value"], "additionalProperties": False,
            "properties": {"string_value": {"type": "string"}}}


MODEL_CONFIG = {
    "type": "object",
    "description": "Triton's model configuration (dims leave out the batch dimension when max_batch_size > 0)",
    "additionalProperties": False,
    "required": ["name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
                 "instance_group", "parameters"],
    "properties": {
        "name": {"type": "string"}, "platform": {"const": "onnxruntime_onnx"}, "backend": {"type": "string"},
        "version_policy": {"const": {"all": {}}},
        "max_batch_size": {"type": "integer", "minimum": 0},
        "input": {"type": "array", "items": ref("V2TritonTensor")},
        "output": {"type": "array", "items": ref("V2TritonTensor")},
        "instance_group": {"type": "array", "items": {
            "type": "object", "required": ["name", "kind", "count"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "kind": {"enum": ["KIND_CPU", "KIND_GPU"]},
                           "count": {"type": "integer", "minimum": 1}}}},
        "parameters": {"type": "object", "required": ["precision", "precision_choice"], "additionalProperties": False,
                       "properties": {"precision": _string_value(), "precision_choice": _string_value()}},
        "dynamic_batching": {
            "type": "object", "additionalProperties": False,
            "required": ["preferred_batch_size", "max_queue_delay_microseconds", "default_queue_policy"],
            "properties": {
                "preferred_batch_size": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "max_queue_delay_microseconds": COUNT,
                "default_queue_policy": {
                    "type": "object", "additionalProperties": False,
                    "required": ["max_queue_size", "default_timeout_microseconds"],
                    "properties": {"max_queue_size": {"type": "integer", "minimum": 1},
                                   "default_timeout_microseconds": COUNT}},
            },
        },
    },
}

CONFIG_FORMAT = "triton-model-config"
# The load request's `config`: a patch over the model's serving settings, in Triton's model-config terms.
CONFIG_PATCH = {
    "type": "object",
    "description": "the fields of Triton's model configuration inferd serves by; the others describe the package "
                   "and are taken as they are (send back what GET .../config gave)",
    "properties": {
        "name": {"type": "string", "description": "must be the model's name"},
        "max_batch_size": {"type": "integer", "minimum": 0, "maximum": 4096, "description": "0: no batching"},
        "dynamic_batching": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "max_queue_delay_microseconds": {"type": "number", "minimum": 0, "maximum": 10_000_000},
                "preferred_batch_size": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "default_queue_policy": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"max_queue_size": {"type": "integer", "minimum": 1},
                                   "default_timeout_microseconds": {"type": "number", "minimum": 0}}},
            },
        },
        "instance_group": {"type": "array", "items": {"type": "object", "properties": {
            "count": {"type": "integer", "minimum": 1}, "kind": {"type": "string"}}}},
        **{key: {} for key in ("platform", "backend", "runtime", "version_policy", "input", "output", "parameters",
                               "default_model_filename")},
    },
    "additionalProperties": False,
}

LOAD_REQUEST = {
    "type": ["object", "null"],
    "properties": {"parameters": nullable({
        "type": "object",
        "additionalProperties": False,
        "properties": {"config": {
            # The format names what JSON Schema can only annotate (contentSchema): the string's JSON itself.
            "type": "string", "format": CONFIG_FORMAT, "contentMediaType": "application/json",
            "contentSchema": ref("V2ConfigPatch"),
            "description": "a Triton model configuration as a JSON string, read as a patch: what it leaves out "
                           "keeps its value (flags, serving.toml)",
        }},
    })},
}

UNLOAD_REQUEST = {
    "type": ["object", "null"],
    "properties": {"parameters": nullable({
        "type": "object", "additionalProperties": False,
        "properties": {"unload_dependents": {"description": "accepted and ignored: no model depends on another"}},
    })},
}

_LOG_TYPES = LogSettings().as_triton()

LOG_SETTINGS = {
    "type": "object",
    "additionalProperties": False,
    "required": sorted(_LOG_TYPES),
    "properties": {
        "log_file": {"const": _LOG_TYPES["log_file"], "description": "inferd logs to stderr"},
        "log_format": {"const": _LOG_TYPES["log_format"]},
        **{name: {"type": "boolean"} for name in ("log_info", "log_warning", "log_error")},
        "log_verbose_level": COUNT,
    },
}

LOG_UPDATE = {
    "type": ["object", "null"],
    "description": "the settings to change; the others keep their values (null or no body changes nothing)",
    "additionalProperties": False,
    "properties": LOG_SETTINGS["properties"],
}

INDEX_REQUEST = {
    "type": ["object", "null"],
    "properties": {"ready": {"type": "boolean", "description": "only the models ready to serve"}},
}

COMPONENTS: dict[str, Schema] = {
    **TENSOR_COMPONENTS,
    "V2TensorMetadata": _TENSOR_METADATA,
    "V2Duration": _DURATION,
    "V2ModelStats": _MODEL_STATS,
    "V2TritonTensor": _TRITON_TENSOR,
    "V2ModelConfig": MODEL_CONFIG,
    "V2ConfigPatch": CONFIG_PATCH,
    "V2LogSettings": LOG_SETTINGS,
}

SERVER_METADATA = {
    "type": "object", "required": ["name", "version", "extensions"], "additionalProperties": False,
    "properties": {"name": {"const": "inferd"}, "version": {"type": "string"},
                   "extensions": {"type": "array", "items": {"type": "string"}}},
}

MODEL_METADATA = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "versions", "platform", "inputs", "outputs", "parameters"],
    "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"const": "onnx"},
        "inputs": {"type": "array", "items": ref("V2TensorMetadata")},
        "outputs": {"type": "array", "items": ref("V2TensorMetadata")},
        "parameters": {"type": "object", "required": ["backend", "device", "precision"], "additionalProperties": False,
                       "properties": {"backend": {"type": "string"}, "device": {"type": "string"},
                                      "precision": {"type": "string"}}},
    },
}

_STATE = {"enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]}


def _closed(**properties: Schema) -> Schema:
    return {"type": "object", "required": list(properties), "additionalProperties": False, "properties": properties}


_STRING = {"type": "string"}
_REGION_STATUS = _closed(name=_STRING, key=_STRING, offset=COUNT, byte_size={"type": "integer", "minimum": 1})
_EMPTY = {"type": "object", "additionalProperties": False, "maxProperties": 0}


def _json(schema: Schema) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _optional_json_body(schema: Schema, what: str) -> dict[str, Any]:
    """A control request's body: read as JSON whatever its content type (tritonclient sends none); may be empty."""
    return {"required": False, "description": f"{what}; an empty body is the same as {{}}", **_json(schema)}


_MODEL_ERRORS = (400, 404, 503)

# Per operation: the error statuses it answers beside the ones every route may (`inferd.serve.openapi`),
# and the bodies the handler reads and writes by hand.
OPERATIONS: dict[str, dict[str, Any]] = {
    "GET /v2": {"ok": SERVER_METADATA},
    "GET /v2/health/live": {"ok": _closed(live={"const": True})},
    "GET /v2/health/ready": {"errors": (503,), "ok": _closed(ready={"const": True})},
    "GET /v2/models/stats": {"ok": _closed(model_stats={"type": "array", "items": ref("V2ModelStats")})},
    "GET /v2/models/{model}/stats": {"errors": _MODEL_ERRORS,
                                     "ok": _closed(model_stats={"type": "array", "items": ref("V2ModelStats")})},
    "GET /v2/models/{model}/versions/{version}/stats": {
        "errors": _MODEL_ERRORS, "ok": _closed(model_stats={"type": "array", "items": ref("V2ModelStats"),
                                                            "minItems": 1, "maxItems": 1})},
    "GET /v2/models/{model}": {"errors": _MODEL_ERRORS, "ok": MODEL_METADATA},
    "GET /v2/models/{model}/versions/{version}": {"errors": _MODEL_ERRORS, "ok": MODEL_METADATA},
    "GET /v2/models/{model}/ready": {"errors": _MODEL_ERRORS,
                                     "ok": _closed(name=_STRING, version=_STRING, ready={"const": True})},
    "GET /v2/models/{model}/versions/{version}/ready": {
        "errors": _MODEL_ERRORS, "ok": _closed(name=_STRING, version=_STRING, ready={"const": True})},
    "GET /v2/models/{model}/config": {"errors": _MODEL_ERRORS, "ok": ref("V2ModelConfig")},
    "GET /v2/models/{model}/versions/{version}/config": {"errors": _MODEL_ERRORS, "ok": ref("V2ModelConfig")},
    "GET /v2/logging": {"ok": ref("V2LogSettings")},
    "POST /v2/logging": {"errors": (400,), "ok": ref("V2LogSettings"),
                         "body": _optional_json_body(LOG_UPDATE, "the log settings to change")},
    "POST /v2/repository/index": {
        "errors": (400,), "body": _optional_json_body(INDEX_REQUEST, "which models to list"),
        "ok": {"type": "array", "items": _closed(name=_STRING, version=_STRING, state=_STATE, reason=_STRING)}},
    "POST /v2/repository/models/{model}/load": {
        "errors": (400, 404), "body": _optional_json_body(LOAD_REQUEST, "serving settings for this load"),
        "ok": _closed(name=_STRING, versions={"type": "array", "items": _STRING}, state={"const": "READY"})},
    "POST /v2/repository/models/{model}/unload": {
        "errors": (400, 404), "body": _optional_json_body(UNLOAD_REQUEST, "Triton's unload parameters"),
        "ok": _closed(name=_STRING, state={"const": "UNAVAILABLE"})},
    "GET /v2/systemsharedmemory/status": {"errors": (403,), "ok": {"type": "array", "items": _REGION_STATUS}},
    "GET /v2/systemsharedmemory/region/{region}/status": {
        "errors": (400, 403), "ok": {"type": "array", "items": _REGION_STATUS, "minItems": 1, "maxItems": 1}},
    "POST /v2/systemsharedmemory/region/{region}/register": {"errors": (400, 403), "ok": _EMPTY},
    "POST /v2/systemsharedmemory/region/{region}/unregister": {"errors": (403,), "ok": _EMPTY},
    "POST /v2/systemsharedmemory/unregister": {"errors": (403,), "ok": _EMPTY},
}

_INFER = {
    "errors": (400, 403, 404, 413, 429, 503, 504),
    "parameters": [INFERENCE_HEADER_PARAMETER],
    "body": {"required": True, "content": {"application/json": {"schema": ref("V2InferenceRequest")},
                                           "application/octet-stream": BINARY_BODY}},
    "ok_content": {
        "application/json": {"schema": ref("V2InferenceResponse")},
        "application/octet-stream": BINARY_RESPONSE,
    },
    "ok_headers": {INFERENCE_HEADER: {"schema": {"type": "integer", "minimum": 0},
                                      "description": "with a binary body: the length of its JSON part"}},
}
OPERATIONS["POST /v2/models/{model}/infer"] = _INFER
OPERATIONS["POST /v2/models/{model}/versions/{version}/infer"] = _INFER
