"""Triton system shared memory from the client side, for the benchmarks' shared-memory phases.

The HTTP clients, the gRPC inputs and the closed loop are inferd's own (`inferd.bench.load`), shared with
`inferd loadtest`; only this transport, which no loadtest offers, stays with the benchmarks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from inferd.bench.load.clients import Client


class SharedMemoryInputs:
    """Triton's system shared memory from the client side: one region per concurrent request slot, holding
    the input tensor and, after it, the output; each request copies its tensor in and the output out, which
    is what a local client does instead of sending and receiving the bytes."""

    def __init__(self, payloads: list[dict[str, Any]], slots: int, output_bytes: int) -> None:
        from multiprocessing import shared_memory

        self.tensors = [Path(p["path"]).read_bytes() for p in payloads]
        self.input_bytes = len(self.tensors[0])
        if any(len(t) != self.input_bytes for t in self.tensors):
            raise ValueError("shared memory payloads must all have one shape")
        self.output_bytes = output_bytes
        prefix = f"inferd-bench-{os.getpid()}"
        self.regions = [shared_memory.SharedMemory(f"{prefix}-{k}", create=True,
                                                   size=self.input_bytes + output_bytes) for k in range(slots)]
        self.views = [memoryview(region.buf or b"") for region in self.regions]
        self.bodies = [json.dumps({
            "inputs": [{**payloads[0]["input"], "parameters": {
                "shared_memory_region": region.name, "shared_memory_byte_size": self.input_bytes}}],
            "outputs": [{"name": "logits", "parameters": {
                "shared_memory_region": region.name, "shared_memory_byte_size": output_bytes,
                "shared_memory_offset": self.input_bytes}}],
        }).encode() for region in self.regions]

    async def register(self, client: Client, url: str) -> None:
        """Register every region under its own (process-unique) name."""
        for region in self.regions:
            body = json.dumps({"key": f"/{region.name}", "offset": 0, "byte_size": region.size}).encode()
            await self._call(client, url, f"region/{region.name}/register", body)

    async def unregister(self, client: Client, url: str) -> None:
        for region in self.regions:
            await self._call(client, url, f"region/{region.name}/unregister", b"")

    @staticmethod
    async def _call(client: Client, url: str, action: str, body: bytes) -> None:
        base = url.split("/v2/", 1)[0]
        status, _, answer = await client.post(f"{base}/v2/systemsharedmemory/{action}", body,
                                              {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"shared memory {action} failed: {status} {answer[:200]!r}")

    def request(self, index: int, slot: int) -> bytes:
        """Copy the tensor into the slot's region; the body, which only names the region, never changes."""
        self.views[slot][:self.input_bytes] = self.tensors[index % len(self.tensors)]
        return self.bodies[slot]

    def output(self, slot: int) -> bytes:
        return bytes(self.views[slot][self.input_bytes:self.input_bytes + self.output_bytes])

    def close(self) -> None:
        for view in self.views:
            view.release()
        for region in self.regions:
            region.close()
            region.unlink()
