"""The Open Inference Protocol over gRPC: KServe V2's GRPCInferenceService, as tritonclient.grpc speaks it.

`servicer.py` answers each RPC in three steps (protobuf to the shared types, the data plane both faces call,
back to protobuf), `converters.py` does the conversions, `health.py` is gRPC's standard health service and
`server.py` starts the grpc.aio server with the API-key check. The messages and service stubs are the ones
tritonclient ships (`tritonclient.grpc.service_pb2`), generated from the proto Triton serves, so the wire
format cannot drift.
"""

import os

# The server never forks while gRPC runs, except to probe the machine with a subprocess; grpcio's fork
# handlers would only log a warning about the other threads each time. Set here, before any module of this
# package imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
