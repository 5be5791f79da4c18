"""Requests over V2 gRPC with tritonclient.grpc.aio, the way a Triton gRPC client sends them (raw contents)."""

from __future__ import annotations

from typing import Any

import numpy as np

Tensors = list[tuple[str, str, np.ndarray]]
"""One request's inputs: (name, V2 datatype, array)."""


class GrpcInputs:
    """Every request's InferInput objects built once, before the clock starts; `infer` only sends them."""

    def __init__(self, address: str, model: str, requests: list[Tensors], outputs: list[str],
                 headers: dict[str, str] | None = None, timeout_s: float | None = None) -> None:
        import tritonclient.grpc.aio as grpc_client

        self.client = grpc_client.InferenceServerClient(address)
        self.model = model
        self.outputs = outputs
        self.headers = headers
        self.timeout_s = timeout_s
        self.refusals: dict[str, str] = {}  # the first message of each gRPC status that refused a request
        self.inputs = []
        for tensors in requests:
            items = []
            for name, datatype, array in tensors:
                item = grpc_client.InferInput(name, list(array.shape), datatype)
                item.set_data_from_numpy(array)
                items.append(item)
            self.inputs.append(items)

    async def infer(self, index: int) -> tuple[int, str | None]:
        """(200, None), (200, "unexpected_body") when an output is missing, or (0, the gRPC status name)."""
        from tritonclient.utils import InferenceServerException

        try:
            result: Any = await self.client.infer(self.model, self.inputs[index % len(self.inputs)],
                                                  headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            self.refusals.setdefault(str(exc.status()), str(exc.message()))
            return 0, str(exc.status())
        missing = [name for name in self.outputs if result.as_numpy(name) is None]
        return 200, "unexpected_body" if missing else None

    async def close(self) -> None:
        await self.client.close()
