"""The V2 bodies as JSON Schema, for the API document: what the HTTP face reads and writes, as strictly as it does.

The V2 routes read their bodies by hand (tritonclient sends JSON without a JSON content type, and the
decoder's own messages beat a generic validation error), so their schemas are written here rather than
derived from handler signatures. Each is held to the decoder's rules: an element of an INT8 tensor is an
integer from -128 to 127, a float may be "NaN", "Infinity" or "-Infinity", a shape has at most 32
non-negative dimensions, and JSON null for an optional field means the field is absent. What JSON Schema
cannot say (the values must fill the shape, the inputs must be the model's) is said in the descriptions;
`GET /v2/models/{model}` gives each model's inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.serve.log_settings import LogSettings
from inferd.serve.v2.decode import INFERENCE_HEADER
from inferd.serve.v2.tensors import MAX_DIMS
from inferd.serve.v2.types import DATATYPES

Schema = dict[str, Any]

NON_FINITE_WORDS = ["NaN", "Infinity", "-Infinity"]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """An optional field that may also be null, which the decoder reads as absent."""
    return {"anyOf": [schema, {"type": "null"}]}


_COUNT = {"type": "integer", "minimum": 0}
_NAME = {"type": "string", "minLength": 1}


def _float_bound(datatype: str) -> float:
    """The least float the decoder's cast turns into infinity in `datatype`, which it refuses (everything below is
    rounded to a finite value). Found by bisecting float64 bit patterns rather than from the format's parameters,
    since a cast may round twice (ml_dtypes takes BF16 through float32)."""
    dtype = DATATYPES[datatype]
    low, high = (int(v) for v in np.array([1.0, np.finfo(np.float64).max]).view(np.int64))
    with np.errstate(over="ignore"):
        while high - low > 1:
            middle = (low + high) // 2
            if np.isinf(np.array([middle]).view(np.float64).astype(dtype))[0]:
                high = middle
            else:
                low = middle
    return float(np.array([high]).view(np.float64)[0])


def _element(datatype: str) -> Schema:
    """One element of a tensor of `datatype`, as JSON `data` carries it (and as responses write it)."""
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string", "description": "UTF-8 text; bytes that are not UTF-8 go in the binary part"}
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    if datatype == "FP64":  # every JSON number Python reads as a finite float is a finite FP64
        number: Schema = {"type": "number"}
    else:
        bound = _float_bound(datatype)
        number = {"type": "number", "exclusiveMinimum": -bound, "exclusiveMaximum": bound}
    return {"anyOf": [number, {"enum": NON_FINITE_WORDS}]}


def _data(datatype: str) -> Schema:
    """A tensor's values: flat in row-major order, or nested like its shape (arrays all the way down)."""
    return {
        "description": f"{datatype} values: a flat array in row-major order, or arrays nested exactly like the "
                       "shape; either way exactly as many values as the shape holds",
        "anyOf": [{"type": "array", "items": _element(datatype)},
                  {"type": "array", "items": ref(f"V2Data{datatype}")}],
    }


_SHAPE = {"type": "array", "items": _COUNT, "maxItems": MAX_DIMS,
          "description": "the tensor's dimensions; their product is its element count (at most 2^28)"}

_SHARED_MEMORY = {
    "shared_memory_region": _nullable({**_NAME, "description": "a registered region holding the tensor"}),
    "shared_memory_byte_size": _nullable({**_COUNT, "description": "the tensor's size in the region, in bytes"}),
    "shared_memory_offset": _nullable({**_COUNT, "description": "where the tensor starts in the region"}),
}

_INPUT_PARAMETERS = {
    "type": "object",
    "description": "binary_data_size for a tensor in the binary part, or a shared-memory region (region and byte "
                   "size together); other parameters are passed on with the input",
    "properties": {
        "binary_data_size": _nullable({**_COUNT, "description": "the tensor's bytes in the binary part"}),
        **_SHARED_MEMORY,
    },
}


def _input(datatype: str) -> Schema:
    return {
        "type": "object",
        "title": f"{datatype} input",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {**_NAME, "description": "one of the model's inputs (GET /v2/models/{model} lists them)"},
            "datatype": {"const": datatype},
            "shape": _SHAPE,
            "parameters": _nullable(ref("V2InputParameters")),
            "data": _nullable(ref(f"V2Data{datatype}")),
        },
        "description": "Give the tensor one way: its values in `data`, its bytes in the binary part "
                       "(parameters.binary_data_size), or a shared-memory region.",
        "oneOf": [_given("data"), _given("binary_data_size", "parameters"),
                  _given("shared_memory_region", "parameters")],
    }


def _given(field: str, within: str | None = None) -> Schema:
    """An input that has `field` (in its `within` object), not null: one of the ways to give a tensor."""
    present: Schema = {"required": [field], "properties": {field: {"not": {"type": "null"}}}}
    return {"required": [within], "properties": {within: present}} if within else present


def _output_tensor(datatype: str) -> Schema:
    return {
        "type": "object",
        "title": f"{datatype} output",
        "required": ["name", "datatype", "shape"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "datatype": {"const": datatype},
            "shape": {"type": "array", "items": _COUNT},
            "data": {"type": "array", "items": _element(datatype), "description": "flat, in row-major order"},
            "parameters": ref("V2OutputWhere"),
        },
        "description": "`data` holds the values unless the output went out in the binary part "
                       "(parameters.binary_data_size) or to shared memory.",
    }


def _by_datatype(prefix: str) -> Schema:
    return {
        "oneOf": [ref(f"{prefix}{datatype}") for datatype in DATATYPES],
        "discriminator": {"propertyName": "datatype",
                          "mapping": {datatype: f"#/components/schemas/{prefix}{datatype}" for datatype in DATATYPES}},
    }


_REQUEST_OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {**_NAME, "description": "one of the model's outputs"},
        "parameters": _nullable({
            "type": "object",
            "properties": {
                "binary_data": _nullable({"type": "boolean", "description": "send this output in the binary part"}),
                "classification": _nullable({"type": "integer", "minimum": 1,
                                             "description": "the top N classes as 'score:index:label' strings"}),
                **_SHARED_MEMORY,
            },
        }),
    },
}

INFERENCE_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": _nullable({"type": "string", "description": "echoed in the response"}),
        "parameters": _nullable({
            "type": "object",
            "properties": {
                "binary_data_output": {"type": "boolean", "description": "send every output in the binary part"},
                "timeout": _nullable({"type": "number", "exclusiveMinimum": 0,
                                      "description": "deadline in microseconds (default: the model's)"}),
            },
        }),
        "inputs": {"type": "array", "minItems": 1, "items": ref("V2RequestInput"),
                   "description": "every input of the model, each once"},
        "outputs": _nullable({"type": "array", "items": ref("V2RequestOutput"),
                              "description": "the outputs wanted, each once (absent or empty: all)"}),
    },
}

INFERENCE_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "additionalProperties": False,
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": ref("V2ResponseOutput")},
    },
}

_OUTPUT_WHERE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"binary_data_size": _COUNT, "shared_memory_region": {"type": "string"},
                   "shared_memory_byte_size": _COUNT, "shared_memory_offset": _COUNT},
}

BINARY_BODY = {
    "schema": {"type": "string", "format": "binary"},
    "description": f"Binary tensor data: the first {INFERENCE_HEADER} bytes are a V2InferenceRequest (JSON) whose "
                   "inputs with parameters.binary_data_size are sent as raw bytes after it, in input order: "
                   "little-endian, row-major, BYTES elements each a 4-byte little-endian length and its bytes.",
}

BINARY_RESPONSE = {
    "schema": {"type": "string", "format": "binary"},
    "description": f"Sent when an output is asked for in binary: the first {INFERENCE_HEADER} bytes are a "
                   "V2InferenceResponse (JSON), the outputs with parameters.binary_data_size follow in order.",
}

INFERENCE_HEADER_PARAMETER = {
    "name": INFERENCE_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "the length of the JSON part of a binary body; without it the whole body is JSON",
}

_TENSOR_METADATA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "datatype": {"enum": list(DATATYPES)},
                   "shape": {"type": "array", "items": {"type": "integer", "minimum": -1},
                             "description": "-1 for a dimension of any size"}},
}

_DURATION = {"type": "object", "required": ["count", "ns"], "additionalProperties": False,
             "properties": {"count": _COUNT, "ns": _COUNT}}

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")

_MODEL_STATS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "version", "last_inference", "inference_count", "execution_count", "inference_stats",
                 "batch_stats"],
    "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "last_inference": {**_COUNT, "description": "milliseconds since the epoch; 0 before the first"},
        "inference_count": _COUNT, "execution_count": _COUNT,
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
                "max_queue_delay_microseconds": _COUNT,
                "default_queue_policy": {
                    "type": "object", "additionalProperties": False,
                    "required": ["max_queue_size", "default_timeout_microseconds"],
                    "properties": {"max_queue_size": {"type": "integer", "minimum": 1},
                                   "default_timeout_microseconds": _COUNT}},
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
    "properties": {"parameters": _nullable({
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
    "properties": {"parameters": _nullable({
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
        "log_verbose_level": _COUNT,
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
    "V2InferenceRequest": INFERENCE_REQUEST,
    "V2RequestInput": _by_datatype("V2Input"),
    **{f"V2Input{datatype}": _input(datatype) for datatype in DATATYPES},
    **{f"V2Data{datatype}": _data(datatype) for datatype in DATATYPES},
    "V2InputParameters": _INPUT_PARAMETERS,
    "V2RequestOutput": _REQUEST_OUTPUT,
    "V2InferenceResponse": INFERENCE_RESPONSE,
    "V2ResponseOutput": _by_datatype("V2Output"),
    **{f"V2Output{datatype}": _output_tensor(datatype) for datatype in DATATYPES},
    "V2OutputWhere": _OUTPUT_WHERE,
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
_REGION_STATUS = _closed(name=_STRING, key=_STRING, offset=_COUNT, byte_size={"type": "integer", "minimum": 1})
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
