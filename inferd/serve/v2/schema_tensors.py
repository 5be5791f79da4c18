"""The inference bodies as JSON Schema, for the API document: tensors of each datatype as requests give them and
responses write them, the outputs asked for, and the binary form. Held to the decoder's rules as
`inferd.serve.v2.schema` says; the other V2 bodies are there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.serve.v2.decode import INFERENCE_HEADER
from inferd.serve.v2.tensors import MAX_DIMS
from inferd.serve.v2.types import DATATYPES

Schema = dict[str, Any]

NON_FINITE_WORDS = ["NaN", "Infinity", "-Infinity"]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """An optional field that may also be null, which the decoder reads as absent."""
    return {"anyOf": [schema, {"type": "null"}]}


COUNT = {"type": "integer", "minimum": 0}
NAME = {"type": "string", "minLength": 1}


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


_SHAPE = {"type": "array", "items": COUNT, "maxItems": MAX_DIMS,
          "description": "the tensor's dimensions; their product is its element count (at most 2^28)"}

_SHARED_MEMORY = {
    "shared_memory_region": nullable({**NAME, "description": "a registered region holding the tensor"}),
    "shared_memory_byte_size": nullable({**COUNT, "description": "the tensor's size in the region, in bytes"}),
    "shared_memory_offset": nullable({**COUNT, "description": "where the tensor starts in the region"}),
}

_INPUT_PARAMETERS = {
    "type": "object",
    "description": "binary_data_size for a tensor in the binary part, or a shared-memory region (region and byte "
                   "size together); other parameters are passed on with the input",
    "properties": {
        "binary_data_size": nullable({**COUNT, "description": "the tensor's bytes in the binary part"}),
        **_SHARED_MEMORY,
    },
}


def _input(datatype: str) -> Schema:
    return {
        "type": "object",
        "title": f"{datatype} input",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {**NAME, "description": "one of the model's inputs (GET /v2/models/{model} lists them)"},
            "datatype": {"const": datatype},
            "shape": _SHAPE,
            "parameters": nullable(ref("V2InputParameters")),
            "data": nullable(ref(f"V2Data{datatype}")),
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
            "shape": {"type": "array", "items": COUNT},
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
        "name": {**NAME, "description": "one of the model's outputs"},
        "parameters": nullable({
            "type": "object",
            "properties": {
                "binary_data": nullable({"type": "boolean", "description": "send this output in the binary part"}),
                "classification": nullable({"type": "integer", "minimum": 1,
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
        "id": nullable({"type": "string", "description": "echoed in the response"}),
        "parameters": nullable({
            "type": "object",
            "properties": {
                "binary_data_output": {"type": "boolean", "description": "send every output in the binary part"},
                "timeout": nullable({"type": "number", "exclusiveMinimum": 0,
                                      "description": "deadline in microseconds (default: the model's)"}),
            },
        }),
        "inputs": {"type": "array", "minItems": 1, "items": ref("V2RequestInput"),
                   "description": "every input of the model, each once"},
        "outputs": nullable({"type": "array", "items": ref("V2RequestOutput"),
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
    "properties": {"binary_data_size": COUNT, "shared_memory_region": {"type": "string"},
                   "shared_memory_byte_size": COUNT, "shared_memory_offset": COUNT},
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

# The inference bodies' named schemas, in the API document's order; `inferd.serve.v2.schema` adds the others.
TENSOR_COMPONENTS: dict[str, Schema] = {
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
}
