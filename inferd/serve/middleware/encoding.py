"""HTTP content encodings: gzip and deflate request bodies in, and answers compressed on request.

tritonclient sends `Content-Encoding: gzip` or `deflate` bodies when a caller
sets `request_compression_algorithm`, and asks for compressed answers with
`Accept-Encoding` (`response_compression_algorithm`), as Triton supports both.

A body is inflated before any route sees it, with the inflated size held to the
same limit as the wire size: a few kilobytes of gzip can inflate to gigabytes.
Routes and the binary tensor extension then see the plain body, as Triton's
`Inference-Header-Content-Length` counts it.

Answers are compressed when they are JSON or text, which `requests`, aiohttp
and httpx accept by default; binary tensors barely shrink and go out as they are.
"""

from __future__ import annotations

import zlib

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.serve.responses import json_error

# Content-Encoding token -> zlib's wbits for that container (RFC 9110: deflate is the zlib format).
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_MIN_COMPRESSED_BYTES = 512  # below this, the gzip header and the CPU cost more than the bytes saved
# Level 1, as nginx uses: on JSON logits it saves nearly what level 6 saves, in a third of the time.
_LEVEL = 1
# JSON and text shrink well; binary tensors (random-looking floats) barely shrink, so compressing them only costs CPU.
_COMPRESSIBLE_TYPES = ("application/json", "text/")


class ContentEncodingMiddleware:
    """Inflates gzip and deflate request bodies for the app; compresses its answers for clients that accept it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = accepted = ""
        for name, value in scope["headers"]:
            if name == b"content-encoding":
                encoding = value.decode("latin-1").strip().lower()
            elif name == b"accept-encoding":
                accepted = value.decode("latin-1")
        if accepted:
            send = _compressing(send, response_encoding(accepted))
        if encoding in ("", "identity"):
            await self.app(scope, receive, send)
        elif encoding not in _WBITS:
            message = f"Content-Encoding {encoding!r} is not supported; send the body as gzip, deflate or identity"
            await json_error(415, message)(scope, receive, send)
        else:
            await self._inflated(scope, receive, send, encoding)

    async def _inflated(self, scope: Scope, receive: Receive, send: Send, encoding: str) -> None:
        inflater = zlib.decompressobj(_WBITS[encoding])
        parts: list[bytes] = []
        size, more = 0, True
        try:
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client left mid-body
                    return
                more = message.get("more_body", False)
                part = inflater.decompress(message.get("body", b""), self.max_body_bytes + 1 - size)
                size += len(part)
                parts.append(part)
                if size > self.max_body_bytes:
                    error = (f"the {encoding} request body inflates to more than {self.max_body_bytes} bytes, "
                             "the limit (--max-body-bytes)")
                    await json_error(413, error, {"Connection": "close"})(scope, receive, send)
                    return
            if not inflater.eof:
                raise zlib.error("the compressed stream ends early")
        except zlib.error as exc:
            error = f"the request body is not valid {encoding} data ({exc}); compress the whole body once"
            await json_error(400, error)(scope, receive, send)
            return
        body = b"".join(parts)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        inflated_scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        delivered = False

        async def inflated_receive() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: a disconnect, as apps wait for one
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(inflated_scope, inflated_receive, send)


def response_encoding(accept_encoding: str) -> str | None:
    """gzip or deflate if the client accepts it (q above 0), gzip first; None for an identity answer."""
    accepted = {}
    for item in accept_encoding.split(","):
        token, _, parameters = item.strip().partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        accepted[token.strip().lower()] = quality
    return next((name for name in ("gzip", "deflate") if accepted.get(name, accepted.get("*", 0.0)) > 0), None)


def _compressing(send: Send, encoding: str | None) -> Send:
    """`send` that compresses a JSON or text response body with `encoding`, unless it is small or already encoded."""
    if encoding is None:
        return send
    start: Message | None = None
    compressor: zlib._Compress | None = None

    async def compressing_send(message: Message) -> None:
        nonlocal start, compressor
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if compressor is None:
            headers = MutableHeaders(raw=list(start.get("headers", [])))
            compressible = headers.get("content-type", "").startswith(_COMPRESSIBLE_TYPES)
            if not compressible or "content-encoding" in headers or (not more and len(body) < _MIN_COMPRESSED_BYTES):
                await send(start)
                start = None  # pass the rest through untouched
                await send(message)
                return
            compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS[encoding])
            headers["Content-Encoding"] = encoding
            headers.add_vary_header("Accept-Encoding")
            del headers["Content-Length"]
            data = compressor.compress(body) + (b"" if more else compressor.flush())
            if not more:
                headers["Content-Length"] = str(len(data))
            await send({**start, "headers": headers.raw})
            await send({"type": "http.response.body", "body": data, "more_body": more})
            return
        data = compressor.compress(body) + (b"" if more else compressor.flush())
        await send({"type": "http.response.body", "body": data, "more_body": more})

    return compressing_send
