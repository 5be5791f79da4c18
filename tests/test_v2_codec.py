"""The V2 codec, checked against tritonclient (the reference encoder and decoder) rather than against itself."""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient

from inferd.errors import InvalidInput, PayloadTooLarge
from inferd.serve.v2.decode import decode_request
from inferd.serve.v2.encode import encode_response
from inferd.serve.v2.request import binary_outputs_for
from inferd.serve.v2.types import DATATYPES, InferRequest, InferResponse, RequestedOutput, datatype_of

Client = httpclient.InferenceServerClient

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, -8, 9]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [7, -8, 9]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [np.nan, np.inf, -np.inf]], dtype=np.float16),
    "FP32": np.array([[0.1, -1e30, 3.4e38], [np.nan, np.inf, -np.inf]], dtype=np.float32),
    "FP64": np.array([[0.1, -1e300, 5e-324], [np.nan, np.inf, -np.inf]], dtype=np.float64),
    "BF16": np.array([[0.5, -1.25, 3.0e38], [np.nan, np.inf, -np.inf]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"hello", b"", "h\u00e9llo \u2603".encode()], [b"a\x00b", b"x" * 300, b"z"]], dtype=object),
}
JSON_DATATYPES = [name for name in SAMPLES if name != "BF16"]  # tritonclient sends BF16 only as binary
NON_UTF8 = np.array([b"\xff\xfe", b"ok"], dtype=object)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    elif expected.dtype == ml_dtypes.bfloat16:  # numpy's NaN-aware comparison does not know bfloat16
        np.testing.assert_array_equal(actual.astype(np.float32), expected.astype(np.float32))
    else:
        np.testing.assert_array_equal(actual, expected)  # treats NaN as equal to NaN


def triton_request(
    arrays: dict[str, np.ndarray], binary: bool = True, outputs: list[Any] | None = None, request_id: str = ""
) -> tuple[bytes, int | None]:
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype_of(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = Client.generate_request_body(inputs, outputs=outputs, request_id=request_id)
    return body, json_size


def triton_parse(body: bytes, header_length: int | None) -> Any:
    return Client.parse_response_body(body, verbose=False, header_length=header_length, content_encoding=None)


def request_json(inputs: list[Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


# ---------------------------------------------------------------------------------------------------- datatypes


def test_datatypes_cover_the_protocol() -> None:
    assert set(SAMPLES) == set(DATATYPES)
    assert DATATYPES["BYTES"] == np.dtype(object)
    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name


def test_datatype_of_accepts_string_dtypes_and_foreign_byte_order() -> None:
    assert datatype_of(np.dtype("U3")) == "BYTES"
    assert datatype_of(np.dtype("S3")) == "BYTES"
    assert datatype_of(np.dtype(">f4")) == "FP32"
    with pytest.raises(TypeError, match="complex64"):
        datatype_of(np.dtype(np.complex64))


# ---------------------------------------------------------------------------------------------------- requests


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_decodes_tritonclient_binary_request(datatype: str) -> None:
    body, json_size = triton_request({"x": SAMPLES[datatype]}, binary=True)
    assert json_size is not None
    request = decode_request(body, json_size)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 3))
    assert "binary_data_size" not in tensor.parameters
    assert_same(tensor.data, SAMPLES[datatype])


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
def test_decodes_tritonclient_json_request(datatype: str) -> None:
    """tritonclient writes NaN and Infinity as bare tokens (Python's json.dumps), which must be accepted."""
    body, json_size = triton_request({"x": SAMPLES[datatype]}, binary=False)
    assert json_size is None
    (tensor,) = decode_request(body, None).inputs
    assert_same(tensor.data, SAMPLES[datatype])


def test_decodes_many_inputs_mixing_binary_and_json_with_outputs_and_id() -> None:
    json_input = httpclient.InferInput("a", [2], "INT32")
    json_input.set_data_from_numpy(np.array([1, 2], dtype=np.int32), binary_data=False)
    inputs = [json_input]
    for name in ("b", "c"):
        tensor = httpclient.InferInput(name, [2, 3], datatype_of(SAMPLES["FP32"].dtype))
        tensor.set_data_from_numpy(SAMPLES["FP32"], binary_data=True)
        inputs.append(tensor)
    strings = httpclient.InferInput("d", [2, 3], "BYTES")
    strings.set_data_from_numpy(SAMPLES["BYTES"], binary_data=True)
    inputs.append(strings)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=False), httpclient.InferRequestedOutput("z")]
    body, json_size = Client.generate_request_body(
        inputs, outputs=outputs, request_id="req-7", parameters={"custom": 3}
    )
    request = decode_request(body, str(json_size))
    assert request.id == "req-7"
    assert request.parameters == {"custom": 3}
    assert [tensor.name for tensor in request.inputs] == ["a", "b", "c", "d"]
    assert_same(request.inputs[0].data, np.array([1, 2], dtype=np.int32))
    assert_same(request.inputs[2].data, SAMPLES["FP32"])
    assert_same(request.inputs[3].data, SAMPLES["BYTES"])
    assert request.outputs == [RequestedOutput("y", False, {}), RequestedOutput("z", True, {})]
    assert binary_outputs_for(request, default_binary=False) == {"z"}


def test_tritonclient_without_outputs_asks_for_binary_everything() -> None:
    body, json_size = triton_request({"x": SAMPLES["INT8"]})
    request = decode_request(body, json_size)
    assert request.outputs is None
    assert binary_outputs_for(request, default_binary=False) is True


def test_nested_json_data_and_special_float_words() -> None:
    body = request_json([
        {"name": "n", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], ["NaN", "-Infinity"]]},
        {"name": "e", "datatype": "INT64", "shape": [2, 0], "data": [[], []]},
        {"name": "s", "datatype": "BOOL", "shape": [], "data": [True]},
    ])
    n, e, s = decode_request(body, None).inputs
    assert_same(n.data, np.array([[1, 2.5], [np.nan, -np.inf]], dtype=np.float32))
    assert_same(e.data, np.zeros((2, 0), dtype=np.int64))
    assert_same(s.data, np.array(True))


def test_binary_arrays_are_zero_copy_views_even_misaligned() -> None:
    tensors = [
        {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8, "note": 1}},
        {"name": "b", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": 1}},
        {"name": "c", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
    ]
    header = json.dumps({"inputs": tensors}).encode()
    header += b" " * (-len(header) % 8)  # "a" starts 8-aligned, so "c" starts one byte off
    values = np.array([1.5, -2], dtype="<f4").tobytes()
    body = header + values + b"\x07" + values
    assert np.frombuffer(body, np.uint8).ctypes.data % 8 == 0  # CPython aligns a bytes object's data
    a, b, c = decode_request(body, len(header)).inputs
    assert a.parameters == {"note": 1}
    assert not a.data.flags.writeable and a.data.flags.aligned  # a view of the immutable body
    assert not c.data.flags.writeable and not c.data.flags.aligned  # a view too: the batcher aligns it
    assert_same(a.data, np.array([1.5, -2], dtype=np.float32))
    assert_same(b.data, np.array([7], dtype=np.uint8))
    assert_same(c.data, np.array([1.5, -2], dtype=np.float32))


def test_null_means_absent() -> None:
    body = request_json(
        [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1], "parameters": None}],
        id=None, outputs=None, parameters=None,
    )
    request = decode_request(body, None)
    assert (request.id, request.outputs, request.parameters) == (None, None, {})


# ---------------------------------------------------------------------------------------------------- responses


def response_of(arrays: dict[str, np.ndarray], **extra: Any) -> InferResponse:
    return InferResponse("m", outputs=list(arrays.items()), **extra)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tritonclient_reads_encoded_response(datatype: str, binary: bool) -> None:
    expected = SAMPLES[datatype]
    if datatype == "BF16" and not binary:  # tritonclient's np.array(data, bfloat16) cannot parse "NaN" words
        expected = expected[:1]
    body, header_length = encode_response(response_of({"y": expected}, binary_outputs=binary))
    assert (header_length is not None) == binary
    json.loads(body[:header_length], parse_constant=pytest.fail)  # strictly valid JSON, non-finite floats included
    result = triton_parse(body, header_length)
    if datatype == "BYTES" and not binary:  # JSON strings come back as str, as from Triton itself
        expected = np.array([[item.decode() for item in row] for row in expected.tolist()], dtype=object)
    assert_same(result.as_numpy("y"), expected)


def test_response_mixes_binary_and_json_outputs_in_order() -> None:
    arrays = {"a": SAMPLES["FP32"], "b": SAMPLES["INT16"], "c": SAMPLES["BYTES"], "d": SAMPLES["UINT8"]}
    body, header_length = encode_response(
        response_of(arrays, model_version="3", id="r1", parameters={"k": 1}, binary_outputs={"a", "c", "d"})
    )
    result = triton_parse(body, header_length)
    header = result.get_response()
    assert {key: header[key] for key in ("model_name", "model_version", "id", "parameters")} == {
        "model_name": "m", "model_version": "3", "id": "r1", "parameters": {"k": 1},
    }
    assert "data" in result.get_output("b") and "data" not in result.get_output("a")
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)


def test_response_omits_absent_fields() -> None:
    body, header_length = encode_response(response_of({"y": np.array(5, dtype=np.int32)}, binary_outputs=False))
    assert header_length is None
    assert json.loads(body) == {"model_name": "m", "outputs": [
        {"name": "y", "datatype": "INT32", "shape": [], "data": [5]},
    ]}


def test_non_finite_floats_become_words_in_json() -> None:
    body, _ = encode_response(response_of({"y": np.array([np.nan, np.inf, -np.inf, 1.0])}, binary_outputs=False))
    assert json.loads(body)["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 1.0]


def test_non_utf8_bytes_fall_back_to_binary() -> None:
    body, header_length = encode_response(response_of({"y": NON_UTF8}, binary_outputs=False))
    assert header_length is not None
    assert_same(triton_parse(body, header_length).as_numpy("y"), NON_UTF8)


def test_encodes_strided_big_endian_and_string_dtypes() -> None:
    strided = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    strings = np.array(["ab", "c\u00e9"])
    for binary in (True, False):
        body, header_length = encode_response(response_of({"s": strided, "t": strings}, binary_outputs=binary))
        result = triton_parse(body, header_length)
        assert_same(result.as_numpy("s"), strided.astype(np.int32))
        assert [item if isinstance(item, str) else item.decode() for item in result.as_numpy("t")] == ["ab", "c\u00e9"]


def test_bytes_output_of_other_objects_is_a_model_bug() -> None:
    for binary in (True, False):
        with pytest.raises(TypeError, match="got int"):
            encode_response(response_of({"y": np.array([b"a", 3], dtype=object)}, binary_outputs=binary))


def test_empty_outputs_round_trip() -> None:
    arrays = {"e": np.zeros((2, 0), dtype=np.float32), "b": np.empty((0,), dtype=object)}
    for binary in (True, False):
        body, header_length = encode_response(response_of(arrays, binary_outputs=binary))
        result = triton_parse(body, header_length)
        assert result.as_numpy("e").shape == (2, 0)
        assert result.as_numpy("b").shape == (0,)


def test_own_response_values_decode_as_request_data() -> None:
    """Outputs may be fed back as inputs (pipelines), so the JSON words for non-finite floats are accepted too."""
    for datatype in ("FP16", "BF16", "FP32", "FP64", "INT64", "UINT64", "BOOL", "BYTES"):
        body, _ = encode_response(response_of({"x": SAMPLES[datatype]}, binary_outputs=False))
        (output,) = json.loads(body)["outputs"]
        (tensor,) = decode_request(request_json([output]), None).inputs
        assert_same(tensor.data, SAMPLES[datatype])


# ---------------------------------------------------------------------------------------------------- output choice


@pytest.mark.parametrize(("outputs", "parameters", "default", "expected"), [
    (None, {}, True, True),
    (None, {}, False, False),
    (None, {"binary_data_output": True}, False, True),
    (None, {"binary_data_output": False}, True, False),
    ([RequestedOutput("a"), RequestedOutput("b", True)], {}, False, {"b"}),
    ([RequestedOutput("a"), RequestedOutput("b", False)], {}, True, {"a"}),
    ([RequestedOutput("a"), RequestedOutput("b", False)], {"binary_data_output": True}, False, {"a"}),
    ([RequestedOutput("a", True)], {"binary_data_output": False}, True, {"a"}),
])
def test_binary_outputs_for(
    outputs: list[RequestedOutput] | None, parameters: dict[str, Any], default: bool, expected: set[str] | bool
) -> None:
    request = InferRequest(None, [], outputs, parameters)
    assert binary_outputs_for(request, default) == expected


# ---------------------------------------------------------------------------------------------------- malformed


def one(**fields: Any) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    tensor.update(fields)
    return request_json([{k: v for k, v in tensor.items() if v is not ...}])


def with_binary(tensors: list[dict[str, Any]], binary: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": tensors}).encode()
    return header + binary, len(header)


def binary_input(datatype: str, shape: list[int], size: Any, name: str = "x") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


MALFORMED: list[tuple[str, bytes, int | str | None, str]] = [
    ("not json", b'{"inputs": [', None, "not valid JSON"),
    ("json error position", b'{"inputs": x}', None, "line 1, column 12"),
    ("binary without header", with_binary([binary_input("UINT8", [1], 1)], b"\x01")[0], None,
     "Inference-Header-Content-Length header with the JSON's length"),
    ("not utf-8", b'{"inputs": "\xff"}', None, "not valid UTF-8"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, None, "too deeply"),
    ("top level array", b"[1, 2]", None, "must be an object"),
    ("header length not integer", one(), "12a", "must be a non-negative integer"),
    ("header length negative", one(), -1, "must be a non-negative integer"),
    ("header length past body", one(), 10_000, "the whole body is"),
    ("header length cuts json", one(), 5, "the JSON part is the first 5 bytes"),
    ("no inputs", request_json([]), None, '"inputs" must be a non-empty array'),
    ("inputs not list", b'{"inputs": {"name": "x"}}', None, '"inputs" must be a non-empty array'),
    ("input not object", request_json([3]), None, "inputs[0] must be an object"),
    ("missing name", one(name=...), None, "inputs[0].name must be a non-empty string"),
    ("name not string", one(name=5), None, "inputs[0].name must be a non-empty string"),
    ("lower-case datatype", one(datatype="fp32"), None, "did you mean FP32"),
    ("unknown datatype", one(datatype="FLOAT"), None, "use one of BOOL"),
    ("shape not list", one(shape=2), None, "shape must be an array of non-negative integers"),
    ("negative dim", one(shape=[-1]), None, "shape must be an array of non-negative integers"),
    ("float dim", one(shape=[2.0]), None, "shape must be an array of non-negative integers"),
    ("bool dim", one(shape=[True, 2]), None, "shape must be an array of non-negative integers"),
    ("too many dims", one(shape=[1] * 40, data=[1.0]), None, "at most 32"),
    ("count mismatch", one(shape=[3]), None, "data has 2 values but shape [3] needs 3"),
    ("data not list", one(data=1.0), None, "data must be a JSON array"),
    ("ragged nested", one(shape=[2, 2], data=[[1, 2], [3]]), None, "at depth 1 expected an array of 2"),
    ("nesting off shape", one(shape=[2, 2], data=[[1, 2, 3, 4]]), None, "at depth 0 expected an array of 2"),
    ("mixed nesting", one(shape=[2, 2], data=[[1, 2], 3]), None, "found an integer 3"),
    ("nested too deep", one(shape=[2], data=[[1], [2]]), None, "nests deeper than the shape"),
    ("string for FP32", one(data=[1.0, "2"]), None, "element 1 is the string '2', but FP32 data must be numbers"),
    ("bool for FP32", one(data=[True, 2.0]), None, "element 0 is a boolean true"),
    ("null for FP32", one(data=[None, 2.0]), None, "element 0 is null"),
    ("float for INT32", one(datatype="INT32", data=[1, 2.0]), None, "write 3, not 3.0"),
    ("bool for INT8", one(datatype="INT8", data=[1, False]), None, "element 1 is a boolean"),
    ("int8 overflow", one(datatype="INT8", data=[1, 128]), None, "value 128 is out of range for INT8 (-128 to 127)"),
    ("uint negative", one(datatype="UINT64", data=[-1, 0]), None, "value -1 is out of range for UINT64"),
    ("fp16 overflow", one(datatype="FP16", data=[1.0, 70000.0]), None, "element 1 (70000.0) is out of range for FP16"),
    ("huge int for FP64", one(datatype="FP64", data=[1, 10**400]), None, "too large for FP64"),
    ("int for BOOL", one(datatype="BOOL", data=[1, 0]), None, "BOOL data must be true or false"),
    ("number for BYTES", one(datatype="BYTES", data=["a", 1]), None, "BYTES data must be strings"),
    ("surrogate for BYTES", b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["\\ud800"]}]}', None,
     "lone UTF-16 surrogate"),
    ("duplicate inputs", request_json([{"name": "x", "datatype": "INT8", "shape": [0], "data": []}] * 2), None,
     "input 'x' appears more than once"),
    ("no data", one(data=...), None, "input 'x' has no data"),
    ("shared memory region alone", one(data=..., parameters={"shared_memory_region": "r"}), None,
     "parameters.shared_memory_region and parameters.shared_memory_byte_size go together"),
    ("shared memory size not int", one(data=..., parameters={"shared_memory_region": "r",
                                                             "shared_memory_byte_size": True}), None,
     "shared_memory_byte_size must be a non-negative integer"),
    ("shared memory without regions", one(data=..., parameters={"shared_memory_region": "r",
                                                                "shared_memory_byte_size": 4}), None,
     "input 'x' is in shared memory, which this endpoint does not take"),
    ("shared memory output alone", one()[:-1] + b', "outputs": [{"name": "y", "parameters": '
                                                 b'{"shared_memory_byte_size": 4}}]}', None,
     "output 'y': parameters.shared_memory_region and"),
    ("data and binary", *with_binary([{**binary_input("UINT8", [1], 1), "data": [1]}], b"\x01"),
     "has data and parameters.binary_data_size; send the tensor one way only"),
    ("binary size not int", *with_binary([binary_input("UINT8", [1], "1")], b"\x01"),
     "binary_data_size must be a non-negative integer"),
    ("binary size negative", *with_binary([binary_input("UINT8", [1], -1)], b"\x01"),
     "binary_data_size must be a non-negative integer"),
    ("binary size vs shape", *with_binary([binary_input("FP32", [2], 4)], b"\x00" * 4),
     "binary_data_size is 4 bytes but shape [2] of FP32 needs 8"),
    ("binary past body", *with_binary([binary_input("UINT8", [4], 4)], b"\x00" * 3),
     "add up to 4 bytes but only 3 bytes follow the JSON"),
    ("trailing bytes", *with_binary([binary_input("UINT8", [2], 2)], b"\x00" * 5), "3 bytes follow the JSON"),
    ("second input short", *with_binary([binary_input("UINT8", [2], 2, "a"), binary_input("UINT8", [2], 2, "b")],
                                        b"\x00" * 3), "input 'b': the binary_data_size values"),
    ("bad bool byte", *with_binary([binary_input("BOOL", [2], 2)], b"\x01\x02"), "element 1 is 2"),
    ("bytes left over", *with_binary([binary_input("BYTES", [1], 10)], prefixed(b"ab") + b"\x00" * 4),
     "4 bytes are left over after the 1 BYTES elements"),
    ("bytes element overruns", *with_binary([binary_input("BYTES", [1], 6)], struct.pack("<I", 9) + b"ab"),
     "element 0 declares 9 bytes but only 2 remain"),
    ("bytes too small for count", *with_binary([binary_input("BYTES", [3], 8)], prefixed(b"", b"")),
     "too small for 3 BYTES elements"),
    ("bytes prefix cut", *with_binary([binary_input("BYTES", [2], 9)], prefixed(b"ab") + b"\x00" * 3),
     "ends inside the length prefix of element 1"),
    ("id not string", request_json([], id=3), None, "id must be a string"),
    ("parameters not object", request_json([], parameters=[1]), None, "request's parameters must be a JSON object"),
    ("binary_data_output not bool", one()[:-1] + b', "parameters": {"binary_data_output": 1}}', None,
     "binary_data_output must be true or false"),
    ("input parameters not object", one(parameters="x"), None, "input 'x': parameters must be a JSON object"),
    ("outputs not list", one()[:-1] + b', "outputs": {"name": "y"}}', None, '"outputs" must be an array'),
    ("output not object", one()[:-1] + b', "outputs": ["y"]}', None, "outputs[0] must be an object"),
    ("output name missing", one()[:-1] + b', "outputs": [{}]}', None, "outputs[0].name must be a non-empty string"),
    ("output duplicate", one()[:-1] + b', "outputs": [{"name": "y"}, {"name": "y"}]}', None,
     "output 'y' is requested more than once"),
    ("binary_data not bool", one()[:-1] + b', "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}',
     None, "output 'y': parameters.binary_data must be true or false"),
]


@pytest.mark.parametrize(("body", "header_length", "message"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_malformed_requests_explain_themselves(body: bytes, header_length: int | str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_request(body, header_length)
    assert message in caught.value.message
    assert type(caught.value) is InvalidInput


def test_malformed_table_is_large() -> None:
    assert len(MALFORMED) >= 30


def test_huge_shape_is_refused_before_allocating() -> None:
    body, header_length = with_binary([binary_input("BYTES", [2**40, 2**40], 0)], b"")
    with pytest.raises(PayloadTooLarge, match="over the limit of 268435456"):
        decode_request(body, header_length)
    with pytest.raises(PayloadTooLarge, match="over the limit of 4"):
        decode_request(one(shape=[5], data=[1.0] * 5), None, max_elements=4)
