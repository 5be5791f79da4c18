"""Triton's system shared-memory extension: clients on this machine pass tensors through POSIX shared memory.

An image tensor costs the event loop time to receive over HTTP and the client as much to send;
through a registered region only a few hundred bytes of JSON cross the socket, and the tensor is copied once.

Decisions worth knowing:

* Off unless the server starts with `--allow-shared-memory` (Triton's `--allow-client-shm`): a client that may
  register keys can make the server read and write any shared-memory object the server can open.
* Keys are POSIX shared-memory names (`/name`, no other slash), so no key reaches a file outside the
  shared-memory namespace.
* Inputs are copied out when the request is decoded and outputs copied in when the response is encoded: no view
  into a mapping outlives a call, so a region can be unregistered at any time, and a client that rewrites its
  input region while its request waits in the queue cannot change what is computed.
* Every access first checks the object's current size: a client that shrinks an object after registering it
  gets an error, not a server killed by SIGBUS.
* A tensor read from a region is held to the same limit as a request body (`--max-body-bytes`), since the
  copy costs the event loop as much.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from typing import Any

from inferd.errors import Forbidden, InvalidInput, PayloadTooLarge
from inferd.serve.v2.types import SharedMemoryRef

_KEY = re.compile(r"/?[A-Za-z0-9_.\-]{1,250}")
_MAX_NAME = 256


def _shm_open(key: str) -> int:
    """The object's descriptor; `_posixshmem` is what `multiprocessing.shared_memory` uses on every POSIX Python.

    That class itself is not used: on Python < 3.13 it registers attached objects with the resource tracker,
    which unlinks the client's object when the server exits.
    """
    import _posixshmem

    return int(_posixshmem.shm_open(key if key.startswith("/") else f"/{key}", os.O_RDWR, mode=0o600))


@dataclass(eq=False, slots=True)
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    mapping: mmap.mmap

    def span(self, ref: SharedMemoryRef) -> slice:
        """Where `ref` lies in the mapping, after checking it fits the region and the object still holds it."""
        if ref.offset + ref.byte_size > self.byte_size:
            raise InvalidInput(
                f"shared-memory region {self.name!r} is {self.byte_size} bytes; offset {ref.offset} plus "
                f"byte size {ref.byte_size} reaches past its end"
            )
        start = self.offset + ref.offset
        end = start + ref.byte_size
        if os.fstat(self.fd).st_size < end:
            raise InvalidInput(
                f"shared-memory object {self.key!r} behind region {self.name!r} shrank below {end} bytes after it "
                "was registered; register it again"
            )
        return slice(start, end)

    def close(self) -> None:
        self.mapping.close()
        os.close(self.fd)


class SystemSharedMemory:
    """The registered regions, by name; used from the event loop only, so it needs no lock."""

    def __init__(self, enabled: bool, max_read_bytes: int) -> None:
        self.enabled = enabled
        self.max_read_bytes = max_read_bytes
        self._regions: dict[str, _Region] = {}

    def check_enabled(self) -> None:
        """Raise Forbidden unless the server allows shared memory; every other method calls it first."""
        if not self.enabled:
            raise Forbidden(
                "system shared memory is off on this server; start it with --allow-shared-memory to let clients on "
                "this machine pass tensors through shared memory"
            )

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.check_enabled()
        if not name or len(name) > _MAX_NAME:
            raise InvalidInput(f"a region name must be 1 to {_MAX_NAME} characters")
        if name in self._regions:
            raise InvalidInput(f"shared-memory region {name!r} is already registered; unregister it first")
        if not _KEY.fullmatch(key) or key.strip("/") in (".", ".."):
            raise InvalidInput(
                f"shared-memory key {key!r} is not a POSIX shared-memory name: use '/name' with letters, digits, "
                "'_', '-' and '.' only"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(f"offset must be >= 0 and byte_size > 0, got offset {offset} and byte_size {byte_size}")
        try:
            fd = _shm_open(key)
        except FileNotFoundError:
            raise InvalidInput(f"no shared-memory object {key!r} exists; create it before registering it") from None
        except PermissionError:
            raise InvalidInput(f"the server may not open shared-memory object {key!r}; check its mode") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidInput(
                    f"shared-memory object {key!r} is {size} bytes; offset {offset} plus byte_size {byte_size} "
                    "reaches past its end"
                )
            mapping = mmap.mmap(fd, offset + byte_size)
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = _Region(name, key, offset, byte_size, fd, mapping)

    def unregister(self, name: str | None = None) -> None:
        """Unregister one region, or all; a name that is not registered is not an error, so clean-up can repeat."""
        self.check_enabled()
        names = list(self._regions) if name is None else [name] if name in self._regions else []
        for each in names:
            self._regions.pop(each).close()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        self.check_enabled()
        regions = list(self._regions.values()) if name is None else [self._region(name)]
        return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]

    def read(self, ref: SharedMemoryRef) -> bytes:
        if ref.byte_size > self.max_read_bytes:
            raise PayloadTooLarge(
                f"the tensor in shared-memory region {ref.region!r} is {ref.byte_size} bytes, over the server's "
                f"limit of {self.max_read_bytes} (--max-body-bytes); split the request into smaller batches"
            )
        region = self._region(ref.region)
        return region.mapping[region.span(ref)]

    def check(self, ref: SharedMemoryRef) -> None:
        region = self._region(ref.region)
        region.span(ref)

    def write(self, ref: SharedMemoryRef, data: bytes | memoryview) -> None:
        region = self._region(ref.region)
        span = region.span(ref)
        region.mapping[span.start:span.start + len(data)] = data

    def close(self) -> None:
        for region in self._regions.values():
            region.close()
        self._regions.clear()

    def _region(self, name: str) -> _Region:
        self.check_enabled()
        region = self._regions.get(name)
        if region is None:
            names = list(self._regions)
            known = ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "") or "none"
            raise InvalidInput(
                f"no shared-memory region {name!r} is registered (registered: {known}); register it with "
                f"POST /v2/systemsharedmemory/region/{name}/register"
            )
        return region
