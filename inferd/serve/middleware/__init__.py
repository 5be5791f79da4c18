"""The HTTP face's middlewares, one per module as in Starlette; `inferd.serve.app.install` puts them in order.

Each is a pure ASGI class rather than a `BaseHTTPMiddleware`, which pipes every
response through a memory stream and adds latency to each prediction; these only
read headers and wrap `receive` and `send`.
"""
