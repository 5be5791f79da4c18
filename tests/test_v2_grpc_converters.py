"""gRPC messages to the shared request type and back, checked against tritonclient.grpc (its own request builder
and result reader) and against the HTTP decoder: both faces must decode a tensor to the same array and refuse a
bad one with the same check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import _utils as triton_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from inferd.errors import InvalidInput, PayloadTooLarge
from inferd.serve.v2.decode import decode_request
from inferd.serve.v2.grpc.converters import request_from_grpc, response_to_grpc
from inferd.serve.v2.shared_memory import SystemSharedMemory
from inferd.serve.v2.types import InferResponse
from tests.test_v2_codec import SAMPLES, assert_same, one, prefixed, triton_request, with_binary

NO_REGIONS = SystemSharedMemory(enabled=True, max_read_bytes=1 << 20)
TYPED = {"BOOL": "bool_contents", "INT8": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
         "UINT8": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
         "BYTES": "bytes_contents"}


def triton_message(arrays: dict[str, np.ndarray], outputs: list[Any] | None = None,
                   request_id: str = "") -> pb.ModelInferRequest:
    """The ModelInferRequest tritonclient.grpc sends for these arrays (raw_input_contents, as it always does)."""
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), next(k for k, v in SAMPLES.items()
                                                                     if v.dtype == array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return triton_grpc._get_inference_request(
        model_name="m", inputs=inputs, model_version="", request_id=request_id, outputs=outputs, sequence_id=0,
        sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None)


def typed_message(datatype: str, array: np.ndarray) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=list(array.shape))
    getattr(tensor.contents, TYPED[datatype]).extend(array.reshape(-1).tolist())
    return message


def refusal(decode: Any) -> str:
    with pytest.raises((InvalidInput, PayloadTooLarge)) as caught:
        decode()
    return str(caught.value.message)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_raw_contents_decode_as_the_http_binary_part_does(datatype: str) -> None:
    over_grpc = request_from_grpc(triton_message({"x": SAMPLES[datatype]}, request_id="r1"), NO_REGIONS)
    over_http = decode_request(*triton_request({"x": SAMPLES[datatype]}, binary=True, request_id="r1"))
    assert over_grpc.id == over_http.id == "r1"
    ((grpc_tensor,), (http_tensor,)) = over_grpc.inputs, over_http.inputs
    assert (grpc_tensor.name, grpc_tensor.datatype, grpc_tensor.shape) == ("x", datatype, (2, 3))
    assert grpc_tensor.parameters == http_tensor.parameters == {}
    assert_same(grpc_tensor.data, http_tensor.data)
    assert_same(grpc_tensor.data, SAMPLES[datatype])


@pytest.mark.parametrize("datatype", list(TYPED))
def test_typed_contents_decode_to_the_same_arrays(datatype: str) -> None:
    """BYTES elements come from bytes_contents one by one, embedded NULs and empty strings included."""
    (tensor,) = request_from_grpc(typed_message(datatype, SAMPLES[datatype]), NO_REGIONS).inputs
    assert_same(tensor.data, SAMPLES[datatype])


def test_outputs_asked_for_keep_their_parameters() -> None:
    outputs = [grpcclient.InferRequestedOutput("y", class_count=3), grpcclient.InferRequestedOutput("z")]
    request = request_from_grpc(triton_message({"x": SAMPLES["FP32"]}, outputs=outputs), NO_REGIONS)
    assert request.outputs is not None
    assert [(o.name, o.parameters, o.shared_memory) for o in request.outputs] == [
        ("y", {"classification": 3}, None), ("z", {}, None)]
    assert request_from_grpc(triton_message({"x": SAMPLES["FP32"]}), NO_REGIONS).outputs is None


def _message(datatype: str, shape: list[int], raw: bytes | None = None, name: str = "x") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", raw_input_contents=[] if raw is None else [raw])
    message.inputs.add(name=name, datatype=datatype, shape=shape)
    return message


# Each bad tensor, once as an HTTP binary part and once as gRPC raw contents: the same check refuses both.
SAME_REFUSALS = [
    ("BOOL", [3], bytes([1, 0, 2]), "BOOL binary data must be bytes 0 or 1, but element 2 is 2"),
    ("BYTES", [2], prefixed(b"ab") + b"\x09\x00\x00\x00x", "BYTES element 1 declares 9 bytes but only 1 remain"),
    ("BYTES", [1], prefixed(b"ab") + b"zz", "2 bytes are left over after the 1 BYTES elements"),
    ("BYTES", [2], b"\x01\x00\x00\x00a\x00\x00", "too small for 2 BYTES elements"),
    ("FP32", [2, 2], bytes(12), "is 12 bytes but shape [2, 2] of FP32 needs 16"),
    ("FLOAT", [1], bytes(4), "datatype a string 'FLOAT' is not a V2 datatype"),
    ("fp32", [1], bytes(4), "(did you mean FP32?)"),
    ("INT8", [2**20, 2**10], bytes(1), "holds 1073741824 elements, over the limit"),
]


@pytest.mark.parametrize(("datatype", "shape", "raw", "message"), SAME_REFUSALS)
def test_bad_tensors_meet_the_same_checks_as_over_http(datatype: str, shape: list[int], raw: bytes,
                                                       message: str) -> None:
    tensor = {"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
    over_http = refusal(lambda: decode_request(*with_binary([tensor], raw)))
    over_grpc = refusal(lambda: request_from_grpc(_message(datatype, shape, raw), NO_REGIONS))
    assert message in over_http and message in over_grpc
    assert over_grpc == over_http.replace("binary_data_size", "its raw_input_contents entry")


def test_typed_values_meet_the_same_checks_as_json_data() -> None:
    too_big = typed_message("INT8", np.array([1, 300]))
    message = "value 300 is out of range for INT8 (-128 to 127)"
    assert message in refusal(lambda: request_from_grpc(too_big, NO_REGIONS))
    assert message in refusal(lambda: decode_request(one(datatype="INT8", shape=[2], data=[1, 300])))
    short = typed_message("FP32", np.zeros(3, np.float32))
    short.inputs[0].shape[:] = [4]
    assert "contents.fp32_contents has 3 values but shape [4] needs 4" in refusal(
        lambda: request_from_grpc(short, NO_REGIONS))


def test_bytes_contents_count_against_the_shape() -> None:
    message = typed_message("BYTES", np.array([b"a", b"b", b"c"], dtype=object))
    message.inputs[0].shape[:] = [2, 2]
    assert refusal(lambda: request_from_grpc(message, NO_REGIONS)) == (
        "input 'x': contents.bytes_contents has 3 elements but shape [2, 2] needs 4; send exactly that many, in "
        "row-major order, or fix the shape")


def test_requests_that_mix_or_lack_data_are_refused() -> None:
    assert "has no data; send its bytes in raw_input_contents" in refusal(
        lambda: request_from_grpc(_message("FP32", [1]), NO_REGIONS))
    assert "the request has no inputs" in refusal(
        lambda: request_from_grpc(pb.ModelInferRequest(model_name="m"), NO_REGIONS))
    twice = triton_message({"x": SAMPLES["FP32"]})
    twice.inputs.add().CopyFrom(twice.inputs[0])
    twice.raw_input_contents.append(twice.raw_input_contents[0])
    assert "input 'x' appears more than once" in refusal(lambda: request_from_grpc(twice, NO_REGIONS))
    in_region = typed_message("FP32", SAMPLES["FP32"])
    in_region.inputs[0].parameters["shared_memory_region"].string_param = "r"
    in_region.inputs[0].parameters["shared_memory_byte_size"].int64_param = 24
    assert "has contents and parameters.shared_memory_region; send the tensor one way only" in refusal(
        lambda: request_from_grpc(in_region, NO_REGIONS))


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_tritonclient_reads_the_response(datatype: str) -> None:
    """Strided and big-endian outputs too: each output's bytes are taken from its array in one copy."""
    strided = np.ascontiguousarray(np.concatenate([SAMPLES[datatype]] * 2, axis=1))[:, ::2]
    arrays = {"y": SAMPLES[datatype], "strided": strided}
    if SAMPLES[datatype].dtype.kind in "iuf" and SAMPLES[datatype].dtype.itemsize > 1:
        arrays["swapped"] = SAMPLES[datatype].astype(SAMPLES[datatype].dtype.newbyteorder(">"))
    message = response_to_grpc(InferResponse("m", "1", "r1", list(arrays.items())), NO_REGIONS)
    result = grpcclient.InferResult(message)
    assert result.get_response().id == "r1" and result.get_response().model_version == "1"
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array.astype(array.dtype.newbyteorder("=")))
    if datatype == "BYTES":
        assert message.raw_output_contents[0] == serialize_byte_tensor(SAMPLES["BYTES"]).item()
